// Training one structure of the MLP family on the GPU, with the numbers of the CPU
// Trainer (exp/train.hpp) wherever the arithmetic allows:
//
// - the same initial weights (init_mlp_params from training_init_seed), the same epoch
//   seeds (the trainer RNG seeded by derive_seed(seed, "train", 0)), so the same epoch
//   orders (epoch_order) and therefore the same batches, gathered on the device from a
//   dataset uploaded once (DeviceDataset: pixel bytes, scaled T(byte) / T(255) as on the CPU);
// - the same warmup + cosine schedule and AdamW: the per-step scalars (lr / bias
//   corrections, decay factor) are the CPU optimizer's, computed on the host in double
//   once per run and read by the step kernel from device memory, with the element
//   formula of additive::AdamW evaluated without FMA contraction (as cuda::AdamW);
// - the same result type (TrainResult), the same checkpoint files (io/checkpoint.hpp:
//   parameters and the optimizer's m and v under the CPU names, the same metadata), so a
//   CPU checkpoint resumes on the GPU and the other way round.
//
// A training step (batch gather, forward, backward, AdamW, step counter) reads every
// step-dependent value (batch position, step index) from device memory, so the same
// launches serve every step: with `graphs` they are captured once per batch shape as a
// CUDA graph and replayed; without, they are launched one by one. Both give the same
// bits (the same kernels with the same arguments). Graphs need cuda::MlpModel::
// forward_async (labels and the loss in device memory, no host synchronisation); with a
// model that lacks it the trainer runs plain launches (graphs_active() says which).
//
// The loss of each step stays on the device until the end of the epoch (or a checkpoint),
// so a step never waits for the GPU; a non-finite loss is reported then, with its step.
//
// ConcurrentTrainer trains many structures at once on one GPU: each trainer has its own
// models (so its own streams, cuBLASLt handles and graphs), the host enqueues one step of
// each in turn, and the GPU overlaps them. Results equal training each alone.
#pragma once

// fmt 9 under nvcc 13 (C++20): fmt switches its constexpr off for nvcc, which breaks its
// own C++20 code paths in the host compiler ("call to non-constexpr function"), and the
// front end rejects its consteval format-string checks. With constexpr on and the checks
// done at run time it compiles. Only effective when this header is the first to include
// fmt in the translation unit (set both as compile definitions otherwise).
#if defined(__CUDACC__)
#ifndef FMT_USE_CONSTEXPR
#define FMT_USE_CONSTEXPR 1
#endif
#ifndef FMT_CONSTEVAL
#define FMT_CONSTEVAL
#endif
#endif
// EDG (nvcc) fails on libstdc++'s std::thread::swap when <thread> comes after some of
// the headers below (cpu/parallel.hpp includes it); first, it compiles.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"
#include "additive/cuda/kernels.cuh"
#include "additive/cuda/mlp_model.cuh"
#include "additive/cuda/stream.cuh"
#include "additive/data/dataset.hpp"
#include "additive/exp/progress.hpp"
#include "additive/exp/train.hpp"
#include "additive/io/checkpoint.hpp"
#include "additive/nn/mlp.hpp"
#include "additive/optim/adamw.hpp"
#include "additive/optim/adamw_math.hpp"
#include "additive/optim/schedule.hpp"

namespace additive::cuda {

/// GPU-only execution choices: `graphs` never changes the numbers; `precision` does
/// (TF32 / bf16 GEMM operands, docs/cuda.md).
struct DeviceOptions {
  bool graphs = true;                     ///< capture each step shape once as a CUDA graph and replay it
  Precision precision = Precision::fp32;  ///< GEMM precision (cuda/backend.cuh)
  bool deterministic = true;              ///< cuBLASLt without split-K: the same bits run to run
};

/// A dataset view uploaded once: the view's samples in view order (sample i of the view
/// is row i here), pixel bytes and int32 labels in device memory; the labels also on
/// the host (for the plain forward of a model without forward_async).
class DeviceDataset {
 public:
  explicit DeviceDataset(const DatasetView& view, cudaStream_t stream = nullptr)
      : size_(view.size()), dim_(view.input_dim()), classes_(view.num_classes()) {
    std::vector<std::uint8_t> pixels(static_cast<std::size_t>(size_ * dim_));
    labels_host_.resize(static_cast<std::size_t>(size_));
    for (std::int64_t i = 0; i < size_; ++i) {
      const auto img = view.image(i);
      std::copy(img.begin(), img.end(), pixels.begin() + static_cast<std::ptrdiff_t>(i * dim_));
      labels_host_[static_cast<std::size_t>(i)] = view.label(i);
    }
    pixels_ = to_device(std::span<const std::uint8_t>(pixels.data(), pixels.size()), stream);
    labels_ = to_device(std::span<const std::int32_t>(labels_host_.data(), labels_host_.size()), stream);
  }

  [[nodiscard]] std::int64_t size() const noexcept { return size_; }
  [[nodiscard]] std::int64_t input_dim() const noexcept { return dim_; }
  [[nodiscard]] int num_classes() const noexcept { return classes_; }
  [[nodiscard]] const std::uint8_t* pixels() const noexcept { return pixels_.data(); }  ///< (size, dim) bytes
  [[nodiscard]] const std::int32_t* labels() const noexcept { return labels_.data(); }  ///< device
  [[nodiscard]] const std::vector<std::int32_t>& labels_host() const noexcept { return labels_host_; }

 private:
  std::int64_t size_ = 0;
  std::int64_t dim_ = 0;
  int classes_ = 0;
  DeviceBuffer<std::uint8_t> pixels_;
  DeviceBuffer<std::int32_t> labels_;
  std::vector<std::int32_t> labels_host_;
};

namespace detail {

/// x(:, j) = pixels of sample order[first + j] scaled T(byte) / T(255) (IEEE division, as
/// DatasetView::gather), y[j] its label; j < cols. `first` is *first_batch * batch when
/// first_batch is given (device memory: the batch position of the step), else `first`.
/// order == nullptr: identity.
template <class T>
__global__ void gather_kernel(const std::uint8_t* pixels, const std::int32_t* labels,
                              const std::int64_t* order, const std::int64_t* first_batch, std::int64_t batch,
                              std::int64_t first, Index cols, Index dim, T* x, std::int32_t* y) {
  const std::int64_t begin = first_batch != nullptr ? *first_batch * batch : first;
  const Index total = cols * dim;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const Index j = i / dim;
    const Index k = i - j * dim;
    const std::int64_t s = order != nullptr ? order[begin + j] : begin + j;
    x[i] = div_rn(static_cast<T>(pixels[s * dim + k]), static_cast<T>(255));
    if (k == 0) y[j] = labels[s];
  }
}

/// losses[counters[1]] = *loss (counters[1]: the batch position in the epoch).
template <class T>
__global__ void record_loss_kernel(const T* loss, T* losses, const std::int64_t* counters) {
  if (threadIdx.x == 0 && blockIdx.x == 0) losses[counters[1]] = *loss;
}

/// counters = {global step, batch position in the epoch}: both advance by one.
inline __global__ void advance_kernel(std::int64_t* counters) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    counters[0] += 1;
    counters[1] += 1;
  }
}

/// additive::AdamW's element update (optim/adamw_math.hpp, no FMA contraction); the
/// per-step scalars come from table[3 * counters[0] + {0, 1, 2}] = {step_size, sqrt_bc2,
/// decayed}, the constant ones from `constants`.
template <class T>
__global__ void adamw_table_kernel(T* p, const T* g, T* m, T* v, Index n, const T* table,
                                   const std::int64_t* counters, bool decay, AdamWScalars<T> constants) {
  const T* t = table + 3 * counters[0];
  AdamWScalars<T> s = constants;
  s.step_size = t[0];
  s.sqrt_bc2 = t[1];
  s.decayed = t[2];
  const T keep = decay ? s.decayed : T(1);
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x)
    adamw_element<Rn<T>>(p[i], g[i], m[i], v[i], s, keep);
}

/// correct[first + j] = 1 when the first largest logit of column j is labels[j] (the CPU
/// evaluation's argmax: strict >, lowest class wins ties).
template <class T>
__global__ void correct_kernel(const T* logits, Index classes, Index ld, Index cols,
                               const std::int32_t* labels, std::int64_t first, std::uint8_t* correct) {
  for (Index j = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; j < cols;
       j += static_cast<Index>(gridDim.x) * blockDim.x) {
    const T* col = logits + j * ld;
    Index best = 0;
    for (Index c = 1; c < classes; ++c)
      if (col[c] > col[best]) best = c;
    correct[first + j] = best == labels[j] ? 1 : 0;
  }
}

}  // namespace detail

/// Gathers samples order[first .. first + cols) of `data` (identity order when `order` is
/// null) into x (in_dim, cols) and y (cols), device memory, on `stream`: the device
/// version of Batcher::batch, bit for bit.
template <class T>
void gather_batch(const DeviceDataset& data, const std::int64_t* order, std::int64_t first, Index cols, T* x,
                  std::int32_t* y, cudaStream_t stream) {
  if (cols < 1) return;
  detail::gather_kernel<T>
      <<<detail::blocks_for(cols * data.input_dim()), detail::threads_per_block, 0, stream>>>(
          data.pixels(), data.labels(), order, nullptr, 0, first, cols, data.input_dim(), x, y);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

/// True when the model has the asynchronous, graph-capturable forward (labels and loss in
/// device memory) and reserve(batch) (a workspace for batches up to `batch`).
template <class M>
concept AsyncForwardModel = requires(M& m, typename M::mask_type mask, std::span<const float> p,
                                     MatView<const float> x, const std::int32_t* y, float* loss) {
  m.forward_async(mask, p, x, y, loss);
  m.reserve(Index{1});
};

/// An instantiated CUDA graph (owned).
class GraphExec {
 public:
  GraphExec() = default;
  explicit GraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  ~GraphExec() { reset(); }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  GraphExec(GraphExec&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
  GraphExec& operator=(GraphExec&& o) noexcept {
    if (this != &o) {
      reset();
      exec_ = std::exchange(o.exec_, nullptr);
    }
    return *this;
  }
  [[nodiscard]] explicit operator bool() const noexcept { return exec_ != nullptr; }
  void launch(cudaStream_t stream) const { ADDITIVE_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

  /// Captures what `enqueue` launches on `stream` (thread-local capture mode, so other
  /// threads' CUDA calls are unaffected) and instantiates it.
  template <class Enqueue>
  static GraphExec capture(cudaStream_t stream, Enqueue&& enqueue) {
    ADDITIVE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      enqueue();
    } catch (...) {
      if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr)
        ADDITIVE_CUDA_LOG(cudaGraphDestroy(graph));
      (void)cudaGetLastError();
      throw;
    }
    ADDITIVE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    ADDITIVE_CUDA_LOG(cudaGraphDestroy(graph));
    ADDITIVE_CUDA_CHECK(status);
    return GraphExec(exec);
  }

 private:
  void reset() noexcept {
    if (exec_ != nullptr) ADDITIVE_CUDA_LOG(cudaGraphExecDestroy(exec_));
    exec_ = nullptr;
  }
  cudaGraphExec_t exec_ = nullptr;
};

/// Trains one structure of family F in fp32 on the current CUDA device. The interface
/// follows additive::Trainer: fit / evaluate / save / resume; TrainOptions.optimizer
/// must be "adamw" (SGD on the GPU is not written: InputError).
template <Family F>
class Trainer {
  using T = float;

 public:
  using mask_type = typename F::mask_type;
  using model_type = MlpModel<F, T>;
  static constexpr bool async_forward = AsyncForwardModel<model_type>;

  Trainer(const MlpConfig& model_config, mask_type mask, const TrainOptions& train,
          const RunOptions& run = {}, const DeviceOptions& device = {})
      : model_config_(model_config),
        mask_(mask),
        train_(train),
        run_(run),
        device_(device),
        model_(make_model()),
        params_(model_->layout().total()),
        grads_(model_->layout().total()),
        m_(model_->layout().total()),
        v_(model_->layout().total()),
        counters_(2),
        loss_(1),
        rng_(training_rng_seed(train.seed)) {
    if (train_.optimizer != "adamw")
      throw InputError(fmt::format(fmt::runtime("the CUDA trainer supports optimizer adamw only, got '{}'"),
                                   train_.optimizer));
    std::vector<T> init(model_->layout().total());
    init_mlp_params<T>(model_config_, F::blocks, training_init_seed(train.seed), std::span<T>(init));
    params_.upload(std::span<const T>(init.data(), init.size()), stream());
    m_.zero(stream());
    v_.zero(stream());
    // Decay runs: maximal spans of adjacent tensors with the same decay flag (one launch each).
    for (const TensorSpec& t : model_->layout().tensors()) {
      if (t.size == 0) continue;
      if (!runs_.empty() && runs_.back().decay == t.decay &&
          runs_.back().offset + runs_.back().size == t.offset)
        runs_.back().size += t.size;
      else
        runs_.push_back({t.offset, t.size, t.decay});
    }
    sync();
  }

  [[nodiscard]] const ParamLayout& layout() const noexcept { return model_->layout(); }
  [[nodiscard]] std::int64_t step() const noexcept { return step_; }
  [[nodiscard]] mask_type mask() const noexcept { return mask_; }
  [[nodiscard]] model_type& model() noexcept { return *model_; }
  /// Whether steps replay CUDA graphs (DeviceOptions::graphs and a model with forward_async).
  [[nodiscard]] bool graphs_active() const noexcept { return device_.graphs && async_forward; }
  /// The parameters, copied to the host (waits for the GPU).
  [[nodiscard]] std::vector<T> params() const {
    sync();
    return params_.to_host(stream());
  }
  /// Device parameter buffer (layout().total() elements).
  [[nodiscard]] std::span<const T> device_params() const noexcept { return params_.span(); }

  /// Trains until all epochs are done (or stop_after_steps); uploads both views once.
  TrainResult fit(const DatasetView& train, const DatasetView& val,
                  const std::function<void(const EpochRecord&)>& on_epoch = {}) {
    check_data(train);
    auto t = std::make_shared<const DeviceDataset>(train, stream());
    auto v = std::make_shared<const DeviceDataset>(val, stream());
    return fit(std::move(t), std::move(v), on_epoch);
  }
  TrainResult fit(std::shared_ptr<const DeviceDataset> train, std::shared_ptr<const DeviceDataset> val,
                  const std::function<void(const EpochRecord&)>& on_epoch = {}) {
    start(std::move(train), std::move(val), on_epoch);
    while (advance()) {
    }
    return result_;
  }

  // ---- stepping interface (ConcurrentTrainer): start, then advance() until false ----

  /// Prepares a run on uploaded data (the trainer keeps the pointers).
  void start(std::shared_ptr<const DeviceDataset> train, std::shared_ptr<const DeviceDataset> val,
             std::function<void(const EpochRecord&)> on_epoch = {}) {
    if (!train || train->size() < 1) throw InputError("training set is empty");
    if (train->input_dim() != model_config_.in_dim)
      throw InputError(
          fmt::format(fmt::runtime("training data has {} features per sample, the model expects {}"),
                      train->input_dim(), model_config_.in_dim));
    train_data_ = std::move(train);
    val_data_ = std::move(val);
    on_epoch_ = std::move(on_epoch);
    const std::int64_t per_epoch = (train_data_->size() + train_.batch - 1) / train_.batch;
    if (per_epoch > (std::int64_t{1} << 53) / train_.epochs)
      throw InputError(
          fmt::format(fmt::runtime("{} epochs of {} steps is too many steps"), train_.epochs, per_epoch));
    per_epoch_ = per_epoch;
    total_ = per_epoch * train_.epochs;
    if (step_ > total_)
      throw InputError(fmt::format(
          fmt::runtime(
              "checkpoint '{}': metadata 'step' is {}, beyond the end of training ({} epochs of {} steps)"),
          resumed_from_.string(), step_, train_.epochs, per_epoch));
    build_step_table();
    reserve(std::max<Index>(static_cast<Index>(std::min<std::int64_t>(train_.batch, train_data_->size())),
                            eval_batch()));
    losses_ = DeviceBuffer<T>(static_cast<std::size_t>(per_epoch));
    order_ = DeviceBuffer<std::int64_t>(static_cast<std::size_t>(train_data_->size()));
    host_losses_.assign(static_cast<std::size_t>(per_epoch), T(0));
    result_ = TrainResult{};
    train_seconds_ = 0;
    trained_samples_ = 0;
    epoch_open_ = false;
    done_ = step_ >= total_;
    if (done_) result_.finished = true;
    result_.steps = step_;
  }

  /// Enqueues the next step (and does the epoch's end when it is the last of an epoch:
  /// waits for the GPU, evaluates, checkpoints). False once the run is over.
  bool advance() {
    if (done_) return false;
    if (!epoch_open_) open_epoch();
    const std::int64_t b = step_ % per_epoch_;
    const Index cols = batch_cols(b);
    enqueue_step(cols);
    trained_samples_ += cols;
    ++step_;
    if (bar_) bar_->update(b + 1);
    const bool stop = run_.stop_after_steps >= 0 && step_ >= run_.stop_after_steps;
    const bool epoch_end = step_ % per_epoch_ == 0;
    if (!run_.checkpoint.empty() && run_.checkpoint_every > 0 && step_ % run_.checkpoint_every == 0 &&
        !epoch_end)
      save(run_.checkpoint);
    if (stop && !epoch_end) {
      if (!run_.checkpoint.empty()) save(run_.checkpoint);
      close_timer();
      return finish(false);
    }
    if (epoch_end) {
      fold_losses(per_epoch_);
      close_timer();
      const std::int64_t epoch = step_ / per_epoch_ - 1;
      EpochRecord rec{epoch + 1, epoch_loss_sum_ / double(per_epoch_), evaluate(*val_data_), epoch_seconds_};
      result_.epochs.push_back(rec);
      if (on_epoch_) on_epoch_(rec);
      if (!run_.checkpoint.empty()) save(run_.checkpoint);
      if (step_ >= total_) return finish(true);
      if (run_.stop_after_steps >= 0 && step_ >= run_.stop_after_steps) return finish(false);
    }
    return true;
  }
  [[nodiscard]] bool done() const noexcept { return done_; }
  /// Waits until every step enqueued so far has run.
  void synchronize() const { sync(); }
  [[nodiscard]] const TrainResult& result() const noexcept { return result_; }

  /// Mean loss and accuracy of the current parameters (fixed batches of run.eval_batch).
  EvalResult evaluate(const DatasetView& data) {
    if (data.size() == 0) return {};
    const DeviceDataset d(data, stream());
    return evaluate(d);
  }
  EvalResult evaluate(const DeviceDataset& data) {
    EvalResult r;
    if (data.size() == 0) return r;
    if (data.input_dim() != model_config_.in_dim)
      throw InputError(
          fmt::format(fmt::runtime("evaluation data has {} features per sample, the model expects {}"),
                      data.input_dim(), model_config_.in_dim));
    const Index eb = std::min<Index>(eval_batch(), data.size());
    reserve(eb);
    const cudaStream_t s = stream();
    const std::int64_t nb = (data.size() + eb - 1) / eb;
    DeviceBuffer<T> batch_losses(static_cast<std::size_t>(nb));
    DeviceBuffer<std::uint8_t> correct(static_cast<std::size_t>(data.size()));
    std::vector<T> host_losses(static_cast<std::size_t>(nb));
    for (std::int64_t b = 0; b < nb; ++b) {
      const std::int64_t first = b * eb;
      const Index cols = std::min<Index>(eb, data.size() - first);
      gather_batch<T>(data, nullptr, first, cols, x_.data(), y_.data(), s);
      const MatView<const T> xv(x_.data(), model_config_.in_dim, cols);
      if constexpr (async_forward) {
        model_->forward_async(mask_, const_params(), xv, y_.data(), batch_losses.data() + b);
      } else {
        const auto& labels = data.labels_host();
        host_losses[static_cast<std::size_t>(b)] = model_->forward(
            mask_, const_params(), xv,
            std::span<const std::int32_t>(labels.data() + first, static_cast<std::size_t>(cols)));
      }
      const auto logits = model_->logits();  // (classes, cols)
      detail::correct_kernel<T><<<detail::blocks_for(cols), detail::threads_per_block, 0, s>>>(
          logits.data, logits.rows, logits.ld, cols, y_.data(), first, correct.data());
      ADDITIVE_CUDA_CHECK_LAUNCH();
    }
    if constexpr (async_forward)
      batch_losses.download(std::span<T>(host_losses.data(), host_losses.size()), s);
    const auto flags = correct.to_host(s);
    double loss_sum = 0;
    for (std::int64_t b = 0; b < nb; ++b) {
      const std::int64_t cols = std::min<std::int64_t>(eb, data.size() - b * eb);
      loss_sum += double(host_losses[static_cast<std::size_t>(b)]) * double(cols);
    }
    std::int64_t hits = 0;
    for (const auto f : flags) hits += f;
    r.samples = data.size();
    r.loss = loss_sum / double(r.samples);
    r.accuracy = double(hits) / double(r.samples);
    return r;
  }

  /// Writes the training state atomically: the CPU Trainer's file (parameters, AdamW m
  /// and v, the same metadata), so either side can resume it.
  void save(const std::filesystem::path& path) {
    if (epoch_open_) fold_losses(step_ - epoch_first_step_);
    sync();
    auto p = params_.to_host(stream());
    auto m = m_.to_host(stream());
    auto v = v_.to_host(stream());
    CheckpointState<T> state{
        &model_->layout(), p, {{"m", std::span<T>(m)}, {"v", std::span<T>(v)}}, metadata()};
    save_checkpoint(path, state);
  }

  /// Restores a state written by save() or by the CPU Trainer<cpu::MlpModel<F, float>>::save(); the
  /// family, widths, structure and training options must be this trainer's. On error
  /// nothing changes. Call before fit().
  void resume(const std::filesystem::path& path) {
    const std::size_t n = model_->layout().total();
    std::vector<T> p(n), m(n), v(n);
    CheckpointState<T> state{&model_->layout(), p, {{"m", std::span<T>(m)}, {"v", std::span<T>(v)}}, {}};
    load_checkpoint(path, state);
    const auto& meta = state.metadata;
    const CheckpointMetadata read(path, meta);
    auto need = [&](const char* key) -> const std::string& { return read.text(key); };
    auto mismatch = [&](const std::string& what, const std::string& file, const std::string& now) {
      throw InputError("checkpoint '" + path.string() + "' was written for " + what + " " +
                       additive::detail::printable(file, 40) + ", this run uses " + now);
    };
    const auto expected = metadata();
    for (const char* key : {"family", "model", "mask"})
      if (need(key) != expected.at(key)) mismatch(key, need(key), expected.at(key));
    if (const auto g = meta.find("gating"); g != meta.end() && g->second != "none")
      mismatch("gating", g->second, "none");
    if (need("train") != expected.at("train"))
      mismatch("training options", need("train"), expected.at("train"));
    // The step is checked against the run's length in begin(), once the data fixes it.
    const auto step = read.counter("step", std::uint64_t{1} << 53);
    const auto epoch_seed = read.counter("epoch_seed");
    const double loss_sum = read.number("epoch_loss_sum", 0, std::numeric_limits<double>::max());
    auto rng = rng_from_string(need("rng"));
    additive::detail::check_optimizer_state<T>(read, state.optimizer_state);
    // Everything parsed: commit.
    params_.upload(p, stream());
    m_.upload(std::span<const T>(m.data(), m.size()), stream());
    v_.upload(std::span<const T>(v.data(), v.size()), stream());
    step_ = static_cast<std::int64_t>(step);
    epoch_seed_ = epoch_seed;
    epoch_loss_sum_ = loss_sum;
    rng_ = rng;
    epoch_open_ = false;
    resumed_from_ = path;
  }

 private:
  struct Run {
    std::size_t offset = 0;
    std::size_t size = 0;
    bool decay = false;
  };

  std::unique_ptr<model_type> make_model() const {
    auto m = std::make_unique<model_type>((train_.validate(), model_config_));
    if constexpr (requires { m->backend().set_precision(device_.precision); }) {
      m->backend().set_precision(device_.precision);
      m->backend().set_deterministic(device_.deterministic);
    } else {
      m->backend().blas().set_tf32(device_.precision == Precision::tf32);
      if (device_.precision == Precision::bf16)
        throw InputError("this cuda::MlpModel has no bf16 mode (Backend::set_precision is missing)");
    }
    return m;
  }

  [[nodiscard]] Index eval_batch() const noexcept { return std::max<Index>(run_.eval_batch, 1); }

  /// One workspace for every shape this trainer runs (the training batch, the epoch's
  /// smaller last batch, evaluation batches): it must not grow once a step graph holds
  /// its pointers, so start() reserves the largest first. Also sizes the input buffers.
  void reserve(Index cols) {
    if constexpr (async_forward) model_->reserve(cols);
    if (static_cast<std::size_t>(cols) > y_.size()) {
      if (!graphs_.empty()) throw RuntimeError("cuda::Trainer: workspace growth after a graph capture");
      x_ = DeviceBuffer<T>(static_cast<std::size_t>(cols * model_config_.in_dim));
      y_ = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(cols));
    }
  }

  void check_data(const DatasetView& train) const {
    if (train.size() < 1) throw InputError("training set is empty");
    if (train.input_dim() != model_config_.in_dim)
      throw InputError(
          fmt::format(fmt::runtime("training data has {} features per sample, the model expects {}"),
                      train.input_dim(), model_config_.in_dim));
  }

  [[nodiscard]] cudaStream_t stream() const noexcept { return model_->backend().stream(); }
  void sync() const { ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream())); }
  [[nodiscard]] std::span<const T> const_params() const noexcept { return params_.span(); }

  [[nodiscard]] Index batch_cols(std::int64_t b) const noexcept {
    return static_cast<Index>(std::min<std::int64_t>(train_.batch, train_data_->size() - b * train_.batch));
  }

  /// The per-step AdamW scalars of every step of the run, as additive::AdamW computes
  /// them from the schedule's rate (rounded to T, as the CPU Trainer passes it).
  void build_step_table() {
    const WarmupCosine schedule{train_.lr,
                                static_cast<std::int64_t>(std::floor(train_.warmup * double(total_))), total_,
                                train_.min_lr};
    const AdamWConfig c{.weight_decay = train_.weight_decay};
    std::vector<T> table(static_cast<std::size_t>(3 * total_));
    for (std::int64_t s = 0; s < total_; ++s) {
      const double lr_d = static_cast<double>(static_cast<T>(schedule.lr(s)));
      const auto scalars = AdamWScalars<T>::make(c, s + 1, lr_d);
      table[static_cast<std::size_t>(3 * s)] = scalars.step_size;
      table[static_cast<std::size_t>(3 * s + 1)] = scalars.sqrt_bc2;
      table[static_cast<std::size_t>(3 * s + 2)] = scalars.decayed;
    }
    step_table_ = to_device(std::span<const T>(table.data(), table.size()), stream());
    adamw_ = c;
  }

  /// Epoch start: the epoch seed (drawn as the CPU Trainer draws it), its order and the
  /// device counters {step, batch position}.
  void open_epoch() {
    const std::int64_t epoch = step_ / per_epoch_;
    const std::int64_t b = step_ % per_epoch_;
    if (b == 0) {
      epoch_seed_ = rng_();
      epoch_loss_sum_ = 0;
    }
    sync();  // the host buffers below are reused: earlier copies from them must be done
    host_order_ = epoch_order(train_data_->size(), epoch_seed_, epoch);
    host_counters_ = {step_, b};
    const cudaStream_t s = stream();
    ADDITIVE_CUDA_CHECK(
        cudaMemcpyAsync(order_.data(), host_order_.data(), order_.bytes(), cudaMemcpyHostToDevice, s));
    ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(counters_.data(), host_counters_.data(), counters_.bytes(),
                                        cudaMemcpyHostToDevice, s));
    folded_ = b;
    epoch_first_step_ = step_ - b;
    epoch_open_ = true;
    if (run_.progress)
      bar_ = std::make_unique<ProgressBar>(fmt::format(fmt::runtime("epoch {}/{}"), epoch + 1, train_.epochs),
                                           per_epoch_, double(train_.batch), "samples", stderr);
    epoch_t0_ = ProgressBar::Clock::now();
  }

  void close_timer() {
    epoch_seconds_ = std::chrono::duration<double>(ProgressBar::Clock::now() - epoch_t0_).count();
    train_seconds_ += epoch_seconds_;
    bar_.reset();
  }

  bool finish(bool finished) {
    if (epoch_open_) fold_losses(step_ - epoch_first_step_);
    sync();
    result_.steps = step_;
    result_.finished = finished;
    result_.samples_per_second = train_seconds_ > 0 ? double(trained_samples_) / train_seconds_ : 0;
    done_ = true;
    epoch_open_ = false;
    return false;
  }

  /// Adds the losses of batches [folded_, upto) of this epoch to epoch_loss_sum_, in
  /// step order (the CPU Trainer's sum), and reports a non-finite one as the CPU does.
  void fold_losses(std::int64_t upto) {
    if (upto <= folded_) return;
    sync();
    if constexpr (async_forward)
      ADDITIVE_CUDA_CHECK(
          cudaMemcpy(host_losses_.data(), losses_.data(), losses_.bytes(), cudaMemcpyDeviceToHost));
    for (std::int64_t b = folded_; b < upto; ++b) {
      const T loss = host_losses_[static_cast<std::size_t>(b)];
      if (!std::isfinite(static_cast<double>(loss)))
        throw InputError(fmt::format(
            fmt::runtime("training diverged: loss is {} at step {} ({})"), double(loss),
            epoch_first_step_ + b,
            resumed_from_.empty()
                ? std::string("lower --lr?")
                : fmt::format(fmt::runtime("resumed from checkpoint '{}'"), resumed_from_.string())));
      epoch_loss_sum_ += double(loss);
    }
    folded_ = upto;
    if (upto == per_epoch_) epoch_open_ = false;
  }

  /// One training step of `cols` samples.
  void enqueue_step(Index cols) {
    const cudaStream_t st = stream();
    if constexpr (async_forward) {
      // The first step of a shape runs plainly (it loads the kernels, which lazy module
      // loading would otherwise do inside the capture, and runs cuBLASLt's first calls);
      // the next one of that shape is captured, then replayed. Same launches: same bits.
      if (device_.graphs && warmed_.contains(cols)) {
        auto it = graphs_.find(cols);
        if (it == graphs_.end())
          it = graphs_.emplace(cols, GraphExec::capture(st, [&] { enqueue_body(cols, st); })).first;
        it->second.launch(st);
        return;
      }
      warmed_.insert(cols);
    }
    enqueue_body(cols, st);
  }

  /// The launches of one step; every step-dependent value is read from device memory.
  void enqueue_body(Index cols, cudaStream_t st) {
    const Index dim = model_config_.in_dim;
    detail::gather_kernel<T><<<detail::blocks_for(cols * dim), detail::threads_per_block, 0, st>>>(
        train_data_->pixels(), train_data_->labels(), order_.data(), counters_.data() + 1, train_.batch, 0,
        cols, dim, x_.data(), y_.data());
    ADDITIVE_CUDA_CHECK_LAUNCH();
    const MatView<const T> xv(x_.data(), dim, cols);
    if constexpr (async_forward) {
      model_->forward_async(mask_, const_params(), xv, y_.data(), loss_.data());
      detail::record_loss_kernel<T><<<1, 1, 0, st>>>(loss_.data(), losses_.data(), counters_.data());
      ADDITIVE_CUDA_CHECK_LAUNCH();
    } else {
      // Plain forward: host labels (the same order on the host), loss returned.
      const std::int64_t b = step_ % per_epoch_;
      const auto& labels = train_data_->labels_host();
      host_labels_.resize(static_cast<std::size_t>(cols));
      for (Index j = 0; j < cols; ++j)
        host_labels_[static_cast<std::size_t>(j)] =
            labels[static_cast<std::size_t>(host_order_[static_cast<std::size_t>(b * train_.batch + j)])];
      host_losses_[static_cast<std::size_t>(b)] = model_->forward(mask_, const_params(), xv, host_labels_);
    }
    model_->backward(const_params(), grads_.span());
    for (const Run& r : runs_) {
      const auto n = static_cast<Index>(r.size);
      detail::adamw_table_kernel<T><<<detail::blocks_for(n), detail::threads_per_block, 0, st>>>(
          params_.data() + r.offset, grads_.data() + r.offset, m_.data() + r.offset, v_.data() + r.offset, n,
          step_table_.data(), counters_.data(), r.decay, AdamWScalars<T>::make(adamw_, 1, 0.0));
      ADDITIVE_CUDA_CHECK_LAUNCH();
    }
    detail::advance_kernel<<<1, 1, 0, st>>>(counters_.data());
    ADDITIVE_CUDA_CHECK_LAUNCH();
  }

  std::map<std::string, std::string> metadata() const {
    return {{"step", std::to_string(step_)},
            {"epoch", std::to_string(per_epoch_ > 0 ? step_ / per_epoch_ : 0)},
            {"rng", rng_to_string(rng_)},
            {"epoch_seed", std::to_string(epoch_seed_)},
            {"epoch_loss_sum", fmt::format(fmt::runtime("{:.17g}"), epoch_loss_sum_)},
            {"family", F::describe()},
            {"mask", to_hex(mask_)},
            {"structure", F::to_string(mask_)},
            {"model", nlohmann::json(model_config_).dump()},
            {"train", nlohmann::json(train_).dump()}};
  }

  MlpConfig model_config_;
  mask_type mask_;
  TrainOptions train_;
  RunOptions run_;
  DeviceOptions device_;
  std::unique_ptr<model_type> model_;  // owns the stream every launch of this trainer is on
  std::map<Index, GraphExec> graphs_;  // captured steps, by batch shape (full, last)
  std::set<Index> warmed_;             // shapes that ran once plainly
  DeviceBuffer<T> params_, grads_, m_, v_;
  DeviceBuffer<std::int64_t> counters_;  // {global step, batch position in the epoch}
  DeviceBuffer<T> x_;                    // (in_dim, largest batch) the batch being trained / evaluated
  DeviceBuffer<std::int32_t> y_;         // (largest batch) its labels
  DeviceBuffer<T> loss_;                 // the step's mean loss
  DeviceBuffer<T> losses_;               // (per_epoch) the losses of this epoch
  DeviceBuffer<T> step_table_;           // (3 * total) AdamW scalars per step
  DeviceBuffer<std::int64_t> order_;     // (train size) this epoch's order
  std::vector<std::int64_t> host_order_;
  std::vector<std::int64_t> host_counters_;
  std::vector<T> host_losses_;
  std::vector<std::int32_t> host_labels_;
  std::vector<Run> runs_;
  AdamWConfig adamw_{};
  std::shared_ptr<const DeviceDataset> train_data_, val_data_;
  std::function<void(const EpochRecord&)> on_epoch_;
  std::unique_ptr<ProgressBar> bar_;
  ProgressBar::Clock::time_point epoch_t0_{};
  double epoch_seconds_ = 0;
  double train_seconds_ = 0;
  std::int64_t trained_samples_ = 0;
  TrainResult result_{};
  std::mt19937_64 rng_;
  std::int64_t step_ = 0;
  std::int64_t per_epoch_ = 0;
  std::int64_t total_ = 0;
  std::int64_t folded_ = 0;            // batches of this epoch already in epoch_loss_sum_
  std::int64_t epoch_first_step_ = 0;  // global step of this epoch's first batch
  std::uint64_t epoch_seed_ = 0;
  double epoch_loss_sum_ = 0;
  bool epoch_open_ = false;
  bool done_ = false;
  std::filesystem::path resumed_from_{};  // the checkpoint resume() read (for begin()'s checks)
};

/// One run of a ConcurrentTrainer: a structure and its training options (seed, epochs...).
struct ConcurrentJob {
  std::uint64_t mask = 0;
  TrainOptions train{};
};

/// Trains many structures of family F at once on one GPU. Each job gets its own
/// cuda::Trainer (its own models, so its own streams, cuBLASLt handles and graphs); the
/// host enqueues one step of each active trainer in turn, so while one trainer's epoch
/// end waits for its stream the others' queued steps keep the GPU busy. At most
/// `max_active` trainers exist at once (0: all; each holds its parameters, AdamW state
/// and workspaces for its batch shapes). The runs share nothing but the uploaded data,
/// so each result equals training that job alone with cuda::Trainer.
template <Family F>
class ConcurrentTrainer {
 public:
  /// job index, its result, wall seconds from its trainer's creation to its end.
  using Done = std::function<void(std::size_t job, const TrainResult& result, double seconds)>;

  ConcurrentTrainer(const MlpConfig& model, const RunOptions& run = {}, const DeviceOptions& device = {},
                    int max_active = 0)
      : model_(model), run_(run), device_(device), max_active_(max_active) {
    if (!run_.checkpoint.empty())
      throw InputError(
          "ConcurrentTrainer: per-run checkpoints are not supported (train alone to checkpoint)");
    if (max_active < 0) throw InputError("ConcurrentTrainer: max_active must be >= 0");
    run_.progress = false;
  }

  std::vector<TrainResult> fit(const std::vector<ConcurrentJob>& jobs, const DatasetView& train,
                               const DatasetView& val, const Done& done = {}) {
    auto t = std::make_shared<const DeviceDataset>(train);
    auto v = std::make_shared<const DeviceDataset>(val);
    return fit(jobs, std::move(t), std::move(v), done);
  }

  /// Results in job order; `done` is called (on this thread) as each job finishes.
  std::vector<TrainResult> fit(const std::vector<ConcurrentJob>& jobs,
                               std::shared_ptr<const DeviceDataset> train,
                               std::shared_ptr<const DeviceDataset> val, const Done& done = {}) {
    std::vector<TrainResult> results(jobs.size());
    struct Active {
      std::size_t job = 0;
      std::unique_ptr<Trainer<F>> trainer;
      ProgressBar::Clock::time_point t0{};
    };
    std::vector<Active> active;
    const std::size_t limit = max_active_ > 0 ? static_cast<std::size_t>(max_active_) : jobs.size();
    std::size_t next = 0;
    while (next < jobs.size() || !active.empty()) {
      while (active.size() < limit && next < jobs.size()) {
        const auto& j = jobs[next];
        const auto t0 = ProgressBar::Clock::now();
        auto t = std::make_unique<Trainer<F>>(model_, typename F::mask_type(j.mask), j.train, run_, device_);
        t->start(train, val);
        active.push_back({next++, std::move(t), t0});
      }
      // One step of each active trainer; the finished ones report and leave.
      for (std::size_t i = 0; i < active.size();) {
        if (active[i].trainer->advance()) {
          ++i;
          continue;
        }
        results[active[i].job] = active[i].trainer->result();
        if (done)
          done(active[i].job, results[active[i].job],
               std::chrono::duration<double>(ProgressBar::Clock::now() - active[i].t0).count());
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    return results;
  }

 private:
  MlpConfig model_;
  RunOptions run_;
  DeviceOptions device_;
  int max_active_ = 0;
};

}  // namespace additive::cuda
