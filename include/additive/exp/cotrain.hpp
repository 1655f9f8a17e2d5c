// Co-training (experiment 2): K ranks, one structure each, on one replicated weight set.
// Every rank holds the same parameters and optimizer state; per step each computes the
// gradient of its own structure on its share of the global batch, the gradients are
// averaged by one all-reduce, and every replica takes the same optimizer step, so the
// replicas stay bit-identical (checked by a periodic checksum). Local-SGD mode (DiLoCo /
// DiPaCo): each rank takes H inner steps on its own, then the ranks average the
// pseudo-gradient (anchor - params) and take one outer SGD step with Nesterov momentum.
// Works on any Communicator (threads, MPI). fit() can checkpoint (rank 0 writes the whole
// state) and resume() continues bit-identically. See docs/cotraining.md.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/structure.hpp"
#include "additive/cpu/mlp_model.hpp"
#include "additive/data/dataset.hpp"
#include "additive/dist/collectives.hpp"
#include "additive/dist/communicator.hpp"
#include "additive/exp/evaluate_all.hpp"
#include "additive/exp/progress.hpp"
#include "additive/exp/train.hpp"
#include "additive/io/checkpoint.hpp"
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
  /// Synchronous mode: run each gradient bucket's all-reduce on a helper thread as soon as
  /// the backward pass has finished that bucket, overlapped with the rest of the backward
  /// (communicators with dist::hands_over_threads only; the others reduce the buckets
  /// after the backward). The results are the same bits either way.
  bool overlap = true;

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

/// Where fit() saves its state and where it stops early. None of it changes the result:
/// a run stopped and resumed from its checkpoint ends bit-identical to one that was not.
struct CoRunOptions {
  std::filesystem::path checkpoint;    ///< rank 0 writes the state here after every epoch (empty: never)
  std::int64_t checkpoint_every = 0;   ///< and every N steps (0: at epoch ends only)
  std::int64_t stop_after_steps = -1;  ///< return once step() reaches N, checkpoint written (-1: never)
};

struct CoTrainResult {
  std::vector<EpochRecord> epochs;  ///< train_loss: mean over ranks; val: this rank's structure
  std::int64_t steps = 0;
  bool finished = false;  ///< false when stopped by stop_after_steps
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

/// One thread that runs jobs in submission order (a rank's bucket all-reduces while the
/// backward pass goes on). After a job throws, the later ones are dropped and wait()
/// rethrows the first exception.
class OrderedWorker {
 public:
  OrderedWorker() : thread_([this] { run(); }) {}
  OrderedWorker(const OrderedWorker&) = delete;
  OrderedWorker& operator=(const OrderedWorker&) = delete;
  ~OrderedWorker() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  void submit(std::function<void()> job) {
    {
      const std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    wake_.notify_all();
  }

  /// Blocks until every submitted job has run; rethrows the first failure.
  void wait() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [this] { return jobs_.empty() && !busy_; });
    if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_ and nothing left
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      if (!failure_) {
        busy_ = true;
        lock.unlock();
        std::exception_ptr error;
        try {
          job();
        } catch (...) {
          error = std::current_exception();
        }
        lock.lock();
        busy_ = false;
        if (error && !failure_) failure_ = error;
      }
      if (jobs_.empty()) idle_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  std::deque<std::function<void()>> jobs_;
  bool busy_ = false;
  bool stop_ = false;
  std::exception_ptr failure_;
  std::thread thread_;  // last: started after, and joined before, everything it uses
};

}  // namespace detail

/// Co-trains one structure per rank of `Comm` on shared, replicated weights of model M
/// (for example cpu::MlpModel<F, float>).
template <HostModel M, Communicator Comm>
class CoTrainer {
 public:
  using model_type = M;
  using family = typename M::family;
  using T = typename M::scalar_type;
  using mask_type = typename M::mask_type;
  using config_type = typename M::config_type;

  /// Collective: checks that every rank has the same family, model, training and
  /// co-training options (CommError naming the ranks otherwise; the masks may differ),
  /// then initialises the parameters from `train.seed` exactly as Trainer does.
  CoTrainer(Comm& comm, const config_type& model_config, mask_type mask, const TrainOptions& train,
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
        rng_(training_rng_seed(train.seed)) {
    dist::check_consistent(*comm_, "co-training setup", setup_description());
    static_assert(family::gates <= 53, "masks travel as doubles: at most 53 gates");
    const double own = static_cast<double>(mask.bits());
    for (const auto& m : dist::all_gather(*comm_, std::span<const double>(&own, 1)))
      masks_.push_back(static_cast<std::uint64_t>(m.front()));
    M::init_params(model_config_, training_init_seed(train.seed), params_);
    buckets_ = model_.ready_ranges();
    if (co_.overlap && co_.local_steps == 0 && dist::hands_over_threads<Comm>) worker_.emplace();
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
    const bool sync = co_.local_steps == 0;
    // Synchronous: the gradient is averaged bucket by bucket (head, blocks L-1..0, the
    // embedding: the order the backward pass finishes them), each bucket first scaled by
    // K n_r / B when the batch does not divide evenly. With a worker, a bucket's
    // all-reduce starts as soon as the backward has written it.
    const T w = !co_.same_batch && batch.size() % static_cast<std::size_t>(comm_->size()) != 0
                    ? static_cast<T>(double(mine.size()) * double(comm_->size()) / double(batch.size()))
                    : T(1);
    std::size_t next = 0;  // the next bucket to reduce
    const auto reduce = [this, w](std::pair<std::size_t, std::size_t> b) {
      const auto g = std::span<T>(grads_).subspan(b.first, b.second - b.first);
      if (w != T(1))
        for (auto& x : g) x *= w;
      all_reduce_average_timed(g);
    };
    const auto ready = [&](std::size_t begin, std::size_t end) {
      if (next >= buckets_.size() || buckets_[next] != std::pair{begin, end})
        throw RuntimeError("co-training: the backward pass reported gradient range [" +
                           std::to_string(begin) + ", " + std::to_string(end) + "), not the next bucket");
      const auto b = buckets_[next++];
      worker_->submit([reduce, b] { reduce(b); });
    };
    T loss = 0;
    if (mine.empty()) {
      std::fill(grads_.begin(), grads_.end(), T(0));
    } else {
      data.gather(mine, x_, y_);
      loss = model_.forward(mask_, params_, MatView<const T>(x_.data(), x_.rows(), x_.cols()), y_);
      if (!std::isfinite(static_cast<double>(loss)))
        throw InputError(fmt::format(
            "co-training diverged: loss is {} at step {} on rank {} ({})", double(loss), step_, comm_->rank(),
            resumed_from_.empty() ? std::string("lower --lr?")
                                  : fmt::format("resumed from checkpoint '{}'", resumed_from_.string())));
      if (sync && worker_) {
        try {
          model_.backward(params_, grads_, ready);
        } catch (...) {
          try {
            worker_->wait();  // the buckets already submitted use grads_: let them finish
          } catch (...) {
          }
          throw;
        }
      } else {
        model_.backward(params_, grads_);
      }
    }
    if (sync) {
      if (worker_) {
        for (; next < buckets_.size(); ++next) worker_->submit([reduce, b = buckets_[next]] { reduce(b); });
        worker_->wait();
      } else {
        for (const auto& b : buckets_) reduce(b);
      }
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
    const auto r = evaluate_structures<M>(
        model_config_, std::span<const T>(params_), data, {mask_.bits()},
        EvalAllOptions{.threads = threads_, .chunk = eval_batch, .method = EvalMethod::naive});
    return EvalResult{.loss = r[0].loss, .accuracy = r[0].accuracy, .samples = data.size()};
  }

  /// Collective: all epochs of TrainOptions over `train` (global batches of train.batch,
  /// the order of Trainer's with the same seed), warmup + cosine as Trainer. After each
  /// epoch: the mean training loss over the ranks (one small all-reduce) and this rank's
  /// structure on `val` (if not empty). `progress`: a bar on stderr (rank 0 only, say).
  /// `run`: checkpoints (save()) and an early stop; after resume() fit() goes on from
  /// the step the checkpoint was written at (result.epochs: the epochs finished now).
  CoTrainResult fit(const DatasetView& train, const DatasetView& val, bool progress = false,
                    const std::function<void(const EpochRecord&)>& on_epoch = {},
                    const CoRunOptions& run = {}) {
    if (train.size() < 1) throw InputError("training set is empty");
    if (train.input_dim() != model_config_.in_dim)
      throw InputError(fmt::format("training data has {} features per sample, the model expects {}",
                                   train.input_dim(), model_config_.in_dim));
    const std::int64_t per_epoch = (train.size() + train_.batch - 1) / train_.batch;
    const std::int64_t total = per_epoch * train_.epochs;
    per_epoch_ = per_epoch;
    if (step_ > total)
      throw InputError(fmt::format(
          "checkpoint '{}': metadata 'step' is {}, beyond the end of training ({} epochs of {} steps)",
          resumed_from_.string(), step_, train_.epochs, per_epoch));
    const WarmupCosine schedule{train_.lr,
                                static_cast<std::int64_t>(std::floor(train_.warmup * double(total))), total,
                                train_.min_lr};
    CoTrainResult result;
    const auto start = ProgressBar::Clock::now();
    auto finish = [&](bool finished) {
      result.steps = step_;
      result.finished = finished;
      result.seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - start).count();
      result.comm = stats_;
      return result;
    };
    const auto stop_now = [&] { return run.stop_after_steps >= 0 && step_ >= run.stop_after_steps; };
    while (step_ < total) {
      const std::int64_t epoch = step_ / per_epoch;
      if (step_ % per_epoch == 0) {
        epoch_seed_ = rng_();
        epoch_loss_sum_ = 0;
      }
      const Batcher<DatasetView> batches(train, train_.batch, epoch_seed_, epoch);
      ProgressBar bar(fmt::format("epoch {}/{}", epoch + 1, train_.epochs), per_epoch, double(train_.batch),
                      "samples", progress ? stderr : nullptr);
      const auto t0 = ProgressBar::Clock::now();
      for (std::int64_t b = step_ % per_epoch; b < per_epoch; ++b) {
        const T loss = train_step(train, batches.indices(b), static_cast<T>(schedule.lr(step_)));
        epoch_loss_sum_ += double(loss);
        bar.update(b + 1, fmt::format("loss {:.4f}", double(loss)));
        if (step_ % per_epoch == 0) break;  // the epoch's end: below
        if (!run.checkpoint.empty() &&
            (stop_now() || (run.checkpoint_every > 0 && step_ % run.checkpoint_every == 0)))
          save(run.checkpoint);
        if (stop_now()) return finish(false);
      }
      if (step_ == total) synchronize();
      std::vector<double> loss_sum{epoch_loss_sum_};
      comm_->all_reduce_average(std::span<double>(loss_sum));
      const double seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count();
      EpochRecord rec{epoch + 1, loss_sum[0] / double(per_epoch), in_sync() ? evaluate(val) : EvalResult{},
                      seconds};
      result.epochs.push_back(rec);
      if (on_epoch) on_epoch(rec);
      if (!run.checkpoint.empty()) save(run.checkpoint);
      if (stop_now() && step_ < total) return finish(false);
    }
    verify_replicas();
    return finish(true);
  }

  /// The settings a checkpoint must match to be resumed: family, scalar, model, training
  /// and co-training options, and the structure of every rank.
  [[nodiscard]] nlohmann::json settings() const {
    return {{"format", "additive-cotrain-1"},
            {"family", family::describe()},
            {"scalar_bytes", sizeof(T)},
            {"model", model_config_},
            {"train", train_},
            {"cotrain", co_},
            {"masks", masks_}};
  }

  /// Collective: rank 0 writes the whole co-training state to `path` atomically (a
  /// safetensors checkpoint, io/checkpoint.hpp): the parameters and inner optimizer state
  /// (in local SGD every rank's, which differ between outer steps), the anchor and outer
  /// momentum, the step, data position, generator, counters and settings(). An error
  /// (rank 0 cannot write) is thrown on every rank.
  void save(const std::filesystem::path& path) {
    const bool local = co_.local_steps > 0;
    const int p = comm_->size(), r = comm_->rank();
    const auto sums = dist::all_gather(*comm_, std::span<const double>(&epoch_loss_sum_, 1));
    // Local SGD: ranks 1.. send their parameters and inner state to rank 0 (broadcasts).
    std::vector<std::pair<std::string, std::vector<T>>> others;
    if (local)
      for (int q = 1; q < p; ++q)
        for (auto& [name, span] : rank_state()) {
          std::vector<T> buffer(span.size(), T(0));
          if (r == q) std::copy(span.begin(), span.end(), buffer.begin());
          comm_->broadcast(std::span<T>(buffer), q);
          if (r == 0) others.emplace_back(fmt::format("rank{}_{}", q, name), std::move(buffer));
        }
    std::exception_ptr failure;
    if (r == 0) {
      try {
        CheckpointState<T> state{&model_.layout(), params_, {}, {}};
        for (auto& [name, span] : optimizer_state())
          state.optimizer_state.emplace_back("inner_" + name, span);
        if (local) {
          state.optimizer_state.emplace_back("anchor", std::span<T>(anchor_));
          for (auto& [name, span] : outer_->state())
            state.optimizer_state.emplace_back("outer_" + name, span);
          for (auto& [name, buffer] : others) state.optimizer_state.emplace_back(name, std::span<T>(buffer));
        }
        std::vector<double> loss_sums;
        for (const auto& v : sums) loss_sums.push_back(v.front());
        state.metadata = {{"step", std::to_string(step_)},
                          {"epoch", std::to_string(per_epoch_ > 0 ? step_ / per_epoch_ : 0)},
                          {"rng", rng_to_string(rng_)},
                          {"epoch_seed", std::to_string(epoch_seed_)},
                          {"epoch_loss_sums", nlohmann::json(loss_sums).dump()},
                          {"outer_steps", std::to_string(outer_steps_)},
                          {"synced_step", std::to_string(synced_step_)},
                          {"comm", nlohmann::json(stats_).dump()},
                          {"settings", settings().dump()}};
        save_checkpoint(path, state);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    dist::raise_together(*comm_, failure);
  }

  /// Collective: restores a state save() wrote, read by rank 0 and broadcast. The
  /// settings must equal settings() (InputError naming the difference otherwise, on
  /// every rank); on any error nothing changes. fit() then continues bit-identically.
  void resume(const std::filesystem::path& path) {
    const bool local = co_.local_steps > 0;
    const int p = comm_->size(), r = comm_->rank();
    const std::size_t n = params_.size();
    // Rank 0's views: the shared buffers and, in local SGD, every other rank's.
    std::vector<std::pair<std::string, std::vector<T>>> buffers;
    buffers.emplace_back("", std::vector<T>(n));  // the parameters
    for (auto& [name, span] : optimizer_state()) buffers.emplace_back("inner_" + name, std::vector<T>(n));
    if (local) {
      buffers.emplace_back("anchor", std::vector<T>(n));
      for (auto& [name, span] : outer_->state()) buffers.emplace_back("outer_" + name, std::vector<T>(n));
      for (int q = 1; q < p; ++q)
        for (auto& [name, span] : rank_state())
          buffers.emplace_back(fmt::format("rank{}_{}", q, name), std::vector<T>(n));
    }
    std::vector<double>
        scalars;  // step, epoch seed (2 halves), outer steps, synced step, comm stats, loss sums
    std::optional<std::string> rng_text;
    std::exception_ptr failure;
    if (r == 0) {
      try {
        CheckpointState<T> state{&model_.layout(), std::span<T>(buffers[0].second), {}, {}};
        for (std::size_t i = 1; i < buffers.size(); ++i)
          state.optimizer_state.emplace_back(buffers[i].first, std::span<T>(buffers[i].second));
        load_checkpoint(path, state);
        scalars = parse_checkpoint_metadata(path, state.metadata, p);
        detail::check_optimizer_state<T>(CheckpointMetadata(path, state.metadata), state.optimizer_state);
        rng_text = state.metadata.at("rng");
      } catch (...) {
        failure = std::current_exception();
      }
    }
    dist::raise_together(*comm_, failure);
    scalars.resize(6 + 4 + static_cast<std::size_t>(p));
    comm_->broadcast(std::span<double>(scalars), 0);
    rng_text = dist::broadcast_text(*comm_, rng_text, 0);
    // The shared buffers go to every rank; rank q keeps its own rank{q}_* buffers.
    std::size_t shared = buffers.size();
    if (local) shared -= static_cast<std::size_t>(p - 1) * rank_state().size();
    for (std::size_t i = 0; i < buffers.size(); ++i) comm_->broadcast(std::span<T>(buffers[i].second), 0);
    // Commit.
    std::size_t next = 0;
    auto take = [&](std::span<T> into) {
      const auto& from = buffers[next++].second;
      std::copy(from.begin(), from.end(), into.begin());
    };
    take(params_);
    for (auto& [name, span] : optimizer_state()) take(span);
    if (local) {
      take(anchor_);
      for (auto& [name, span] : outer_->state()) take(span);
      if (r > 0) {  // this rank's own parameters and inner state, in place of rank 0's
        next = shared + static_cast<std::size_t>(r - 1) * rank_state().size();
        for (auto& [name, span] : rank_state()) take(span);
      }
    }
    step_ = static_cast<std::int64_t>(scalars[0]);
    epoch_seed_ = (static_cast<std::uint64_t>(scalars[1]) << 32) | static_cast<std::uint64_t>(scalars[2]);
    outer_steps_ = static_cast<std::int64_t>(scalars[3]);
    synced_step_ = static_cast<std::int64_t>(scalars[4]);
    epoch_loss_sum_ = scalars[10 + static_cast<std::size_t>(r)];
    rng_ = rng_from_string(*rng_text);
    std::visit([&](auto& opt) { opt.set_steps(step_); }, optimizer_);
    if (outer_) outer_->set_steps(outer_steps_);
    if (in_sync()) verify_replicas();
    stats_.all_reduces = static_cast<std::int64_t>(scalars[5]);
    stats_.payload_bytes = static_cast<std::int64_t>(scalars[6]);
    stats_.checksums = static_cast<std::int64_t>(scalars[7]);
    stats_.checksum_bytes = static_cast<std::int64_t>(scalars[8]);
    stats_.seconds = scalars[9];
    resumed_from_ = path;
  }

 private:
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
                                family::describe(), sizeof(T), nlohmann::json(model_config_).dump(),
                                nlohmann::json(train_).dump(), nlohmann::json(co_).dump());
    for (const TensorSpec& t : model_.layout().tensors()) {
      s += fmt::format(" {}[", t.name);
      for (const auto d : t.shape) s += fmt::format("{},", d);
      s += fmt::format("]@{}", t.offset);
    }
    return s;
  }

  OptimizerState<T> optimizer_state() {
    return std::visit([](auto& opt) { return OptimizerState<T>(opt.state()); }, optimizer_);
  }

  /// This rank's own state in local SGD (it differs between ranks until the outer step):
  /// its parameters and inner optimizer buffers.
  OptimizerState<T> rank_state() {
    auto s = optimizer_state();
    s.insert(s.begin(), {"params", std::span<T>(params_)});
    return s;
  }

  /// Rank 0, resume(): checks the checkpoint's settings and reads its counters as
  /// [step, epoch seed high and low halves, outer steps, synced step, the 5 comm
  /// counters, then the p ranks' epoch loss sums].
  std::vector<double> parse_checkpoint_metadata(const std::filesystem::path& path,
                                                const std::map<std::string, std::string>& meta, int p) const {
    const auto where = fmt::format("checkpoint '{}'", path.string());
    const CheckpointMetadata read(path, meta);
    const auto there = read.json("settings");
    const auto now = settings();
    if (there != now) {
      std::string diff;
      auto add = [&](const std::string& field, const nlohmann::json* a, const nlohmann::json& b) {
        diff += fmt::format("{}{} {} there, {} now", diff.empty() ? "" : "; ",
                            detail::printable(field, echo_limit), a != nullptr ? json_echo(*a) : "missing",
                            json_echo(b));
      };
      for (const auto& [key, value] : now.items()) {
        const nlohmann::json* old = there.is_object() && there.contains(key) ? &there.at(key) : nullptr;
        if (old != nullptr && *old == value) continue;
        if (old != nullptr && old->is_object() && value.is_object()) {
          for (const auto& [field, v] : value.items())
            if (!old->contains(field) || old->at(field) != v)
              add(key + "." + field, old->contains(field) ? &old->at(field) : nullptr, v);
        } else {
          add(key, old, value);
        }
      }
      throw InputError(fmt::format("cannot resume: {} was written with other co-training settings ({})",
                                   where, diff.empty() ? "extra fields there" : diff));
    }
    // Counters travel as doubles: at most 2^53. The step is checked against the run's
    // length in fit(), once the data fixes it.
    constexpr std::uint64_t exact = std::uint64_t{1} << 53;
    const std::uint64_t seed = read.counter("epoch_seed");
    const std::uint64_t step = read.counter("step", exact);
    const std::uint64_t outer_steps = read.counter("outer_steps", step);
    const std::uint64_t synced_step = read.counter("synced_step", step);
    std::vector<double> out{double(step), double(seed >> 32), double(seed & 0xffffffffu), double(outer_steps),
                            double(synced_step)};
    // A finite number >= 0 (NaN and Inf are written as null, which is refused here too).
    auto non_negative = [&](const char* key, const nlohmann::json& v, const std::string& field) {
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0 ||
          v.get<double>() > double(exact))
        read.fail(key, fmt::format("has {} {}, expected a finite number >= 0", field, json_echo(v)));
      return v.get<double>();
    };
    const auto c = read.json("comm");
    if (!c.is_object()) read.fail("comm", "is not a JSON object");
    for (const char* key : {"all_reduces", "payload_bytes", "checksums", "checksum_bytes", "seconds"}) {
      if (!c.contains(key)) read.fail("comm", fmt::format("has no '{}'", key));
      out.push_back(non_negative("comm", c.at(key), fmt::format("'{}'", key)));
    }
    const auto sums = read.json("epoch_loss_sums");
    if (!sums.is_array() || sums.size() != static_cast<std::size_t>(p))
      read.fail("epoch_loss_sums", fmt::format("is not a list of {} numbers, one per rank", p));
    for (std::size_t q = 0; q < sums.size(); ++q)
      out.push_back(non_negative("epoch_loss_sums", sums[q], fmt::format("rank {}'s", q)));
    return out;
  }

  void all_reduce_average_timed(std::vector<T>& buffer) { all_reduce_average_timed(std::span<T>(buffer)); }
  void all_reduce_average_timed(std::span<T> buffer) {
    const auto t0 = std::chrono::steady_clock::now();
    comm_->all_reduce_average(buffer);
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
  config_type model_config_;
  mask_type mask_;
  TrainOptions train_;
  CoTrainOptions co_;
  int threads_ = 1;
  M model_;
  std::vector<T> params_, grads_, anchor_;
  AnyOptimizer optimizer_;
  std::optional<Sgd<T>> outer_;
  std::mt19937_64 rng_;
  std::int64_t step_ = 0;
  std::int64_t outer_steps_ = 0;
  std::int64_t synced_step_ = 0;        // local SGD: the step of the last outer step
  std::int64_t per_epoch_ = 0;          // steps per epoch of the current fit()
  std::uint64_t epoch_seed_ = 0;        // the data order of the current epoch
  double epoch_loss_sum_ = 0;           // this rank's losses so far in the current epoch
  std::filesystem::path resumed_from_;  // the checkpoint resume() read (for fit()'s checks)
  std::vector<std::uint64_t> masks_;    // every rank's structure, in rank order
  CommStats stats_;
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> x_;  // (in_dim, share)
  std::vector<std::int32_t> y_;
  std::vector<std::pair<std::size_t, std::size_t>> buckets_;  // M's ready ranges, in reduction order
  std::optional<detail::OrderedWorker> worker_;               // runs the bucket all-reduces (overlap)
};

}  // namespace additive
