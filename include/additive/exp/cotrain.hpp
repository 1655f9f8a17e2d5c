// Co-training (experiment 2): K ranks, one structure each, on one replicated weight set.
// Every rank holds the same parameters and optimizer state; per step each computes the
// gradient of its own structure on its share of the global batch, the gradients are
// averaged by one all-reduce, and every replica takes the same optimizer step, so the
// replicas stay bit-identical (checked by a periodic checksum). Local-SGD mode (DiLoCo /
// DiPaCo): each rank takes H inner steps on its own, then the ranks average the
// pseudo-gradient (anchor - params) and take one outer SGD step with Nesterov momentum.
// Works on any Communicator (threads, MPI). See docs/cotraining.md.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/structure.hpp"
#include "additive/cpu/mlp_model.hpp"
#include "additive/data/dataset.hpp"
#include "additive/dist/communicator.hpp"
#include "additive/exp/evaluate_all.hpp"
#include "additive/exp/progress.hpp"
#include "additive/exp/train.hpp"
#include "additive/nn/mlp.hpp"
#include "additive/optim/adamw.hpp"
#include "additive/optim/schedule.hpp"
#include "additive/optim/sgd.hpp"

namespace additive {

/// What co-training adds to TrainOptions. All of it must agree between the ranks (checked
/// at start); only the structure differs.
struct CoTrainOptions {
  /// false (data-parallel): rank r reads its slice of every global batch (balanced:
  /// dist::detail::chunk(B, K, r)); true: every rank reads the whole global batch.
  bool same_batch = false;
  /// Compare a checksum of the parameters across ranks every this many optimizer steps
  /// (local-SGD: outer steps), and at the end of fit(); 0: only at the end.
  std::int64_t checksum_every = 50;
  /// Local SGD: H inner steps per outer step (0: synchronous co-training).
  std::int64_t local_steps = 0;
  double outer_lr = 0.7;        ///< local SGD: rate of the outer SGD step
  double outer_momentum = 0.9;  ///< local SGD: Nesterov momentum of the outer step (0: none)

  void validate() const {
    auto bad = [](const std::string& what) { throw InputError("co-training options: " + what); };
    if (checksum_every < 0) bad("checksum_every must be >= 0, got " + std::to_string(checksum_every));
    if (local_steps < 0) bad("local_steps (H) must be >= 0, got " + std::to_string(local_steps));
    if (!(outer_lr > 0) || !std::isfinite(outer_lr)) bad("outer_lr must be a positive number");
    if (!(outer_momentum >= 0 && outer_momentum < 1)) bad("outer_momentum must be in [0, 1)");
  }
};

inline void to_json(nlohmann::json& j, const CoTrainOptions& o) {
  j = nlohmann::json{{"same_batch", o.same_batch},
                     {"checksum_every", o.checksum_every},
                     {"local_steps", o.local_steps},
                     {"outer_lr", o.outer_lr},
                     {"outer_momentum", o.outer_momentum}};
}

/// Collectives of one rank, counted where they are issued (payload: the bytes of the
/// buffer passed to the all-reduce; a ring moves 2 (K-1)/K times that per rank).
struct CommStats {
  std::int64_t all_reduces = 0;     ///< gradient / pseudo-gradient all-reduces
  std::int64_t payload_bytes = 0;   ///< their payload
  std::int64_t checksums = 0;       ///< replica checks
  std::int64_t checksum_bytes = 0;  ///< their payload
  double seconds = 0;               ///< wall time inside the gradient all-reduces
};

inline void to_json(nlohmann::json& j, const CommStats& s) {
  j = nlohmann::json{{"all_reduces", s.all_reduces},
                     {"payload_bytes", s.payload_bytes},
                     {"checksums", s.checksums},
                     {"checksum_bytes", s.checksum_bytes},
                     {"seconds", s.seconds}};
}

struct CoTrainResult {
  std::vector<EpochRecord> epochs;  ///< train_loss: mean over ranks; val: this rank's structure
  std::int64_t steps = 0;
  double seconds = 0;
  CommStats comm;
};

namespace detail {

/// 64-bit FNV-1a over the parameter words: any bit that differs changes it (whp).
template <class T>
std::uint64_t param_hash(std::span<const T> params) {
  std::uint64_t h = 14695981039346656037ull;
  for (const T v : params) {
    std::uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    h = (h ^ w) * 1099511628211ull;
  }
  return h;
}

}  // namespace detail

/// Co-trains one structure per rank of `Comm` on shared, replicated weights.
template <Family F, class T, Communicator Comm>
class CoTrainer {
 public:
  using mask_type = typename F::mask_type;

  /// Collective: checks that every rank has the same family, model, training and
  /// co-training options (CommError naming the ranks otherwise; the masks may differ),
  /// then initialises the parameters from `train.seed` exactly as Trainer does.
  CoTrainer(Comm& comm, const MlpConfig& model_config, mask_type mask, const TrainOptions& train,
            const CoTrainOptions& co = {}, int threads = 1)
      : comm_(&comm),
        model_config_(model_config),
        mask_(mask),
        train_(train),
        co_(co),
        threads_(threads),
        model_((train.validate(), co.validate(), model_config), threads),
        params_(model_.layout().total()),
        grads_(model_.layout().total()),
        optimizer_(make_optimizer(model_.layout(), train)),
        rng_(derive_seed(train.seed, kTrainDomain, 0)) {
    dist::check_consistent(*comm_, "co-training setup", setup_description());
    init_mlp_params<T>(model_config_, F::blocks, training_init_seed(train.seed), params_);
    if (co_.local_steps > 0) {
      anchor_.assign(params_.begin(), params_.end());
      const double mu = co_.outer_momentum;
      outer_.emplace(model_.layout(), SgdConfig{.momentum = mu, .nesterov = mu > 0, .weight_decay = 0});
    }
    verify_replicas();
  }

  [[nodiscard]] std::span<T> params() noexcept { return params_; }
  [[nodiscard]] std::span<const T> params() const noexcept { return params_; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return model_.layout(); }
  [[nodiscard]] mask_type mask() const noexcept { return mask_; }
  [[nodiscard]] std::int64_t step() const noexcept { return step_; }
  [[nodiscard]] const CommStats& comm_stats() const noexcept { return stats_; }
  /// Whether the replicas are equal now (always in synchronous mode; right after an
  /// outer step in local SGD).
  [[nodiscard]] bool in_sync() const noexcept { return co_.local_steps == 0 || synced_step_ == step_; }

  /// The positions of `batch` (global batch positions, the same list on every rank) this
  /// rank reads: all of them (same_batch), or its balanced slice.
  [[nodiscard]] std::span<const std::int64_t> share(std::span<const std::int64_t> batch) const {
    if (co_.same_batch) return batch;
    const auto c = dist::detail::chunk(batch.size(), static_cast<std::size_t>(comm_->size()),
                                       static_cast<std::size_t>(comm_->rank()));
    return batch.subspan(c.begin, c.end - c.begin);
  }

  /// Collective: one optimizer step on global batch `batch` (positions of `data`) at rate
  /// `lr`. Returns this rank's mean loss on its share (0 for an empty share).
  ///
  /// Synchronous: grads of this rank's structure on its share; in data-parallel mode,
  /// when the batch does not divide into K equal shares, each rank's gradient is first
  /// scaled by K n_r / B (n_r: its share) so the average is the mean over the B samples;
  /// a rank with no sample contributes zeros. Then all_reduce_average and the step.
  /// Local SGD: the inner step on this rank's own gradient; every H steps the outer step.
  T train_step(const DatasetView& data, std::span<const std::int64_t> batch, T lr) {
    if (batch.empty()) throw InputError("co-training: empty batch");
    const auto mine = share(batch);
    T loss = 0;
    if (mine.empty()) {
      std::fill(grads_.begin(), grads_.end(), T(0));
    } else {
      data.gather(mine, x_, y_);
      loss = model_.forward(mask_, params_, MatView<const T>(x_.data(), x_.rows(), x_.cols()), y_);
      if (!std::isfinite(static_cast<double>(loss)))
        throw InputError(fmt::format("co-training diverged: loss is {} at step {} on rank {} (lower --lr?)",
                                     double(loss), step_, comm_->rank()));
      model_.backward(params_, grads_);
    }
    if (co_.local_steps == 0) {
      if (!co_.same_batch && batch.size() % static_cast<std::size_t>(comm_->size()) != 0) {
        const T w = static_cast<T>(double(mine.size()) * double(comm_->size()) / double(batch.size()));
        for (auto& g : grads_) g *= w;
      }
      all_reduce_average_timed(grads_);
      step_optimizer(lr);
      ++step_;
      if (co_.checksum_every > 0 && step_ % co_.checksum_every == 0) verify_replicas();
    } else {
      step_optimizer(lr);  // inner step on this rank's own gradient
      ++step_;
      if (step_ % co_.local_steps == 0) outer_step();
    }
    return loss;
  }

  /// Local SGD: the outer step now (all ranks together), even mid-period; fit() calls it
  /// at the end so the replicas agree. Synchronous mode: nothing to do.
  void synchronize() {
    if (!in_sync()) outer_step();
  }

  /// Collective: throws the same CommError on every rank when the parameters differ in
  /// any bit between ranks ("replicas diverged at step S: ...").
  void verify_replicas() {
    const int p = comm_->size(), r = comm_->rank();
    const std::uint64_t h = detail::param_hash<T>(params_);
    // Each rank's hash as two 32-bit halves in its own slots of a zero table: the sum
    // adds zeros only, exact in any reduction order.
    std::vector<double> table(2 * static_cast<std::size_t>(p), 0.0);
    table[2 * static_cast<std::size_t>(r)] = static_cast<double>(h >> 32);
    table[2 * static_cast<std::size_t>(r) + 1] = static_cast<double>(h & 0xffffffffu);
    comm_->all_reduce_sum(std::span<double>(table));
    ++stats_.checksums;
    stats_.checksum_bytes += static_cast<std::int64_t>(table.size() * sizeof(double));
    std::string differ;
    for (int q = 1; q < p; ++q)
      if (table[2 * static_cast<std::size_t>(q)] != table[0] ||
          table[2 * static_cast<std::size_t>(q) + 1] != table[1])
        differ += (differ.empty() ? "" : ",") + std::to_string(q);
    if (!differ.empty())
      throw CommError(fmt::format(
          "co-training replicas diverged at step {}: the parameters of rank(s) {{{}}} differ from rank 0's "
          "(checksum)",
          step_, differ));
  }

  /// Mean loss and accuracy of this rank's structure on `data` (local, no communication).
  EvalResult evaluate(const DatasetView& data, std::int64_t eval_batch = 1000) const {
    if (data.size() == 0) return {};
    const auto r = evaluate_structures<F, T>(
        model_config_, std::span<const T>(params_), data, {mask_.bits()},
        EvalAllOptions{.threads = threads_, .chunk = eval_batch, .method = EvalMethod::naive});
    return EvalResult{.loss = r[0].loss, .accuracy = r[0].accuracy, .samples = data.size()};
  }

  /// Collective: all epochs of TrainOptions over `train` (global batches of train.batch,
  /// the order of Trainer's with the same seed), warmup + cosine as Trainer. After each
  /// epoch: the mean training loss over the ranks (one small all-reduce) and this rank's
  /// structure on `val` (if not empty). `progress`: a bar on stderr (rank 0 only, say).
  CoTrainResult fit(const DatasetView& train, const DatasetView& val, bool progress = false,
                    const std::function<void(const EpochRecord&)>& on_epoch = {}) {
    if (train.size() < 1) throw InputError("training set is empty");
    if (train.input_dim() != model_config_.in_dim)
      throw InputError(fmt::format("training data has {} features per sample, the model expects {}",
                                   train.input_dim(), model_config_.in_dim));
    const std::int64_t per_epoch = (train.size() + train_.batch - 1) / train_.batch;
    const std::int64_t total = per_epoch * train_.epochs;
    const WarmupCosine schedule{train_.lr,
                                static_cast<std::int64_t>(std::floor(train_.warmup * double(total))), total,
                                train_.min_lr};
    CoTrainResult result;
    const auto start = ProgressBar::Clock::now();
    for (std::int64_t epoch = 0; epoch < train_.epochs; ++epoch) {
      const std::uint64_t epoch_seed = rng_();
      const Batcher<DatasetView> batches(train, train_.batch, epoch_seed, epoch);
      ProgressBar bar(fmt::format("epoch {}/{}", epoch + 1, train_.epochs), per_epoch, double(train_.batch),
                      "samples", progress ? stderr : nullptr);
      const auto t0 = ProgressBar::Clock::now();
      std::vector<double> loss_sum{0.0};
      for (std::int64_t b = 0; b < per_epoch; ++b) {
        const T loss = train_step(train, batches.indices(b), static_cast<T>(schedule.lr(step_)));
        loss_sum[0] += double(loss);
        bar.update(b + 1, fmt::format("loss {:.4f}", double(loss)));
      }
      if (epoch + 1 == train_.epochs) synchronize();
      comm_->all_reduce_average(std::span<double>(loss_sum));
      const double seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count();
      EpochRecord rec{epoch + 1, loss_sum[0] / double(per_epoch), in_sync() ? evaluate(val) : EvalResult{},
                      seconds};
      result.epochs.push_back(rec);
      if (on_epoch) on_epoch(rec);
    }
    verify_replicas();
    result.steps = step_;
    result.seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - start).count();
    result.comm = stats_;
    return result;
  }

 private:
  static constexpr std::uint64_t kTrainDomain = 0x747261696EULL;  // "train", as Trainer

  using AnyOptimizer = std::variant<AdamW<T>, Sgd<T>>;

  static AnyOptimizer make_optimizer(const ParamLayout& layout, const TrainOptions& o) {
    if (o.optimizer == "sgd")
      return Sgd<T>(
          layout, SgdConfig{.momentum = o.momentum, .nesterov = o.nesterov, .weight_decay = o.weight_decay});
    return AdamW<T>(layout, AdamWConfig{.weight_decay = o.weight_decay});
  }

  /// What must agree between the ranks (not the mask).
  std::string setup_description() const {
    std::string s = fmt::format("family {} | scalar {} bytes | model {} | train {} | co {} | layout",
                                F::describe(), sizeof(T), nlohmann::json(model_config_).dump(),
                                nlohmann::json(train_).dump(), nlohmann::json(co_).dump());
    for (const TensorSpec& t : model_.layout().tensors()) {
      s += fmt::format(" {}[", t.name);
      for (const auto d : t.shape) s += fmt::format("{},", d);
      s += fmt::format("]@{}", t.offset);
    }
    return s;
  }

  void all_reduce_average_timed(std::vector<T>& buffer) {
    const auto t0 = std::chrono::steady_clock::now();
    comm_->all_reduce_average(std::span<T>(buffer));
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++stats_.all_reduces;
    stats_.payload_bytes += static_cast<std::int64_t>(buffer.size() * sizeof(T));
  }

  void step_optimizer(T lr) {
    std::visit([&](auto& opt) { opt.step(std::span<T>(params_), std::span<const T>(grads_), lr); },
               optimizer_);
  }

  /// Pseudo-gradient anchor - params, averaged; params = anchor; one outer SGD step.
  void outer_step() {
    for (std::size_t i = 0; i < params_.size(); ++i) grads_[i] = anchor_[i] - params_[i];
    all_reduce_average_timed(grads_);
    std::copy(anchor_.begin(), anchor_.end(), params_.begin());
    outer_->step(std::span<T>(params_), std::span<const T>(grads_), static_cast<T>(co_.outer_lr));
    std::copy(params_.begin(), params_.end(), anchor_.begin());
    ++outer_steps_;
    synced_step_ = step_;
    if (co_.checksum_every > 0 && outer_steps_ % co_.checksum_every == 0) verify_replicas();
  }

  Comm* comm_;
  MlpConfig model_config_;
  mask_type mask_;
  TrainOptions train_;
  CoTrainOptions co_;
  int threads_ = 1;
  cpu::MlpModel<F, T> model_;
  std::vector<T> params_, grads_, anchor_;
  AnyOptimizer optimizer_;
  std::optional<Sgd<T>> outer_;
  std::mt19937_64 rng_;
  std::int64_t step_ = 0;
  std::int64_t outer_steps_ = 0;
  std::int64_t synced_step_ = 0;  // local SGD: the step of the last outer step
  CommStats stats_;
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> x_;  // (in_dim, share)
  std::vector<std::int32_t> y_;
};

}  // namespace additive
