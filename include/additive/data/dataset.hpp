// Image classification data: an IDX dataset in memory, views over it by index lists,
// a seeded validation split, seeded per-epoch shuffling that is the same on every
// standard library, and batches gathered as (input_dim, batch) matrices in [0, 1].
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "additive/core/error.hpp"
#include "additive/core/seed.hpp"
#include "additive/data/idx.hpp"

namespace additive {

// ---------------------------------------------------------------------------------------
// Storage

/// Images and labels held in memory. This is storage, not a `Dataset`: training and
/// evaluation go through a `DatasetView` (`DatasetView(ds)` for every sample).
struct ImageDataset {
  std::int64_t count = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  int num_classes = 10;
  std::vector<std::uint8_t> pixels;  // (count, rows * cols) row-major: image i at i * input_dim()
  std::vector<std::uint8_t> labels;  // (count), each < num_classes

  [[nodiscard]] std::int64_t input_dim() const noexcept { return rows * cols; }
};

/// Where the Fashion-MNIST package installs its files.
inline std::filesystem::path default_data_dir() { return "/usr/share/datasets/fashion-mnist"; }

namespace detail {

/// The first of `<stem>.gz` and `<stem>` that exists in `dir`; gzip is tried first.
inline std::filesystem::path find_idx_file(const std::filesystem::path& dir, const std::string& stem,
                                           const std::string& what) {
  const std::filesystem::path gz = dir / (stem + ".gz");
  const std::filesystem::path raw = dir / stem;
  std::error_code ec;
  if (std::filesystem::exists(gz, ec)) return gz;
  if (std::filesystem::exists(raw, ec)) return raw;
  throw InputError(dir.string() + ": no " + what + " file: tried " + gz.filename().string() + " and " +
                   raw.filename().string());
}

}  // namespace detail

/// Loads split "train" (`train-*`) or "test" (`t10k-*`) of an MNIST-style directory:
/// `{train,t10k}-images-idx3-ubyte[.gz]` and `{train,t10k}-labels-idx1-ubyte[.gz]`
/// (gzip tried first). The image and label counts must agree and every label must be
/// below `num_classes` (1..256).
inline ImageDataset load_idx_dataset(const std::filesystem::path& dir, std::string_view split,
                                     int num_classes = 10) {
  if (split != "train" && split != "test")
    throw InputError("unknown data split '" + std::string(split) + "', expected 'train' or 'test'");
  if (num_classes < 1 || num_classes > 256)
    throw InputError("number of classes " + std::to_string(num_classes) +
                     " is out of range, expected 1..256");
  const std::string prefix = split == "train" ? "train" : "t10k";
  const auto images_path =
      detail::find_idx_file(dir, prefix + "-images-idx3-ubyte", std::string(split) + " images");
  const auto labels_path =
      detail::find_idx_file(dir, prefix + "-labels-idx1-ubyte", std::string(split) + " labels");

  IdxImages images = read_idx_images(images_path);
  std::vector<std::uint8_t> labels = read_idx_labels(labels_path);
  if (static_cast<std::int64_t>(labels.size()) != images.count)
    throw InputError(labels_path.string() + ": " + std::to_string(labels.size()) + " labels, but " +
                     images_path.string() + " has " + std::to_string(images.count) + " images");
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= num_classes)
      throw InputError(labels_path.string() + ": label " + std::to_string(labels[i]) + " at index " +
                       std::to_string(i) + " is out of range, expected < " + std::to_string(num_classes) +
                       " classes");

  ImageDataset ds;
  ds.count = images.count;
  ds.rows = images.rows;
  ds.cols = images.cols;
  ds.num_classes = num_classes;
  ds.pixels = std::move(images.pixels);
  ds.labels = std::move(labels);
  return ds;
}

// ---------------------------------------------------------------------------------------
// The Dataset concept

/// What the training and evaluation loops need from a dataset, and why:
///
/// - `size()` -> `std::int64_t`: the number of samples. Batchers, splits and shuffles
///   work on positions `[0, size())`, never on storage, so any dataset can be shuffled.
/// - `input_dim()` -> `std::int64_t`: the rows of a gathered batch, checked once against
///   the model's input width instead of failing inside a GEMM.
/// - `num_classes()` -> `int`: the head width; every label lies in `[0, num_classes())`.
/// - `gather(indices, x, y)` for `float` and `double` matrices: copies the samples at
///   the given positions into caller-owned buffers (`x` is `(input_dim, batch)`,
///   column-major, one sample per column; `y` one label each). Caller-owned buffers are
///   resized only when the batch shape changes, so a training step does not allocate,
///   and both scalar types are needed because float64 is the test oracle.
template <class D>
concept Dataset = requires(const D& d, std::span<const std::int64_t> indices, Eigen::MatrixXf& xf,
                           Eigen::MatrixXd& xd, std::vector<std::int32_t>& y) {
  { d.size() } -> std::same_as<std::int64_t>;
  { d.input_dim() } -> std::same_as<std::int64_t>;
  { d.num_classes() } -> std::same_as<int>;
  d.gather(indices, xf, y);
  d.gather(indices, xd, y);
};

// ---------------------------------------------------------------------------------------
// Views

/// A dataset reference plus an index list: sample `i` of the view is sample
/// `indices()[i]` of the dataset. Pixels are never copied; the dataset must outlive the
/// view (constructing from a temporary is rejected at compile time).
class DatasetView {
 public:
  /// Every sample, in storage order.
  explicit DatasetView(const ImageDataset& data)
      : data_(&data), index_(static_cast<std::size_t>(data.count)) {
    std::iota(index_.begin(), index_.end(), std::int64_t{0});
  }
  /// The samples `indices` of `data` (storage indices), in that order; repeats allowed.
  DatasetView(const ImageDataset& data, std::vector<std::int64_t> indices)
      : data_(&data), index_(std::move(indices)) {
    for (std::size_t i = 0; i < index_.size(); ++i)
      if (index_[i] < 0 || index_[i] >= data.count)
        throw RuntimeError("dataset view: index " + std::to_string(index_[i]) + " at position " +
                           std::to_string(i) + " is outside a dataset of " + std::to_string(data.count) +
                           " samples");
  }
  explicit DatasetView(const ImageDataset&&) = delete;
  DatasetView(const ImageDataset&&, std::vector<std::int64_t>) = delete;

  [[nodiscard]] std::int64_t size() const noexcept { return static_cast<std::int64_t>(index_.size()); }
  [[nodiscard]] std::int64_t input_dim() const noexcept { return data_->input_dim(); }
  [[nodiscard]] int num_classes() const noexcept { return data_->num_classes; }
  [[nodiscard]] std::int64_t rows() const noexcept { return data_->rows; }
  [[nodiscard]] std::int64_t cols() const noexcept { return data_->cols; }
  [[nodiscard]] const ImageDataset& data() const noexcept { return *data_; }
  /// Storage indices, one per sample of the view.
  [[nodiscard]] const std::vector<std::int64_t>& indices() const noexcept { return index_; }
  /// The storage index of sample `i` of the view.
  [[nodiscard]] std::int64_t index(std::int64_t i) const { return index_[checked(i)]; }
  [[nodiscard]] int label(std::int64_t i) const { return data_->labels[static_cast<std::size_t>(index(i))]; }
  /// The `input_dim()` bytes of sample `i`, row by row.
  [[nodiscard]] std::span<const std::uint8_t> image(std::int64_t i) const {
    const auto dim = static_cast<std::size_t>(input_dim());
    return {data_->pixels.data() + static_cast<std::size_t>(index(i)) * dim, dim};
  }

  /// Copies the samples at view positions `positions` into `x` and `y`: pixel bytes
  /// scaled to [0, 1] as `T(byte) / T(255)`, labels as int32. `x` and `y` are resized
  /// when their shape differs. Writes (`=`) every element of `x` and `y`.
  template <class T>
  void gather(std::span<const std::int64_t> positions, Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& x,
              std::vector<std::int32_t>& y) const {
    static_assert(std::is_floating_point_v<T>, "gather: batches are float or double matrices");
    const auto batch = static_cast<Eigen::Index>(positions.size());
    const auto dim = static_cast<Eigen::Index>(input_dim());
    if (x.rows() != dim || x.cols() != batch) x.resize(dim, batch);  // (input_dim, batch)
    y.resize(positions.size());
    for (Eigen::Index j = 0; j < batch; ++j) {
      const std::int64_t s = index(positions[static_cast<std::size_t>(j)]);
      const std::uint8_t* px =
          data_->pixels.data() + static_cast<std::size_t>(s) * static_cast<std::size_t>(dim);
      T* col = x.data() + j * dim;  // column j: sample j
      // b / 255, correctly rounded (IEEE division): vectorises, unlike a table lookup.
      for (Eigen::Index k = 0; k < dim; ++k) col[k] = static_cast<T>(px[k]) / static_cast<T>(255);
      y[static_cast<std::size_t>(j)] = data_->labels[static_cast<std::size_t>(s)];
    }
  }

 private:
  [[nodiscard]] std::size_t checked(std::int64_t i) const {
    if (i < 0 || i >= size())
      throw RuntimeError("dataset view: position " + std::to_string(i) + " is outside a view of " +
                         std::to_string(size()) + " samples");
    return static_cast<std::size_t>(i);
  }

  const ImageDataset* data_;
  std::vector<std::int64_t> index_;  // (size) storage indices
};

static_assert(Dataset<DatasetView>);

/// The samples `indices` of `data` (storage indices).
inline DatasetView subset(const ImageDataset& data, std::vector<std::int64_t> indices) {
  return DatasetView(data, std::move(indices));
}
DatasetView subset(const ImageDataset&&, std::vector<std::int64_t>) = delete;

/// The samples at positions `positions` of `view`, composed onto the same storage.
inline DatasetView subset(const DatasetView& view, std::span<const std::int64_t> positions) {
  std::vector<std::int64_t> idx(positions.size());
  for (std::size_t i = 0; i < positions.size(); ++i) idx[i] = view.index(positions[i]);
  return DatasetView(view.data(), std::move(idx));
}

/// The first `n` samples of `view` (all of them when `n >= view.size()`); for quick runs.
inline DatasetView limit(const DatasetView& view, std::int64_t n) {
  if (n < 0) throw InputError("sample limit " + std::to_string(n) + " is negative, expected >= 0");
  const auto keep = static_cast<std::ptrdiff_t>(std::min(n, view.size()));
  return DatasetView(view.data(),
                     std::vector<std::int64_t>(view.indices().begin(), view.indices().begin() + keep));
}

/// Gathers the samples at `positions` of any `Dataset`: `x` is `(input_dim, batch)`,
/// one sample per column, `y` one label per sample.
template <Dataset D, class T>
void gather_batch(const D& data, std::span<const std::int64_t> positions,
                  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& x, std::vector<std::int32_t>& y) {
  data.gather(positions, x, y);  // x: (input_dim, batch)
}

// ---------------------------------------------------------------------------------------
// Seeded randomness that is the same on every standard library
//
// `std::mt19937_64` is specified bit for bit by the standard; `std::shuffle` and
// `std::uniform_int_distribution` are not, so we draw bounded integers and shuffle
// ourselves. Streams are seeded with `derive_seed(seed, domain, k)`, so the validation
// split and each epoch's order are independent streams of one user seed:
//
//     derive_seed(seed, domain, k) = splitmix64(splitmix64(splitmix64(seed) ^ domain) ^ k)

/// Fisher-Yates (Durstenfeld): position i (from the last down) swaps with a uniform
/// position in [0, i]; every permutation is equally likely.
template <class V>
void fisher_yates(std::span<V> values, std::mt19937_64& gen) {
  for (std::size_t i = values.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(bounded_rand(gen, i));
    std::swap(values[i - 1], values[j]);
  }
}

/// The order of epoch `epoch`: a permutation of `[0, n)` that depends only on
/// `(seed, epoch, n)`, so training can resume at any (epoch, batch) without replaying
/// earlier epochs.
inline std::vector<std::int64_t> epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  if (n < 0) throw RuntimeError("epoch_order: negative size " + std::to_string(n));
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::mt19937_64 gen(derive_seed(seed, seed_domain::shuffle, static_cast<std::uint64_t>(epoch)));
  fisher_yates(std::span<std::int64_t>(order), gen);
  return order;
}

/// Carves `val_count` validation samples out of `data` with a seeded shuffle: returns
/// (train indices, validation indices), storage indices in ascending order, disjoint,
/// together covering every sample. `val_count` must lie in `[0, data.count]`.
inline std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> split_validation(
    const ImageDataset& data, std::int64_t val_count, std::uint64_t seed) {
  if (val_count < 0 || val_count > data.count)
    throw InputError("validation size " + std::to_string(val_count) +
                     " is out of range for a training set of " + std::to_string(data.count) + " samples");
  std::vector<std::int64_t> order(static_cast<std::size_t>(data.count));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::mt19937_64 gen(derive_seed(seed, seed_domain::split, static_cast<std::uint64_t>(data.count)));
  fisher_yates(std::span<std::int64_t>(order), gen);
  const auto cut = order.begin() + static_cast<std::ptrdiff_t>(val_count);
  std::vector<std::int64_t> val(order.begin(), cut);
  std::vector<std::int64_t> train(cut, order.end());
  std::sort(val.begin(), val.end());
  std::sort(train.begin(), train.end());
  return {std::move(train), std::move(val)};
}

// ---------------------------------------------------------------------------------------
// Batches

struct BatchOptions {
  bool shuffle = true;     ///< false: view order (evaluation); true: `epoch_order(size, seed, epoch)`
  bool drop_last = false;  ///< false: the last, partial batch is kept; true: it is dropped
};

/// The batches of one epoch. Batch `b` holds positions `order()[b*bs, min((b+1)*bs, n))`
/// of the dataset; the order depends only on (seed, epoch), so resuming at batch `b` of
/// epoch `e` is `Batcher(data, bs, seed, e)` and starting at `b`. The last batch is
/// smaller when `size() % batch_size != 0`, unless `drop_last`. Keeps a pointer to
/// `data`, which must outlive the batcher.
template <Dataset D>
class Batcher {
 public:
  Batcher(const D& data, std::int64_t batch_size, std::uint64_t seed, std::int64_t epoch,
          BatchOptions options = {})
      : data_(&data), batch_size_(batch_size), epoch_(epoch) {
    if (batch_size <= 0) throw InputError("batch size " + std::to_string(batch_size) + " must be positive");
    if (epoch < 0) throw InputError("epoch " + std::to_string(epoch) + " must be >= 0");
    const std::int64_t n = data.size();
    if (options.shuffle) {
      order_ = epoch_order(n, seed, epoch);
    } else {
      order_.resize(static_cast<std::size_t>(n));
      std::iota(order_.begin(), order_.end(), std::int64_t{0});
    }
    num_batches_ = options.drop_last ? n / batch_size : (n + batch_size - 1) / batch_size;
  }
  Batcher(const D&&, std::int64_t, std::uint64_t, std::int64_t, BatchOptions = {}) = delete;

  [[nodiscard]] std::int64_t num_batches() const noexcept { return num_batches_; }
  [[nodiscard]] std::int64_t batch_size() const noexcept { return batch_size_; }
  [[nodiscard]] std::int64_t epoch() const noexcept { return epoch_; }
  /// This epoch's order of dataset positions (all of them, even with `drop_last`).
  [[nodiscard]] const std::vector<std::int64_t>& order() const noexcept { return order_; }

  /// The dataset positions of batch `b`.
  [[nodiscard]] std::span<const std::int64_t> indices(std::int64_t b) const {
    if (b < 0 || b >= num_batches_)
      throw RuntimeError("batcher: batch " + std::to_string(b) + " is outside an epoch of " +
                         std::to_string(num_batches_) + " batches");
    const std::int64_t begin = b * batch_size_;
    const std::int64_t end = std::min(begin + batch_size_, static_cast<std::int64_t>(order_.size()));
    return std::span<const std::int64_t>(order_).subspan(static_cast<std::size_t>(begin),
                                                         static_cast<std::size_t>(end - begin));
  }

  /// Gathers batch `b`: `x` is `(input_dim, batch)`, `y` its labels.
  template <class T>
  void batch(std::int64_t b, Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& x,
             std::vector<std::int32_t>& y) const {
    data_->gather(indices(b), x, y);  // x: (input_dim, batch)
  }

 private:
  const D* data_;
  std::int64_t batch_size_;
  std::int64_t epoch_;
  std::int64_t num_batches_ = 0;
  std::vector<std::int64_t> order_;  // (size) positions of the dataset
};

}  // namespace additive
