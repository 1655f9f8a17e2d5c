// Datasets: loading IDX splits (the real Fashion-MNIST included), the Dataset concept,
// views, the validation split, seeded shuffling and batch gathering.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "additive/data/dataset.hpp"
#include "additive/data/idx.hpp"

namespace fs = std::filesystem;
using additive::DatasetView;
using additive::ImageDataset;
using additive::InputError;

namespace {

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ =
        fs::temp_directory_path() / ("additive-test-dataset-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] fs::path operator/(const std::string& name) const { return path_ / name; }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// A small dataset whose pixel bytes and labels are distinct per sample.
ImageDataset make_dataset(std::int64_t count, std::int64_t rows = 3, std::int64_t cols = 2,
                          int classes = 10) {
  ImageDataset ds;
  ds.count = count;
  ds.rows = rows;
  ds.cols = cols;
  ds.num_classes = classes;
  ds.pixels.resize(static_cast<std::size_t>(count * rows * cols));
  for (std::size_t i = 0; i < ds.pixels.size(); ++i)
    ds.pixels[i] = static_cast<std::uint8_t>((i * 37 + 11) % 256);
  for (std::int64_t i = 0; i < count; ++i) ds.labels.push_back(static_cast<std::uint8_t>(i % classes));
  return ds;
}

/// Writes `ds` as split `prefix` ("train" or "t10k") into `dir`.
void write_split(const fs::path& dir, const std::string& prefix, const ImageDataset& ds, bool gzip) {
  const std::string ext = gzip ? ".gz" : "";
  additive::write_idx_images(dir / (prefix + "-images-idx3-ubyte" + ext),
                             {ds.count, ds.rows, ds.cols, ds.pixels}, gzip);
  additive::write_idx_labels(dir / (prefix + "-labels-idx1-ubyte" + ext), ds.labels, gzip);
}

std::string input_error(const std::function<void()>& f) {
  std::string msg;
  try {
    f();
  } catch (const InputError& e) {
    msg = e.what();
  }
  REQUIRE_MESSAGE(!msg.empty(), "expected an additive::InputError");
  CHECK(msg.find('\n') == std::string::npos);
  return msg;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

bool is_permutation_of_iota(std::vector<std::int64_t> v) {
  std::sort(v.begin(), v.end());
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<std::int64_t>(i)) return false;
  return true;
}

// Types the Dataset concept must reject, each for one reason.
struct NoGather {
  std::int64_t size() const { return 0; }
  std::int64_t input_dim() const { return 0; }
  int num_classes() const { return 0; }
};
struct IntSize {
  int size() const { return 0; }
  std::int64_t input_dim() const { return 0; }
  int num_classes() const { return 0; }
  template <class T>
  void gather(std::span<const std::int64_t>, Eigen::Matrix<T, -1, -1>&, std::vector<std::int32_t>&) const {}
};
struct FloatOnly {
  std::int64_t size() const { return 0; }
  std::int64_t input_dim() const { return 0; }
  int num_classes() const { return 0; }
  void gather(std::span<const std::int64_t>, Eigen::MatrixXf&, std::vector<std::int32_t>&) const {}
};
struct Complete {
  std::int64_t size() const { return 0; }
  std::int64_t input_dim() const { return 0; }
  int num_classes() const { return 0; }
  template <class T>
  void gather(std::span<const std::int64_t>, Eigen::Matrix<T, -1, -1>&, std::vector<std::int32_t>&) const {}
};

}  // namespace

static_assert(additive::Dataset<DatasetView>);
static_assert(additive::Dataset<Complete>);
static_assert(!additive::Dataset<int>);
static_assert(!additive::Dataset<ImageDataset>, "storage has data members, not the Dataset interface");
static_assert(!additive::Dataset<NoGather>);
static_assert(!additive::Dataset<IntSize>);
static_assert(!additive::Dataset<FloatOnly>, "double batches are the test oracle");
static_assert(!std::is_constructible_v<DatasetView, ImageDataset&&>, "a view of a temporary would dangle");
static_assert(std::is_constructible_v<DatasetView, const ImageDataset&>);
static_assert(!std::is_constructible_v<additive::Batcher<DatasetView>, DatasetView&&, std::int64_t,
                                       std::uint64_t, std::int64_t>,
              "a batcher over a temporary view would dangle");

TEST_CASE("Fashion-MNIST loads from the installed package") {
  const fs::path dir = additive::default_data_dir();
  REQUIRE_MESSAGE(fs::is_directory(dir), dir << " is missing: install the dataset-fashion-mnist package");
  struct Expect {
    const char* split;
    std::int64_t count;
  };
  for (const Expect e : {Expect{"train", 60000}, Expect{"test", 10000}}) {
    CAPTURE(e.split);
    const ImageDataset ds = additive::load_idx_dataset(dir, e.split);
    CHECK(ds.count == e.count);
    CHECK(ds.rows == 28);
    CHECK(ds.cols == 28);
    CHECK(ds.input_dim() == 784);
    CHECK(ds.num_classes == 10);
    CHECK(ds.pixels.size() == static_cast<std::size_t>(e.count * 784));
    REQUIRE(ds.labels.size() == static_cast<std::size_t>(e.count));
    // Fashion-MNIST is balanced: count / 10 samples of every class.
    std::array<std::int64_t, 10> per_class{};
    for (auto l : ds.labels) ++per_class[std::min<std::size_t>(l, 9)];  // load checked l < 10
    for (auto n : per_class) CHECK(n == e.count / 10);
    // Non-trivial pixels: dark background, some bright pixels, a plausible mean.
    const double mean =
        std::accumulate(ds.pixels.begin(), ds.pixels.end(), 0.0) / static_cast<double>(ds.pixels.size());
    CHECK(mean > 40.0);
    CHECK(mean < 120.0);
    CHECK(*std::max_element(ds.pixels.begin(), ds.pixels.end()) == 255);
    CHECK(*std::min_element(ds.pixels.begin(), ds.pixels.end()) == 0);
  }
}

TEST_CASE("load_idx_dataset reads gzip and raw splits") {
  TempDir dir;
  const ImageDataset train = make_dataset(12);
  const ImageDataset test = make_dataset(5, 3, 2);
  write_split(dir.path(), "train", train, true);
  write_split(dir.path(), "t10k", test, false);
  const ImageDataset a = additive::load_idx_dataset(dir.path(), "train");
  CHECK(a.count == 12);
  CHECK(a.pixels == train.pixels);
  CHECK(a.labels == train.labels);
  const ImageDataset b = additive::load_idx_dataset(dir.path(), "test");
  CHECK(b.count == 5);
  CHECK(b.rows == 3);
  CHECK(b.cols == 2);
  CHECK(b.pixels == test.pixels);
  CHECK(b.labels == test.labels);
}

TEST_CASE("load_idx_dataset errors name the file and what was wrong") {
  TempDir dir;
  SUBCASE("missing files name the directory and both names tried") {
    const std::string msg = input_error([&] { (void)additive::load_idx_dataset(dir.path(), "test"); });
    CHECK(msg.find(dir.path().string()) == 0);
    CHECK(contains(msg, "t10k-images-idx3-ubyte.gz"));
    CHECK(contains(msg, "t10k-images-idx3-ubyte"));
  }
  SUBCASE("missing labels only") {
    additive::write_idx_images(dir / "train-images-idx3-ubyte", {2, 1, 1, {1, 2}}, false);
    const std::string msg = input_error([&] { (void)additive::load_idx_dataset(dir.path(), "train"); });
    CHECK(contains(msg, "train-labels-idx1-ubyte.gz and train-labels-idx1-ubyte"));
  }
  SUBCASE("unknown split") {
    CHECK(contains(input_error([&] { (void)additive::load_idx_dataset(dir.path(), "validation"); }),
                   "'validation'"));
  }
  SUBCASE("image and label counts disagree") {
    ImageDataset ds = make_dataset(6);
    write_split(dir.path(), "train", ds, true);
    additive::write_idx_labels(dir / "train-labels-idx1-ubyte.gz", std::vector<std::uint8_t>(5, 1), true);
    const std::string msg = input_error([&] { (void)additive::load_idx_dataset(dir.path(), "train"); });
    CHECK(msg.find((dir / "train-labels-idx1-ubyte.gz").string()) == 0);
    CHECK(contains(msg, "5 labels"));
    CHECK(contains(msg, "6 images"));
  }
  SUBCASE("label out of range names the file, the index and the value") {
    ImageDataset ds = make_dataset(6);
    ds.labels[4] = 10;
    write_split(dir.path(), "t10k", ds, false);
    const std::string msg = input_error([&] { (void)additive::load_idx_dataset(dir.path(), "test"); });
    CHECK(msg.find((dir / "t10k-labels-idx1-ubyte").string()) == 0);
    CHECK(contains(msg, "label 10 at index 4"));
    CHECK(contains(msg, "< 10 classes"));
  }
  SUBCASE("fewer classes than the labels use") {
    write_split(dir.path(), "train", make_dataset(6), true);
    CHECK(additive::load_idx_dataset(dir.path(), "train", 6).num_classes == 6);
    CHECK(contains(input_error([&] { (void)additive::load_idx_dataset(dir.path(), "train", 5); }),
                   "label 5 at index 5"));
    CHECK(
        contains(input_error([&] { (void)additive::load_idx_dataset(dir.path(), "train", 0); }), "classes"));
  }
  SUBCASE("a broken file inside the directory") {
    write_split(dir.path(), "train", make_dataset(6), true);
    const auto images = dir / "train-images-idx3-ubyte.gz";
    fs::resize_file(images, fs::file_size(images) - 10);
    const std::string msg = input_error([&] { (void)additive::load_idx_dataset(dir.path(), "train"); });
    CHECK(msg.find(images.string()) == 0);
    CHECK(contains(msg, "truncated"));
  }
}

TEST_CASE("views, subsets and limit share the pixels") {
  const ImageDataset ds = make_dataset(10);
  const DatasetView all(ds);
  CHECK(all.size() == 10);
  CHECK(all.input_dim() == 6);
  CHECK(all.num_classes() == 10);
  CHECK(&all.data() == &ds);

  const DatasetView odd = additive::subset(ds, {1, 3, 5, 7, 9});
  CHECK(odd.size() == 5);
  CHECK(odd.index(2) == 5);
  CHECK(odd.label(2) == 5);
  CHECK(odd.image(2).data() == ds.pixels.data() + 5 * 6);  // no copy

  const std::vector<std::int64_t> pos{4, 0};
  const DatasetView composed = additive::subset(odd, pos);
  CHECK(composed.indices() == std::vector<std::int64_t>{9, 1});

  CHECK(additive::limit(odd, 2).indices() == std::vector<std::int64_t>{1, 3});
  CHECK(additive::limit(odd, 0).size() == 0);
  CHECK(additive::limit(odd, 100).size() == 5);
  CHECK(contains(input_error([&] { (void)additive::limit(odd, -1); }), "-1"));

  CHECK_THROWS_AS((void)additive::subset(ds, {0, 10}), additive::RuntimeError);
  CHECK_THROWS_AS((void)odd.index(5), additive::RuntimeError);
  CHECK_THROWS_AS((void)additive::subset(odd, std::vector<std::int64_t>{-1}), additive::RuntimeError);
}

TEST_CASE("split_validation is seeded, disjoint, covering and deterministic") {
  const ImageDataset ds = make_dataset(1000);
  const auto [train, val] = additive::split_validation(ds, 100, 17);
  CHECK(train.size() == 900);
  CHECK(val.size() == 100);
  CHECK(std::is_sorted(train.begin(), train.end()));
  CHECK(std::is_sorted(val.begin(), val.end()));
  std::vector<std::int64_t> both;
  std::set_intersection(train.begin(), train.end(), val.begin(), val.end(), std::back_inserter(both));
  CHECK(both.empty());
  std::vector<std::int64_t> all(train);
  all.insert(all.end(), val.begin(), val.end());
  CHECK(is_permutation_of_iota(all));
  // Not simply the first or last samples.
  CHECK(val.front() < 100);
  CHECK(val.back() >= 900);

  CHECK(additive::split_validation(ds, 100, 17) == std::make_pair(train, val));
  CHECK(additive::split_validation(ds, 100, 18).second != val);
  // The split is its own stream: the same seed's epoch order does not give the same cut.
  std::vector<std::int64_t> epoch0 = additive::epoch_order(1000, 17, 0);
  epoch0.resize(100);
  std::sort(epoch0.begin(), epoch0.end());
  CHECK(epoch0 != val);

  CHECK(additive::split_validation(ds, 0, 1).second.empty());
  CHECK(additive::split_validation(ds, 1000, 1).first.empty());
  CHECK(contains(input_error([&] { (void)additive::split_validation(ds, 1001, 1); }), "1001"));
  CHECK(contains(input_error([&] { (void)additive::split_validation(ds, -1, 1); }), "-1"));

  // Pinned (cross-checked against an independent Python mt19937_64 + the same algorithm).
  CHECK(additive::split_validation(make_dataset(10), 3, 5).second == std::vector<std::int64_t>{0, 3, 7});
}

TEST_CASE("bounded_rand and epoch_order are pinned, library-independent values") {
  CHECK(additive::splitmix64(0) == 0xE220A8397B1DCDAFULL);
  std::mt19937_64 gen(7);
  std::vector<std::uint64_t> draws;
  for (int i = 0; i < 5; ++i) draws.push_back(additive::bounded_rand(gen, 1000));
  CHECK(draws == std::vector<std::uint64_t>{15, 250, 878, 46, 421});
  CHECK(additive::epoch_order(10, 42, 0) == std::vector<std::int64_t>{8, 2, 5, 3, 9, 0, 1, 4, 7, 6});
  CHECK(additive::epoch_order(10, 42, 1) == std::vector<std::int64_t>{8, 5, 2, 0, 6, 1, 3, 9, 4, 7});
}

TEST_CASE("bounded_rand stays in range and is unbiased for awkward bounds") {
  std::mt19937_64 gen(3);
  for (int i = 0; i < 100; ++i) CHECK(additive::bounded_rand(gen, 1) == 0);
  // A bound just above 2^63 rejects almost half of all draws; results stay in range
  // and land in both halves.
  const std::uint64_t big = (std::uint64_t{1} << 63) + 12345;
  int high = 0;
  int out_of_range = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::uint64_t r = additive::bounded_rand(gen, big);
    out_of_range += r >= big ? 1 : 0;
    high += r >= big / 2 ? 1 : 0;
  }
  CHECK(out_of_range == 0);
  CHECK(high > 850);
  CHECK(high < 1150);
  std::array<int, 3> hist{};
  for (int i = 0; i < 30000; ++i) ++hist[additive::bounded_rand(gen, 3)];
  for (int h : hist) CHECK(std::abs(h - 10000) < 600);  // ~7 sigma
  CHECK_THROWS_AS((void)additive::bounded_rand(gen, 0), additive::RuntimeError);
}

TEST_CASE("epoch_order: a deterministic permutation that changes every epoch") {
  for (std::int64_t n : {0, 1, 2, 7, 1000}) {
    CAPTURE(n);
    const auto a = additive::epoch_order(n, 123, 4);
    CHECK(static_cast<std::int64_t>(a.size()) == n);
    CHECK(is_permutation_of_iota(a));
    CHECK(a == additive::epoch_order(n, 123, 4));
  }
  const auto e0 = additive::epoch_order(1000, 123, 0);
  const auto e1 = additive::epoch_order(1000, 123, 1);
  const auto other_seed = additive::epoch_order(1000, 124, 0);
  CHECK(e0 != e1);
  CHECK(e0 != other_seed);
  std::vector<std::int64_t> identity(1000);
  std::iota(identity.begin(), identity.end(), std::int64_t{0});
  CHECK(e0 != identity);
}

TEST_CASE("shuffle statistics: every position receives every index about equally often") {
  constexpr int n = 8;
  constexpr int epochs = 16000;
  std::array<std::array<int, n>, n> hits{};  // hits[position][index]
  for (int e = 0; e < epochs; ++e) {
    const auto order = additive::epoch_order(n, 99, e);
    for (int p = 0; p < n; ++p)
      ++hits[static_cast<std::size_t>(p)][static_cast<std::size_t>(order[static_cast<std::size_t>(p)])];
  }
  // Expected 2000 each, sigma ~ sqrt(2000 * 7/8) ~ 42: a 6-sigma band.
  for (const auto& row : hits)
    for (int h : row) CHECK(std::abs(h - epochs / n) < 250);
  // The classic naive shuffle (swap each position with one drawn from all n) puts 16 of
  // the 64 cells outside this band, so the test has power, not just tolerance.
}

TEST_CASE("gather: (input_dim, batch) columns equal byte / 255, for float and double") {
  const ImageDataset ds = make_dataset(20, 4, 5);
  const DatasetView view = additive::subset(ds, {19, 2, 7, 11, 0});
  const std::vector<std::int64_t> pos{3, 0, 3};  // repeats are allowed

  Eigen::MatrixXd xd;  // (input_dim, batch)
  Eigen::MatrixXf xf;  // (input_dim, batch)
  std::vector<std::int32_t> y;
  additive::gather_batch(view, pos, xd, y);
  CHECK(xd.rows() == 20);
  CHECK(xd.cols() == 3);
  CHECK(y == std::vector<std::int32_t>{1, 9, 1});  // labels of samples 11, 19, 11
  additive::gather_batch(view, pos, xf, y);
  REQUIRE(xf.rows() == 20);
  REQUIRE(xf.cols() == 3);
  CHECK(xd.norm() > 0.0);  // non-trivial before comparing
  for (std::size_t j = 0; j < pos.size(); ++j) {
    const std::int64_t s = view.index(pos[j]);
    for (std::int64_t k = 0; k < 20; ++k) {
      const std::uint8_t byte = ds.pixels[static_cast<std::size_t>(s * 20 + k)];
      const auto jj = static_cast<Eigen::Index>(j);
      CHECK(xd(k, jj) == static_cast<double>(byte) / 255.0);
      CHECK(xf(k, jj) == static_cast<float>(byte) / 255.0f);
    }
  }
  // Same shape again: the buffer is reused, not reallocated.
  const double* before = xd.data();
  additive::gather_batch(view, std::vector<std::int64_t>{1, 2, 4}, xd, y);
  CHECK(xd.data() == before);
  CHECK(y == std::vector<std::int32_t>{2, 7, 0});
  CHECK_THROWS_AS(additive::gather_batch(view, std::vector<std::int64_t>{5}, xd, y), additive::RuntimeError);
}

TEST_CASE("gather on Fashion-MNIST: values in [0, 1], exact for chosen samples") {
  const ImageDataset ds = additive::load_idx_dataset(additive::default_data_dir(), "test");
  const DatasetView view(ds);
  const std::vector<std::int64_t> pos{0, 1, 9999, 4242};
  Eigen::MatrixXf x;  // (784, 4)
  std::vector<std::int32_t> y;
  additive::gather_batch(view, pos, x, y);
  REQUIRE(x.rows() == 784);
  REQUIRE(x.cols() == 4);
  CHECK(x.minCoeff() >= 0.0f);
  CHECK(x.maxCoeff() <= 1.0f);
  CHECK(x.maxCoeff() == 1.0f);
  for (std::size_t j = 0; j < pos.size(); ++j) {
    const auto s = static_cast<std::size_t>(pos[j]);
    CHECK(y[j] == ds.labels[s]);
    int mismatches = 0;
    for (std::size_t k = 0; k < 784; ++k)
      mismatches += x(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(j)) !=
                    static_cast<float>(ds.pixels[s * 784 + k]) / 255.0f;
    CHECK(mismatches == 0);
  }
}

TEST_CASE("Batcher: batches cover the epoch, keep or drop the last, and resume exactly") {
  const ImageDataset ds = make_dataset(23);
  const DatasetView view = additive::subset(ds, [] {
    std::vector<std::int64_t> v(22);
    std::iota(v.begin(), v.end(), std::int64_t{1});
    return v;
  }());  // 22 samples

  const additive::Batcher batches(view, 5, 7, 3);
  CHECK(batches.num_batches() == 5);
  CHECK(batches.indices(4).size() == 2);  // the last, partial batch is kept
  std::vector<std::int64_t> seen;
  for (std::int64_t b = 0; b < batches.num_batches(); ++b) {
    const auto idx = batches.indices(b);
    seen.insert(seen.end(), idx.begin(), idx.end());
  }
  CHECK(seen == additive::epoch_order(22, 7, 3));
  CHECK(is_permutation_of_iota(seen));

  const additive::Batcher dropped(view, 5, 7, 3, {.shuffle = true, .drop_last = true});
  CHECK(dropped.num_batches() == 4);
  CHECK_THROWS_AS((void)dropped.indices(4), additive::RuntimeError);

  // Resuming at (epoch 3, batch 2) needs no earlier epoch: a fresh batcher agrees.
  const additive::Batcher resumed(view, 5, 7, 3);
  Eigen::MatrixXd x1, x2;  // (input_dim, batch)
  std::vector<std::int32_t> y1, y2;
  batches.batch(2, x1, y1);
  resumed.batch(2, x2, y2);
  CHECK(x1 == x2);
  CHECK(y1 == y2);
  CHECK(x1.cols() == 5);

  // Different epochs give different orders.
  const additive::Batcher next(view, 5, 7, 4);
  CHECK(next.order() != batches.order());

  // No shuffle: view order, for evaluation.
  const additive::Batcher sequential(view, 10, 7, 0, {.shuffle = false});
  CHECK(sequential.num_batches() == 3);
  CHECK(sequential.indices(2).size() == 2);
  CHECK(sequential.indices(1)[0] == 10);
  Eigen::MatrixXf xf;  // (input_dim, batch)
  std::vector<std::int32_t> y;
  sequential.batch(0, xf, y);
  CHECK(y[0] == view.label(0));

  CHECK(contains(input_error([&] { (void)additive::Batcher(view, 0, 1, 0); }), "batch size 0"));
  const DatasetView none = additive::limit(view, 0);
  const additive::Batcher empty(none, 4, 1, 0);
  CHECK(empty.num_batches() == 0);
}
