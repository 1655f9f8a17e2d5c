// Training one structure of any Model (nn/model.hpp): seeded initialisation, epochs over a shuffled
// training view, AdamW or SGD under a warmup + cosine schedule, validation each epoch,
// atomic checkpoints, and a resume that reproduces the uninterrupted run bit for bit.
//
// Position in the run is the step count alone: step s is batch s % B of epoch s / B, and
// the order of epoch e is drawn from a seed the trainer's RNG gives at the epoch's start
// (saved in the checkpoint with the RNG), so nothing has to be replayed on resume.
//
// Stochastic gating (experiment 3, GatingOptions): each step draws its structure (one
// per batch, or one per sample) from a generator seeded by (seed, step) alone, so the
// draws need no saved state either, and the data order and initial weights are those of
// the ungated run with the same seed. See docs/stochastic-gating.md.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/seed.hpp"
#include "additive/core/structure.hpp"
#include "additive/cpu/mlp_model.hpp"
#include "additive/cpu/per_sample.hpp"
#include "additive/data/dataset.hpp"
#include "additive/exp/progress.hpp"
#include "additive/io/checkpoint.hpp"
#include "additive/nn/model.hpp"
#include "additive/optim/adamw.hpp"
#include "additive/optim/schedule.hpp"
#include "additive/optim/sgd.hpp"
#include "additive/stats/runs.hpp"

namespace additive {

/// Everything that decides the numbers of a run. Checkpoints store it; resume requires
/// the same values (threads and file paths are free to change: they do not change results).
struct TrainOptions {
  std::int64_t epochs = 1;
  std::int64_t batch = 128;
  std::string optimizer = "adamw";  ///< "adamw" or "sgd"
  double lr = 1e-3;
  double min_lr = 0.0;
  double warmup = 0.05;  ///< fraction of all steps spent warming up
  double weight_decay = 0.01;
  double momentum = 0.9;  ///< SGD only
  bool nesterov = false;  ///< SGD only
  std::uint64_t seed = 0;

  void validate() const {
    auto bad = [](const std::string& what) { throw InputError("training options: " + what); };
    if (epochs < 1) bad("epochs must be >= 1, got " + std::to_string(epochs));
    if (batch < 1) bad("batch must be >= 1, got " + std::to_string(batch));
    if (optimizer != "adamw" && optimizer != "sgd")
      bad("optimizer must be 'adamw' or 'sgd', got '" + optimizer + "'");
    if (!(lr > 0) || !std::isfinite(lr)) bad("lr must be a positive number");
    if (!(min_lr >= 0) || min_lr > lr) bad("min_lr must be in [0, lr]");
    if (!(warmup >= 0 && warmup <= 1)) bad("warmup must be a fraction in [0, 1]");
    if (!(weight_decay >= 0)) bad("weight decay must be >= 0");
    if (!(momentum >= 0 && momentum < 1)) bad("momentum must be in [0, 1)");
  }
};

inline void to_json(nlohmann::json& j, const TrainOptions& o) {
  j = nlohmann::json{{"epochs", o.epochs},
                     {"batch", o.batch},
                     {"optimizer", o.optimizer},
                     {"lr", o.lr},
                     {"min_lr", o.min_lr},
                     {"warmup", o.warmup},
                     {"weight_decay", o.weight_decay},
                     {"momentum", o.momentum},
                     {"nesterov", o.nesterov},
                     {"seed", o.seed}};
}

/// Stochastic gating: every gate is kept (active) independently with probability p_t,
/// drawn afresh each step (per_sample = false: one structure per batch) or for each
/// sample of each step (per_sample = true). p_t goes linearly from p (step 0) to p_end
/// (the last step), one value per step; without p_end it stays p.
struct GatingOptions {
  double p = 1.0;
  std::optional<double> p_end{};
  bool per_sample = false;

  void validate() const {
    auto check = [](const char* name, double v) {
      if (!(v > 0 && v <= 1))
        throw InputError(fmt::format("gating: {} must be a keep-probability in (0, 1], got {}", name, v));
    };
    check("p", p);
    if (p_end) check("p_end", *p_end);
  }

  /// Keep-probability of step `step` of `total`.
  [[nodiscard]] double at(std::int64_t step, std::int64_t total) const noexcept {
    if (!p_end || total <= 1) return p;
    return p + (*p_end - p) * (double(step) / double(total - 1));
  }
};

inline void to_json(nlohmann::json& j, const GatingOptions& o) {
  j = nlohmann::json{{"p", o.p},
                     {"p_end", o.p_end ? nlohmann::json(*o.p_end) : nlohmann::json(nullptr)},
                     {"per_sample", o.per_sample}};
}

/// A mask whose gates are each kept with probability p: gate i is active when the i-th
/// uniform draw u in [0, 1) (53 bits) is below p, so p = 1 keeps every gate.
template <class M>
M draw_mask(std::mt19937_64& rng, double p) {
  std::uint64_t bits = 0;
  for (int i = 0; i < M::size; ++i)
    if (static_cast<double>(rng() >> 11) * 0x1.0p-53 < p) bits |= std::uint64_t{1} << i;
  return M(bits);
}

/// How a run executes; none of it changes the numbers.
struct RunOptions {
  int threads = 1;
  std::int64_t eval_batch = 1000;
  std::filesystem::path checkpoint{};  ///< written atomically after every epoch (empty: never)
  std::int64_t checkpoint_every = 0;   ///< also every this many steps (0: only per epoch)
  std::int64_t stop_after_steps = -1;  ///< stop early once this many steps are done (>= 0), as if interrupted
  bool progress = true;                ///< progress bar on stderr
};

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  std::int64_t samples = 0;
  /// Sample i of the view classified right (bit i); what paired comparisons of structures
  /// need (stats/paired.hpp). Trainer::evaluate fills it; empty where not recorded.
  stats::CorrectBits correct{};
};

struct EpochRecord {
  std::int64_t epoch = 0;  ///< 1-based
  double train_loss = 0;   ///< mean over the epoch's batches
  EvalResult val;
  double seconds = 0;
};

struct TrainResult {
  std::vector<EpochRecord> epochs;
  std::int64_t steps = 0;
  bool finished = false;          ///< false when stopped early by stop_after_steps
  double samples_per_second = 0;  ///< training throughput of this run (not counting evaluation)
};

/// Trains one structure of a model M (a HostModel: built from its config and a thread
/// count), for example cpu::MlpModel<F, float>.
template <HostModel M>
class Trainer {
 public:
  using model_type = M;
  using family = typename M::family;
  using T = typename M::scalar_type;
  using mask_type = typename M::mask_type;
  using config_type = typename M::config_type;

  /// With `gating`, the training steps draw their structures (see GatingOptions) and
  /// `mask` is the structure the per-epoch validation evaluates. Per-sample gating needs a
  /// PerSampleModel (else InputError).
  Trainer(const config_type& model_config, mask_type mask, const TrainOptions& train,
          const RunOptions& run = {}, std::optional<GatingOptions> gating = std::nullopt)
      : model_config_(model_config),
        mask_(mask),
        train_(train),
        run_(run),
        gating_(gating),
        model_((train.validate(), gating ? gating->validate() : void(), model_config), run.threads),
        params_(model_.layout().total()),
        grads_(model_.layout().total()),
        optimizer_(make_optimizer(model_.layout(), train)),
        rng_(training_rng_seed(train.seed)) {
    M::init_params(model_config_, training_init_seed(train.seed), params_);
    // The optimizer step runs on the model's threads too (results do not depend on it).
    std::visit(
        [&](auto& opt) {
          if constexpr (requires { opt.set_threads(1); }) opt.set_threads(run.threads);
        },
        optimizer_);
    if (gating_ && gating_->per_sample) {
      if constexpr (PerSampleModel<M>)
        per_sample_ = std::make_unique<PerSample>(model_config_, run.threads);
      else
        throw InputError(fmt::format("family {} has no per-sample gating", family::describe()));
    }
  }

  [[nodiscard]] std::span<T> params() noexcept { return params_; }
  [[nodiscard]] std::span<const T> params() const noexcept { return params_; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return model_.layout(); }
  [[nodiscard]] std::int64_t step() const noexcept { return step_; }
  [[nodiscard]] M& model() noexcept { return model_; }

  /// Trains until all epochs are done (or stop_after_steps). `on_epoch` sees each record.
  TrainResult fit(const DatasetView& train, const DatasetView& val,
                  const std::function<void(const EpochRecord&)>& on_epoch = {}) {
    if (train.size() < 1) throw InputError("training set is empty");
    if (train.input_dim() != model_.input_dim())
      throw InputError(fmt::format("training data has {} features per sample, the model expects {}",
                                   train.input_dim(), model_.input_dim()));
    const std::int64_t per_epoch = (train.size() + train_.batch - 1) / train_.batch;
    if (per_epoch > (std::int64_t{1} << 53) / train_.epochs)
      throw InputError(fmt::format("{} epochs of {} steps is too many steps", train_.epochs, per_epoch));
    per_epoch_ = per_epoch;
    const std::int64_t total = per_epoch * train_.epochs;
    if (step_ > total)
      throw InputError(fmt::format(
          "checkpoint '{}': metadata 'step' is {}, beyond the end of training ({} epochs of {} steps)",
          resumed_from_.string(), step_, train_.epochs, per_epoch));
    const WarmupCosine schedule{train_.lr,
                                static_cast<std::int64_t>(std::floor(train_.warmup * double(total))), total,
                                train_.min_lr};
    TrainResult result;
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> x;  // (in_dim, batch)
    std::vector<std::int32_t> y;
    double train_seconds = 0;
    std::int64_t trained_samples = 0;

    while (step_ < total) {
      const std::int64_t epoch = step_ / per_epoch;
      if (step_ % per_epoch == 0) {
        epoch_seed_ = rng_();
        epoch_loss_sum_ = 0;
      }
      const Batcher<DatasetView> batches(train, train_.batch, epoch_seed_, epoch);
      ProgressBar bar(fmt::format("epoch {}/{}", epoch + 1, train_.epochs), per_epoch, double(train_.batch),
                      "samples", run_.progress ? stderr : nullptr);
      const auto t0 = ProgressBar::Clock::now();
      for (std::int64_t b = step_ % per_epoch; b < per_epoch; ++b) {
        batches.batch(b, x, y);
        const MatView<const T> xv(x.data(), x.rows(), x.cols());
        const T loss = forward_step(xv, y, total);
        if (!std::isfinite(static_cast<double>(loss)))
          throw InputError(fmt::format(
              "training diverged: loss is {} at step {} ({})", double(loss), step_,
              resumed_from_.empty() ? std::string("lower --lr?")
                                    : fmt::format("resumed from checkpoint '{}'", resumed_from_.string())));
        if constexpr (PerSampleModel<M>) {
          if (per_sample_step_)
            per_sample_->backward(params_, grads_);
          else
            model_.backward(params_, grads_);
        } else {
          model_.backward(params_, grads_);
        }
        std::visit([&](auto& opt) { opt.step(params_, grads_, static_cast<T>(schedule.lr(step_))); },
                   optimizer_);
        epoch_loss_sum_ += double(loss);
        trained_samples += x.cols();
        ++step_;
        bar.update(b + 1, fmt::format("loss {:.4f}", double(loss)));
        const bool stop = run_.stop_after_steps >= 0 && step_ >= run_.stop_after_steps;
        if (!run_.checkpoint.empty() && run_.checkpoint_every > 0 && step_ % run_.checkpoint_every == 0 &&
            step_ % per_epoch != 0)
          save(run_.checkpoint);
        if (stop && step_ % per_epoch != 0) {
          if (!run_.checkpoint.empty()) save(run_.checkpoint);
          train_seconds += std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count();
          result.steps = step_;
          result.samples_per_second = train_seconds > 0 ? double(trained_samples) / train_seconds : 0;
          return result;
        }
      }
      const double seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count();
      train_seconds += seconds;
      EpochRecord rec{epoch + 1, epoch_loss_sum_ / double(per_epoch), evaluate(val), seconds};
      result.epochs.push_back(rec);
      if (on_epoch) on_epoch(rec);
      if (!run_.checkpoint.empty()) save(run_.checkpoint);
      if (run_.stop_after_steps >= 0 && step_ >= run_.stop_after_steps && step_ < total) {
        result.steps = step_;
        result.samples_per_second = train_seconds > 0 ? double(trained_samples) / train_seconds : 0;
        return result;
      }
    }
    result.steps = step_;
    result.finished = true;
    result.samples_per_second = train_seconds > 0 ? double(trained_samples) / train_seconds : 0;
    return result;
  }

  /// Mean loss and accuracy of the current parameters on a view (in fixed batches).
  EvalResult evaluate(const DatasetView& data) {
    EvalResult r;
    if (data.size() == 0) return r;
    const Batcher<DatasetView> batches(data, run_.eval_batch, 0, 0, BatchOptions{.shuffle = false});
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> x;
    std::vector<std::int32_t> y;
    double loss_sum = 0;
    std::int64_t correct = 0;
    r.correct = stats::CorrectBits(static_cast<std::size_t>(data.size()));
    for (std::int64_t b = 0; b < batches.num_batches(); ++b) {
      batches.batch(b, x, y);
      const T loss = model_.forward(mask_, params_, MatView<const T>(x.data(), x.rows(), x.cols()), y);
      loss_sum += double(loss) * double(x.cols());
      const auto logits = model_.logits();  // (classes, batch)
      for (Index j = 0; j < logits.cols; ++j) {
        Index best = 0;
        for (Index c = 1; c < logits.rows; ++c)
          if (logits(c, j) > logits(best, j)) best = c;
        const bool right = best == y[static_cast<std::size_t>(j)];
        correct += right ? 1 : 0;
        if (right) r.correct.set(static_cast<std::size_t>(b * run_.eval_batch + j), true);  // unshuffled
      }
    }
    r.samples = data.size();
    r.loss = loss_sum / double(r.samples);
    r.accuracy = double(correct) / double(r.samples);
    return r;
  }

  /// Writes the whole training state atomically.
  void save(const std::filesystem::path& path) {
    CheckpointState<T> state{&model_.layout(), params_, optimizer_state(), metadata()};
    save_checkpoint(path, state);
  }

  /// Restores a state written by save(); the family, widths, structure and training
  /// options must be the ones this trainer was built with. On error nothing changes.
  void resume(const std::filesystem::path& path) {
    std::vector<T> params(params_.size());
    std::vector<std::vector<T>> opt_buffers;
    std::vector<std::pair<std::string, std::span<T>>> opt_views;
    for (auto& [name, span] : optimizer_state()) {
      opt_buffers.emplace_back(span.size());
      opt_views.emplace_back(name, opt_buffers.back());
    }
    CheckpointState<T> state{&model_.layout(), params, opt_views, {}};
    load_checkpoint(path, state);
    const auto& meta = state.metadata;
    const CheckpointMetadata read(path, meta);
    auto need = [&](const char* key) -> const std::string& { return read.text(key); };
    auto mismatch = [&](const std::string& what, const std::string& file, const std::string& now) {
      throw InputError("checkpoint '" + path.string() + "' was written for " + what + " " +
                       detail::printable(file, 40) + ", this run uses " + now);
    };
    const auto expected = metadata();
    for (const char* key : {"family", "model", "mask"})
      if (need(key) != expected.at(key)) mismatch(key, need(key), expected.at(key));
    const auto file_gating = meta.find("gating");
    const auto now_gating = expected.find("gating");
    const std::string off = "none";
    const auto& gating_there = file_gating == meta.end() ? off : file_gating->second;
    const auto& gating_now = now_gating == expected.end() ? off : now_gating->second;
    if (gating_there != gating_now) mismatch("gating", gating_there, gating_now);
    if (need("train") != expected.at("train"))
      mismatch("training options", need("train"), expected.at("train"));
    // The step is checked against the run's length in fit(), once the data fixes it.
    const auto step = read.counter("step", std::uint64_t{1} << 53);
    const auto epoch_seed = read.counter("epoch_seed");
    const double loss_sum = read.number("epoch_loss_sum", 0, std::numeric_limits<double>::max());
    auto rng = rng_from_string(need("rng"));
    detail::check_optimizer_state<T>(read, opt_views);
    // Everything parsed: commit.
    std::copy(params.begin(), params.end(), params_.begin());
    auto live = optimizer_state();
    for (std::size_t i = 0; i < live.size(); ++i)
      std::copy(opt_buffers[i].begin(), opt_buffers[i].end(), live[i].second.begin());
    std::visit([&](auto& opt) { opt.set_steps(static_cast<std::int64_t>(step)); }, optimizer_);
    step_ = static_cast<std::int64_t>(step);
    epoch_seed_ = epoch_seed;
    epoch_loss_sum_ = loss_sum;
    rng_ = rng;
    resumed_from_ = path;
  }

 private:
  using PerSample = capability_or_none_t<per_sample_model, M>;

  /// The forward pass of one training step: the fixed structure, or the drawn ones.
  T forward_step(MatView<const T> xv, std::span<const std::int32_t> y, std::int64_t total) {
    per_sample_step_ = false;
    if (!gating_) return model_.forward(mask_, params_, xv, y);
    std::mt19937_64 gen(gate_seed(train_.seed, step_));
    const double p = gating_->at(step_, total);
    if (!gating_->per_sample) return model_.forward(draw_mask<mask_type>(gen, p), params_, xv, y);
    sample_masks_.resize(static_cast<std::size_t>(xv.cols));
    for (auto& m : sample_masks_) m = draw_mask<mask_type>(gen, p);
    per_sample_step_ = true;
    if constexpr (PerSampleModel<M>)
      return per_sample_->forward(sample_masks_, params_, xv, y);
    else
      throw RuntimeError("per-sample gating without a per-sample path");  // refused in the constructor
  }

  using AnyOptimizer = std::variant<AdamW<T>, Sgd<T>>;

  static AnyOptimizer make_optimizer(const ParamLayout& layout, const TrainOptions& o) {
    if (o.optimizer == "sgd")
      return Sgd<T>(
          layout, SgdConfig{.momentum = o.momentum, .nesterov = o.nesterov, .weight_decay = o.weight_decay});
    return AdamW<T>(layout, AdamWConfig{.weight_decay = o.weight_decay});
  }

  std::vector<std::pair<std::string, std::span<T>>> optimizer_state() {
    return std::visit([](auto& opt) { return OptimizerState<T>(opt.state()); }, optimizer_);
  }

  std::map<std::string, std::string> metadata() const {
    auto meta = base_metadata();
    if (gating_) meta["gating"] = nlohmann::json(*gating_).dump();
    return meta;
  }

  std::map<std::string, std::string> base_metadata() const {
    return {{"step", std::to_string(step_)},
            {"epoch", std::to_string(per_epoch_ > 0 ? step_ / per_epoch_ : 0)},  // completed epochs
            {"rng", rng_to_string(rng_)},
            {"epoch_seed", std::to_string(epoch_seed_)},
            {"epoch_loss_sum", fmt::format("{:.17g}", epoch_loss_sum_)},
            {"family", family::describe()},
            {"mask", to_hex(mask_)},
            {"structure", family::to_string(mask_)},
            {"model", nlohmann::json(model_config_).dump()},
            {"train", nlohmann::json(train_).dump()}};
  }

  config_type model_config_;
  mask_type mask_;
  TrainOptions train_;
  RunOptions run_;
  std::optional<GatingOptions> gating_;
  M model_;
  std::unique_ptr<PerSample> per_sample_;
  std::vector<mask_type> sample_masks_;
  bool per_sample_step_ = false;
  std::vector<T> params_, grads_;
  AnyOptimizer optimizer_;
  std::mt19937_64 rng_;
  std::int64_t step_ = 0;
  std::int64_t per_epoch_ = 0;
  std::uint64_t epoch_seed_ = 0;
  double epoch_loss_sum_ = 0;
  std::filesystem::path resumed_from_{};  ///< the checkpoint resume() read (for fit()'s checks)
};

}  // namespace additive
