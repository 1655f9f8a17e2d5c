// Experiment 4, mixture of structure experts (phase 1: the engine). The experts are the
// structures (gate masks) of ONE shared weight set; a router, a small MLP on the raw input,
// picks one structure per sample. The engine computes every candidate's per-sample loss
// and correctness on the shared weights, the per-sample oracle and the cost-aware oracle,
// trains the router (two exact objectives: a soft target from the losses, or the expected
// loss plus a cost penalty), and compares the router with dense, the best single
// structure, random per-sample routing and the oracles on a held-out split. Routed
// execution groups the samples by structure and runs each group with its structure's own
// plan. Outputs: moe.json, moe.csv and moe.svg, each written atomically. See docs/moe.md.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/seed.hpp"
#include "additive/cpu/parallel.hpp"
#include "additive/data/dataset.hpp"
#include "additive/exp/train.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/nn/model.hpp"
#include "additive/optim/adamw.hpp"
#include "additive/report/format.hpp"
#include "additive/report/svg.hpp"
#include "additive/report/table.hpp"

namespace additive {

namespace moe_detail {
/// A uniform double in [0, 1) from 53 bits of the generator (portable, unlike std's).
inline double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

/// Softmax cross-entropy of one column (in double) and whether its first largest entry is
/// the label.
template <class T>
std::pair<double, bool> column_loss(MatView<const T> logits, Index j, std::int32_t label) {
  Index best = 0;
  double mx = double(logits(0, j));
  for (Index c = 1; c < logits.rows; ++c)
    if (logits(c, j) > logits(best, j)) {
      best = c;
      mx = double(logits(c, j));
    }
  double sum = 0;
  for (Index c = 0; c < logits.rows; ++c) sum += std::exp(double(logits(c, j)) - mx);
  return {mx + std::log(sum) - double(logits(label, j)), best == label};
}

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
}  // namespace moe_detail

// ---------------------------------------------------------------------------------------
// 1. Per-sample losses of every candidate on the shared weights
// ---------------------------------------------------------------------------------------

/// K candidates x N samples: each sample's softmax cross-entropy under each candidate
/// structure and whether that structure classifies it right (first largest logit).
struct SampleTable {
  std::vector<std::uint64_t> masks;   ///< (K) the candidates, in the caller's order
  std::int64_t samples = 0;           ///< N
  std::vector<double> loss;           ///< (K * N), candidate k's sample i at k * N + i
  std::vector<std::uint8_t> correct;  ///< (K * N), 1 where classified right
  std::vector<std::int32_t> labels;   ///< (N)

  [[nodiscard]] std::size_t candidates() const noexcept { return masks.size(); }
  [[nodiscard]] std::size_t at(std::size_t k, std::int64_t i) const noexcept {
    return k * static_cast<std::size_t>(samples) + static_cast<std::size_t>(i);
  }
  [[nodiscard]] double loss_of(std::size_t k, std::int64_t i) const noexcept { return loss[at(k, i)]; }
  [[nodiscard]] bool correct_of(std::size_t k, std::int64_t i) const noexcept {
    return correct[at(k, i)] != 0;
  }
};

namespace moe_detail {
template <HostModel M>
void check_model_data(const M& model, std::span<const typename M::scalar_type> params,
                      const DatasetView& data, std::string_view who) {
  if (const auto need = model.layout().total(); params.size() != need)
    throw InputError(
        fmt::format("{}: parameter buffer has {} elements, the model needs {}", who, params.size(), need));
  if (data.size() == 0) throw InputError(fmt::format("{}: the data set is empty", who));
  if (data.input_dim() != model.input_dim())
    throw InputError(fmt::format("{}: the data have {} features, the model expects {}", who, data.input_dim(),
                                 model.input_dim()));
  if (data.num_classes() > model.num_classes())
    throw InputError(fmt::format("{}: the data have {} classes, the model has {}", who, data.num_classes(),
                                 model.num_classes()));
}
}  // namespace moe_detail

/// Every sample's loss and correctness under every mask of `masks`, on parameters
/// `params` (M's layout). Chunked forward passes of each structure; the masks are dealt to
/// `threads` threads, each with its own single-threaded model, and every cell is written by
/// one thread with no reduction, so the table is bit-identical for any thread count.
template <HostModel M>
SampleTable per_sample_losses(const typename M::config_type& config,
                              std::span<const typename M::scalar_type> params, const DatasetView& data,
                              const std::vector<std::uint64_t>& masks, int threads = 1, Index chunk = 256) {
  using T = typename M::scalar_type;
  using mask_type = typename M::mask_type;
  if (masks.empty()) throw InputError("per_sample_losses: no structures to evaluate");
  if (threads < 1) throw InputError("per_sample_losses: threads must be >= 1");
  if (chunk < 1) throw InputError("per_sample_losses: chunk must be >= 1");
  std::vector<mask_type> ms;
  for (const auto b : masks) ms.push_back(mask_type(b));  // InputError on bits beyond the gates
  moe_detail::check_model_data(M(config, 1), params, data, "per_sample_losses");
  SampleTable t;
  t.masks = masks;
  t.samples = data.size();
  const auto n = static_cast<std::size_t>(t.samples);
  t.loss.assign(masks.size() * n, 0.0);
  t.correct.assign(masks.size() * n, 0);
  t.labels.resize(n);
  for (std::int64_t i = 0; i < t.samples; ++i) t.labels[static_cast<std::size_t>(i)] = data.label(i);
  cpu::parallel_tasks(threads, static_cast<Index>(masks.size()), [&](Index task) {
    const auto k = static_cast<std::size_t>(task);
    M model(config, 1);
    moe_detail::Matrix<T> x;
    std::vector<std::int32_t> y;
    std::vector<std::int64_t> pos;
    for (std::int64_t c0 = 0; c0 < t.samples; c0 += chunk) {
      const std::int64_t m = std::min<std::int64_t>(chunk, t.samples - c0);
      pos.resize(static_cast<std::size_t>(m));
      for (std::int64_t i = 0; i < m; ++i) pos[static_cast<std::size_t>(i)] = c0 + i;
      data.gather(pos, x, y);
      (void)model.forward(ms[k], params, MatView<const T>(x.data(), x.rows(), x.cols()), y);
      const auto logits = model.logits();
      for (std::int64_t i = 0; i < m; ++i) {
        const auto [l, ok] = moe_detail::column_loss(logits, i, y[static_cast<std::size_t>(i)]);
        t.loss[t.at(k, c0 + i)] = l;
        t.correct[t.at(k, c0 + i)] = ok ? 1 : 0;
      }
    }
  });
  return t;
}

/// The forward FLOPs per sample of each mask (M::cost at batch `batch`): the router's prices.
template <HostModel M>
std::vector<double> structure_costs(const typename M::config_type& config,
                                    const std::vector<std::uint64_t>& masks, Index batch = 1) {
  std::vector<double> c;
  for (const auto b : masks) c.push_back(M::cost(config, typename M::mask_type(b), batch).flops_per_sample);
  return c;
}

// ---------------------------------------------------------------------------------------
// 2. Oracles. An assignment gives each sample the index of its candidate (into the masks).
// ---------------------------------------------------------------------------------------

using Assignment = std::vector<std::int32_t>;

/// Per sample, the candidate with the lowest loss (ties: the lower index).
inline Assignment oracle_assignment(const SampleTable& t) {
  Assignment a(static_cast<std::size_t>(t.samples), 0);
  for (std::int64_t i = 0; i < t.samples; ++i) {
    std::size_t best = 0;
    for (std::size_t k = 1; k < t.candidates(); ++k)
      if (t.loss_of(k, i) < t.loss_of(best, i)) best = k;
    a[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(best);
  }
  return a;
}

/// Per sample, the cheapest candidate that classifies it right (ties: lower loss, then
/// lower index); where none does, the lowest-loss candidate (ties: lower index).
inline Assignment cost_aware_oracle_assignment(const SampleTable& t, std::span<const double> cost) {
  if (cost.size() != t.candidates())
    throw InputError(
        fmt::format("cost-aware oracle: {} costs for {} candidates", cost.size(), t.candidates()));
  Assignment a = oracle_assignment(t);
  for (std::int64_t i = 0; i < t.samples; ++i) {
    std::optional<std::size_t> best;
    for (std::size_t k = 0; k < t.candidates(); ++k) {
      if (!t.correct_of(k, i)) continue;
      if (!best || cost[k] < cost[*best] || (cost[k] == cost[*best] && t.loss_of(k, i) < t.loss_of(*best, i)))
        best = k;
    }
    if (best) a[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(*best);
  }
  return a;
}

// ---------------------------------------------------------------------------------------
// 4 (first half). A strategy: an assignment scored on a table.
// ---------------------------------------------------------------------------------------

struct StrategyResult {
  std::string name;
  bool yardstick = false;  ///< computed on the test split itself (the oracles): not a method
  double accuracy = 0;
  double loss = 0;                 ///< mean per-sample loss
  double cost = 0;                 ///< mean cost per sample
  std::vector<std::int64_t> load;  ///< (K) samples given to each candidate
  bool operator==(const StrategyResult&) const = default;
};

/// Accuracy, mean loss, mean cost and load of assignment `a` on table `t`.
inline StrategyResult evaluate_assignment(const SampleTable& t, std::span<const std::int32_t> a,
                                          std::span<const double> cost, std::string name = {},
                                          bool yardstick = false) {
  if (a.size() != static_cast<std::size_t>(t.samples))
    throw InputError(fmt::format("assignment of {} samples for a table of {}", a.size(), t.samples));
  if (cost.size() != t.candidates())
    throw InputError(fmt::format("{} costs for {} candidates", cost.size(), t.candidates()));
  StrategyResult r{std::move(name), yardstick, 0, 0, 0, std::vector<std::int64_t>(t.candidates(), 0)};
  std::int64_t correct = 0;
  double loss = 0, c = 0;
  for (std::int64_t i = 0; i < t.samples; ++i) {
    const auto k = a[static_cast<std::size_t>(i)];
    if (k < 0 || static_cast<std::size_t>(k) >= t.candidates())
      throw InputError(
          fmt::format("assignment: sample {} has candidate {}, expected < {}", i, k, t.candidates()));
    const auto ku = static_cast<std::size_t>(k);
    correct += t.correct_of(ku, i) ? 1 : 0;
    loss += t.loss_of(ku, i);
    c += cost[ku];
    ++r.load[ku];
  }
  const auto n = double(t.samples);
  r.accuracy = double(correct) / n;
  r.loss = loss / n;
  r.cost = c / n;
  return r;
}

/// The candidate with the highest accuracy on `t` (ties: lower mean loss, then lower index).
inline std::size_t best_single_candidate(const SampleTable& t) {
  std::size_t best = 0;
  std::int64_t best_correct = -1;
  double best_loss = 0;
  for (std::size_t k = 0; k < t.candidates(); ++k) {
    std::int64_t correct = 0;
    double loss = 0;
    for (std::int64_t i = 0; i < t.samples; ++i) {
      correct += t.correct_of(k, i) ? 1 : 0;
      loss += t.loss_of(k, i);
    }
    if (correct > best_correct || (correct == best_correct && loss < best_loss)) {
      best = k;
      best_correct = correct;
      best_loss = loss;
    }
  }
  return best;
}

/// Random per-sample routing, replicate r: uniform candidates for `samples` samples from
/// derive_seed(seed, "rndroute", r), drawn in sample order; `skip` draws are discarded
/// first (the router-train split's draws come first, then the test split's).
inline Assignment random_assignment(std::size_t candidates, std::int64_t samples, std::uint64_t seed,
                                    std::uint64_t replicate, std::int64_t skip = 0) {
  std::mt19937_64 rng(derive_seed(seed, seed_domain::random_route, replicate));
  for (std::int64_t i = 0; i < skip; ++i) (void)bounded_rand(rng, candidates);
  Assignment a(static_cast<std::size_t>(samples));
  for (auto& v : a) v = static_cast<std::int32_t>(bounded_rand(rng, candidates));
  return a;
}

// ---------------------------------------------------------------------------------------
// 3. The router
// ---------------------------------------------------------------------------------------

enum class RouterActivation { gelu, relu };
enum class RouterObjective { supervised, expected_loss };

inline std::string_view to_string(RouterActivation a) {
  return a == RouterActivation::gelu ? "gelu" : "relu";
}
inline std::string_view to_string(RouterObjective o) {
  return o == RouterObjective::supervised ? "supervised" : "expected_loss";
}

/// The router and how it trains.
struct RouterOptions {
  Index hidden = 32;
  RouterActivation activation = RouterActivation::gelu;
  RouterObjective objective = RouterObjective::supervised;
  double temperature = 0.1;  ///< T of the soft target softmax(-loss / T) (supervised)
  double lambda = 0.0;       ///< weight of the cost (expected_loss)
  double cost_scale = 0.0;   ///< costs are divided by it; 0: the largest candidate cost
  std::int64_t epochs = 20;
  std::int64_t batch = 64;
  double lr = 1e-2;
  double weight_decay = 0.0;
  std::uint64_t seed = 0;

  void validate() const {
    auto bad = [](const std::string& what) { throw InputError("moe router: " + what); };
    if (hidden < 1) bad(fmt::format("hidden width must be >= 1, got {}", hidden));
    if (!(temperature > 0) || !std::isfinite(temperature))
      bad(fmt::format("temperature must be a finite number > 0, got {}", temperature));
    if (!(lambda >= 0) || !std::isfinite(lambda))
      bad(fmt::format("lambda must be a finite number >= 0, got {}", lambda));
    if (!(cost_scale >= 0) || !std::isfinite(cost_scale))
      bad(fmt::format("cost scale must be a finite number >= 0 (0: the largest cost), got {}", cost_scale));
    if (epochs < 1) bad(fmt::format("epochs must be >= 1, got {}", epochs));
    if (batch < 1) bad(fmt::format("batch must be >= 1, got {}", batch));
    if (!(lr > 0) || !std::isfinite(lr)) bad(fmt::format("lr must be a finite number > 0, got {}", lr));
    if (!(weight_decay >= 0) || !std::isfinite(weight_decay))
      bad(fmt::format("weight decay must be a finite number >= 0, got {}", weight_decay));
  }
};

inline void to_json(nlohmann::json& j, const RouterOptions& o) {
  j = nlohmann::json{{"hidden", o.hidden},
                     {"activation", to_string(o.activation)},
                     {"objective", to_string(o.objective)},
                     {"temperature", o.temperature},
                     {"lambda", o.lambda},
                     {"cost_scale", o.cost_scale},
                     {"epochs", o.epochs},
                     {"batch", o.batch},
                     {"lr", o.lr},
                     {"weight_decay", o.weight_decay},
                     {"seed", o.seed}};
}

/// What the router's objective needs per sample: the candidates' losses (K, N) and the
/// scaled costs lambda * cost_k / cost_scale (K).
struct RouterTargets {
  moe_detail::Matrix<double> loss;  ///< (K, N)
  std::vector<double> penalty;      ///< (K) lambda * cost_k / cost_scale (expected_loss)
};

inline RouterTargets router_targets(const SampleTable& t, std::span<const double> cost,
                                    const RouterOptions& o) {
  if (cost.size() != t.candidates())
    throw InputError(fmt::format("moe router: {} costs for {} candidates", cost.size(), t.candidates()));
  RouterTargets r;
  const auto K = static_cast<Index>(t.candidates());
  r.loss.resize(K, t.samples);
  for (Index k = 0; k < K; ++k)
    for (std::int64_t i = 0; i < t.samples; ++i) r.loss(k, i) = t.loss_of(static_cast<std::size_t>(k), i);
  double scale = o.cost_scale;
  if (scale == 0)
    for (const double c : cost) scale = std::max(scale, c);
  if (!(scale > 0)) scale = 1;
  for (const double c : cost) r.penalty.push_back(o.lambda * c / scale);
  return r;
}

/// A one-hidden-layer MLP from the raw input to K logits, parameters in R:
/// z = W2 act(W1 x + b1) + b2, flat buffer [W1 (hidden, in) column-major, b1, W2 (K,
/// hidden) column-major, b2]. Forward and backward by hand, both objectives exact.
template <std::floating_point R = double>
class Router {
 public:
  using Mat = moe_detail::Matrix<R>;

  Router(Index in_dim, Index hidden, Index candidates, RouterActivation activation = RouterActivation::gelu)
      : in_(in_dim), hidden_(hidden), k_(candidates), act_(activation) {
    if (in_dim < 1 || hidden < 1 || candidates < 1)
      throw InputError(fmt::format("router: widths must be >= 1 (input {}, hidden {}, candidates {})", in_dim,
                                   hidden, candidates));
    layout_.add("router.w1", {hidden, in_dim}, true);
    layout_.add("router.b1", {hidden}, false);
    layout_.add("router.w2", {candidates, hidden}, true);
    layout_.add("router.b2", {candidates}, false);
    params_.setZero(static_cast<Index>(layout_.total()));
  }

  /// Weights uniform in +-1/sqrt(fan_in) from derive_seed(seed, "router", 0), biases 0.
  void init(std::uint64_t seed) {
    std::mt19937_64 rng(derive_seed(seed, seed_domain::router, 0));
    params_.setZero();
    const auto fill = [&](std::size_t off, std::size_t n, double fan_in) {
      const double a = 1.0 / std::sqrt(fan_in);
      for (std::size_t i = 0; i < n; ++i)
        params_[static_cast<Index>(off + i)] = static_cast<R>(a * (2 * moe_detail::uniform01(rng) - 1));
    };
    fill(0, static_cast<std::size_t>(hidden_ * in_), double(in_));
    fill(static_cast<std::size_t>(hidden_ * in_ + hidden_), static_cast<std::size_t>(k_ * hidden_),
         double(hidden_));
  }

  [[nodiscard]] std::span<R> params() noexcept {
    return {params_.data(), static_cast<std::size_t>(params_.size())};
  }
  [[nodiscard]] std::span<const R> params() const noexcept {
    return {params_.data(), static_cast<std::size_t>(params_.size())};
  }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] Index input_dim() const noexcept { return in_; }
  [[nodiscard]] Index hidden() const noexcept { return hidden_; }
  [[nodiscard]] Index candidates() const noexcept { return k_; }

  /// Logits (K, B) of inputs x (in_dim, B).
  [[nodiscard]] Mat logits(const Mat& x) const {
    Mat h, a;
    return forward(x, h, a);
  }

  /// The mean objective over the columns of x and, with `grads` (layout size), its
  /// gradient written (=) into grads. `cols` selects the columns of `targets.loss` that
  /// belong to x's columns (x column j is target column cols[j]).
  double objective(const Mat& x, const RouterTargets& targets, std::span<const std::int64_t> cols,
                   RouterObjective objective, double temperature, std::span<R> grads = {}) const {
    const Index B = x.cols();
    if (cols.size() != static_cast<std::size_t>(B))
      throw InputError(fmt::format("router: {} target columns for {} inputs", cols.size(), B));
    if (targets.loss.rows() != k_ || targets.penalty.size() != static_cast<std::size_t>(k_))
      throw InputError(
          fmt::format("router: targets for {} candidates, the router has {}", targets.loss.rows(), k_));
    for (const auto c : cols)
      if (c < 0 || c >= targets.loss.cols())
        throw InputError(fmt::format("router: target column {} outside [0, {})", c, targets.loss.cols()));
    Mat h, a;
    const Mat z = forward(x, h, a);
    Mat g(k_, B);  // d objective / d z
    double total = 0;
    std::vector<double> p(static_cast<std::size_t>(k_)), q(static_cast<std::size_t>(k_));
    for (Index j = 0; j < B; ++j) {
      const auto col = cols[static_cast<std::size_t>(j)];
      softmax(z.col(j), p);
      if (objective == RouterObjective::supervised) {
        // q = softmax(-loss / T); objective -sum q log p, gradient p - q.
        double mx = -std::numeric_limits<double>::infinity();
        for (Index k = 0; k < k_; ++k) mx = std::max(mx, -targets.loss(k, col) / temperature);
        double s = 0;
        for (Index k = 0; k < k_; ++k) s += (q[uz(k)] = std::exp(-targets.loss(k, col) / temperature - mx));
        double zmx = double(z(0, j));
        for (Index k = 1; k < k_; ++k) zmx = std::max(zmx, double(z(k, j)));
        double zs = 0;
        for (Index k = 0; k < k_; ++k) zs += std::exp(double(z(k, j)) - zmx);
        const double lse = zmx + std::log(zs);
        for (Index k = 0; k < k_; ++k) {
          q[uz(k)] /= s;
          total -= q[uz(k)] * (double(z(k, j)) - lse);
          g(k, j) = static_cast<R>((p[uz(k)] - q[uz(k)]) / double(B));
        }
      } else {
        // sum_k p_k c_k; gradient p_k (c_k - sum_j p_j c_j).
        double e = 0;
        for (Index k = 0; k < k_; ++k) e += p[uz(k)] * (targets.loss(k, col) + targets.penalty[uz(k)]);
        total += e;
        for (Index k = 0; k < k_; ++k)
          g(k, j) =
              static_cast<R>(p[uz(k)] * (targets.loss(k, col) + targets.penalty[uz(k)] - e) / double(B));
      }
    }
    if (!grads.empty()) backward(x, h, a, g, grads);
    return total / double(B);
  }

  /// Softmax probabilities of one logit column (in double).
  template <class Col>
  static void softmax(const Col& z, std::vector<double>& p) {
    double mx = double(z(0));
    for (Index k = 1; k < z.size(); ++k) mx = std::max(mx, double(z(k)));
    double s = 0;
    for (Index k = 0; k < z.size(); ++k) s += (p[static_cast<std::size_t>(k)] = std::exp(double(z(k)) - mx));
    for (auto& v : p) v /= s;
  }

 private:
  static std::size_t uz(Index k) { return static_cast<std::size_t>(k); }

  static R act(R v, RouterActivation a) {
    if (a == RouterActivation::relu) return v > R(0) ? v : R(0);
    return static_cast<R>(0.5 * double(v) * (1.0 + std::erf(double(v) / std::sqrt(2.0))));
  }
  static R act_grad(R v, RouterActivation a) {
    if (a == RouterActivation::relu) return v > R(0) ? R(1) : R(0);
    const double x = double(v);
    constexpr double inv_sqrt_2pi = 0.39894228040143267794;
    return static_cast<R>(0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) +
                          x * inv_sqrt_2pi * std::exp(-0.5 * x * x));
  }

  using MapM = Eigen::Map<const Mat>;
  using MapV = Eigen::Map<const Eigen::Matrix<R, Eigen::Dynamic, 1>>;
  [[nodiscard]] MapM w1() const { return MapM(params_.data(), hidden_, in_); }
  [[nodiscard]] MapV b1() const { return MapV(params_.data() + hidden_ * in_, hidden_); }
  [[nodiscard]] MapM w2() const { return MapM(params_.data() + hidden_ * in_ + hidden_, k_, hidden_); }
  [[nodiscard]] MapV b2() const { return MapV(params_.data() + hidden_ * in_ + hidden_ + k_ * hidden_, k_); }

  Mat forward(const Mat& x, Mat& h, Mat& a) const {
    if (x.rows() != in_)
      throw InputError(fmt::format("router: input has {} rows, the router expects {}", x.rows(), in_));
    h = w1() * x;
    h.colwise() += b1();
    a = h.unaryExpr([this](R v) { return act(v, act_); });
    Mat z = w2() * a;
    z.colwise() += b2();
    return z;
  }

  void backward(const Mat& x, const Mat& h, const Mat& a, const Mat& g, std::span<R> grads) const {
    if (grads.size() != static_cast<std::size_t>(params_.size()))
      throw InputError(
          fmt::format("router: gradient buffer has {} elements, expected {}", grads.size(), params_.size()));
    using MapW = Eigen::Map<Mat>;
    using MapB = Eigen::Map<Eigen::Matrix<R, Eigen::Dynamic, 1>>;
    // Computed into Eigen storage (fixed alignment, as params_), then copied out.
    Eigen::Matrix<R, Eigen::Dynamic, 1> flat(params_.size());
    R* p = flat.data();
    MapW gw1(p, hidden_, in_);
    MapB gb1(p + hidden_ * in_, hidden_);
    MapW gw2(p + hidden_ * in_ + hidden_, k_, hidden_);
    MapB gb2(p + hidden_ * in_ + hidden_ + k_ * hidden_, k_);
    gw2.noalias() = g * a.transpose();
    gb2 = g.rowwise().sum();
    Mat da = w2().transpose() * g;
    const Mat dh = da.binaryExpr(h, [this](R d, R v) { return d * act_grad(v, act_); });
    gw1.noalias() = dh * x.transpose();
    gb1 = dh.rowwise().sum();
    std::copy(flat.data(), flat.data() + flat.size(), grads.begin());
  }

  Index in_, hidden_, k_;
  RouterActivation act_;
  ParamLayout layout_;
  // Eigen storage: its base is aligned to Eigen's largest alignment, so every tensor's
  // alignment (which decides how Eigen's kernels peel and sum) is the same on every run.
  Eigen::Matrix<R, Eigen::Dynamic, 1> params_;
};

/// The router's training record: the objective on the whole training split before
/// training (entry 0) and after each epoch.
struct RouterFit {
  std::vector<double> objective;
};

namespace moe_detail {
template <class R>
Matrix<R> gather_all(const DatasetView& data) {
  Matrix<R> x;
  std::vector<std::int32_t> y;
  std::vector<std::int64_t> pos(static_cast<std::size_t>(data.size()));
  for (std::int64_t i = 0; i < data.size(); ++i) pos[static_cast<std::size_t>(i)] = i;
  data.gather(pos, x, y);
  return x;
}

template <class R>
double full_objective(const Router<R>& router, const Matrix<R>& x, const RouterTargets& t,
                      const RouterOptions& o) {
  std::vector<std::int64_t> cols(static_cast<std::size_t>(x.cols()));
  for (std::size_t i = 0; i < cols.size(); ++i) cols[i] = static_cast<std::int64_t>(i);
  return router.objective(x, t, cols, o.objective, o.temperature);
}
}  // namespace moe_detail

/// Trains `router` (initialised from o.seed) on inputs x (in_dim, N) with minibatch AdamW
/// (optim/adamw.hpp, constant lr), o.epochs epochs over orders drawn from
/// derive_seed(o.seed, "router", 1 + epoch); single-threaded, so the same seed gives the
/// same bits.
template <std::floating_point R>
RouterFit train_router(Router<R>& router, const moe_detail::Matrix<R>& x, const RouterTargets& targets,
                       const RouterOptions& o) {
  o.validate();
  const Index n = x.cols();
  if (targets.loss.cols() != n || targets.loss.rows() != router.candidates())
    throw InputError(fmt::format("moe router: targets are ({}, {}), expected ({}, {})", targets.loss.rows(),
                                 targets.loss.cols(), router.candidates(), n));
  router.init(o.seed);
  AdamW<R> opt(router.layout(), AdamWConfig{.weight_decay = o.weight_decay});
  std::vector<R> grads(router.params().size());
  RouterFit fit;
  fit.objective.push_back(moe_detail::full_objective(router, x, targets, o));
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  moe_detail::Matrix<R> xb;
  for (std::int64_t e = 0; e < o.epochs; ++e) {
    for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
    std::mt19937_64 rng(derive_seed(o.seed, seed_domain::router, static_cast<std::uint64_t>(1 + e)));
    fisher_yates(std::span<std::int64_t>(order), rng);
    for (std::int64_t b0 = 0; b0 < n; b0 += o.batch) {
      const std::int64_t b = std::min<std::int64_t>(o.batch, n - b0);
      xb.resize(x.rows(), b);
      for (std::int64_t j = 0; j < b; ++j) xb.col(j) = x.col(order[static_cast<std::size_t>(b0 + j)]);
      (void)router.objective(xb, targets,
                             std::span<const std::int64_t>(order).subspan(static_cast<std::size_t>(b0),
                                                                          static_cast<std::size_t>(b)),
                             o.objective, o.temperature, grads);
      opt.step(router.params(), grads, static_cast<R>(o.lr));
    }
    fit.objective.push_back(moe_detail::full_objective(router, x, targets, o));
  }
  return fit;
}

/// The router's choice per column of x (first largest logit) and its mean entropy (nats).
template <std::floating_point R>
Assignment route(const Router<R>& router, const moe_detail::Matrix<R>& x, double* mean_entropy = nullptr) {
  const auto z = router.logits(x);
  Assignment a(static_cast<std::size_t>(z.cols()));
  std::vector<double> p(static_cast<std::size_t>(z.rows()));
  double ent = 0;
  for (Index j = 0; j < z.cols(); ++j) {
    Index best = 0;
    for (Index k = 1; k < z.rows(); ++k)
      if (z(k, j) > z(best, j)) best = k;
    a[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(best);
    Router<R>::softmax(z.col(j), p);
    for (const double v : p)
      if (v > 0) ent -= v * std::log(v);
  }
  if (mean_entropy) *mean_entropy = z.cols() > 0 ? ent / double(z.cols()) : 0.0;
  return a;
}

// ---------------------------------------------------------------------------------------
// 5. Routed execution
// ---------------------------------------------------------------------------------------

/// Runs every sample of `data` with the candidate its assignment names: the samples are
/// grouped by candidate, each group runs in chunks through its structure's own plan (one
/// model per thread, candidates dealt to threads), and the logits come back (classes, N)
/// in the original sample order. Each column is written by one thread.
template <HostModel M>
moe_detail::Matrix<typename M::scalar_type> routed_logits(const typename M::config_type& config,
                                                          std::span<const typename M::scalar_type> params,
                                                          const DatasetView& data,
                                                          const std::vector<std::uint64_t>& masks,
                                                          std::span<const std::int32_t> assignment,
                                                          int threads = 1, Index chunk = 256) {
  using T = typename M::scalar_type;
  using mask_type = typename M::mask_type;
  if (masks.empty()) throw InputError("routed_logits: no candidates");
  if (threads < 1 || chunk < 1) throw InputError("routed_logits: threads and chunk must be >= 1");
  if (assignment.size() != static_cast<std::size_t>(data.size()))
    throw InputError(
        fmt::format("routed_logits: {} assignments for {} samples", assignment.size(), data.size()));
  std::vector<mask_type> ms;
  for (const auto b : masks) ms.push_back(mask_type(b));
  const M probe(config, 1);
  moe_detail::check_model_data(probe, params, data, "routed_logits");
  std::vector<std::vector<std::int64_t>> groups(masks.size());
  for (std::size_t i = 0; i < assignment.size(); ++i) {
    const auto k = assignment[i];
    if (k < 0 || static_cast<std::size_t>(k) >= masks.size())
      throw InputError(
          fmt::format("routed_logits: sample {} has candidate {}, expected < {}", i, k, masks.size()));
    groups[static_cast<std::size_t>(k)].push_back(static_cast<std::int64_t>(i));
  }
  moe_detail::Matrix<T> out(probe.num_classes(), data.size());
  cpu::parallel_tasks(threads, static_cast<Index>(masks.size()), [&](Index task) {
    const auto& g = groups[static_cast<std::size_t>(task)];
    if (g.empty()) return;
    M model(config, 1);
    moe_detail::Matrix<T> x;
    std::vector<std::int32_t> y;
    for (std::size_t c0 = 0; c0 < g.size(); c0 += static_cast<std::size_t>(chunk)) {
      const auto m = std::min(static_cast<std::size_t>(chunk), g.size() - c0);
      const std::span<const std::int64_t> pos(g.data() + c0, m);
      data.gather(pos, x, y);
      (void)model.forward(ms[static_cast<std::size_t>(task)], params,
                          MatView<const T>(x.data(), x.rows(), x.cols()), y);
      const auto l = model.logits();
      for (std::size_t j = 0; j < m; ++j)
        for (Index c = 0; c < l.rows; ++c) out(c, pos[j]) = l(c, static_cast<Index>(j));
    }
  });
  return out;
}

/// Wall time of routed execution against the dense structure's forward over the same data
/// (best of `repeats`, seconds; the same threads and chunk for both).
struct RoutedTiming {
  double routed_seconds = 0;
  double dense_seconds = 0;
  double routed_flops_per_sample = 0;  ///< mean of the routed candidates' costs
  double dense_flops_per_sample = 0;
};

template <HostModel M>
RoutedTiming time_routed_execution(const typename M::config_type& config,
                                   std::span<const typename M::scalar_type> params, const DatasetView& data,
                                   const std::vector<std::uint64_t>& masks,
                                   std::span<const std::int32_t> assignment, int threads = 1,
                                   Index chunk = 256, int repeats = 3) {
  using Clock = std::chrono::steady_clock;
  RoutedTiming t;
  t.routed_seconds = t.dense_seconds = std::numeric_limits<double>::infinity();
  const std::vector<std::uint64_t> dense{M::mask_type::full_bits};
  const Assignment all_dense(assignment.size(), 0);
  for (int r = 0; r < std::max(1, repeats); ++r) {
    auto t0 = Clock::now();
    (void)routed_logits<M>(config, params, data, masks, assignment, threads, chunk);
    t.routed_seconds = std::min(t.routed_seconds, std::chrono::duration<double>(Clock::now() - t0).count());
    t0 = Clock::now();
    (void)routed_logits<M>(config, params, data, dense, all_dense, threads, chunk);
    t.dense_seconds = std::min(t.dense_seconds, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const auto costs = structure_costs<M>(config, masks, chunk);
  double c = 0;
  for (const auto k : assignment) c += costs[static_cast<std::size_t>(k)];
  t.routed_flops_per_sample = assignment.empty() ? 0 : c / double(assignment.size());
  t.dense_flops_per_sample = structure_costs<M>(config, dense, chunk)[0];
  return t;
}

// ---------------------------------------------------------------------------------------
// 6. The report
// ---------------------------------------------------------------------------------------

struct MoeReport {
  std::string family;
  std::vector<std::uint64_t> masks;     ///< the candidates
  std::vector<std::string> structures;  ///< their names
  std::vector<double> costs;            ///< their costs per sample (the router's prices)
  std::uint64_t dense_mask = 0;
  RouterOptions router{};
  std::int64_t train_samples = 0, test_samples = 0;
  std::int64_t random_replicates = 0;
  /// dense, best_single, random, best_random, router, oracle, cost_aware_oracle (test split)
  std::vector<StrategyResult> strategies;
  std::size_t best_single = 0;                  ///< candidate index chosen on the training split
  std::uint64_t best_random = 0;                ///< the best random replicate on the test split
  std::optional<double> gap_closed_accuracy{};  ///< (router - best single) / (oracle - best single)
  std::optional<double> gap_closed_loss{};
  double router_entropy = 0;             ///< mean over the test split (nats)
  std::vector<double> router_objective;  ///< training objective before and after each epoch
  std::optional<RoutedTiming> timing{};
  double table_seconds = 0, router_seconds = 0;

  [[nodiscard]] const StrategyResult& strategy(std::string_view name) const {
    for (const auto& s : strategies)
      if (s.name == name) return s;
    throw RuntimeError(fmt::format("moe report: no strategy '{}'", name));
  }
};

inline nlohmann::json moe_json(const MoeReport& r) {
  const auto opt = [](const std::optional<double>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  nlohmann::json j{
      {"format", "additive-moe-1"},
      {"family", r.family},
      {"router", r.router},
      {"train_samples", r.train_samples},
      {"test_samples", r.test_samples},
      {"random_replicates", r.random_replicates},
      {"dense_mask", report::mask_hex(r.dense_mask)},
      {"best_single", r.best_single},
      {"best_single_mask", r.best_single < r.masks.size()
                               ? nlohmann::json(report::mask_hex(r.masks[r.best_single]))
                               : nlohmann::json(nullptr)},
      {"best_random_replicate", r.best_random},
      {"gap_closed", {{"accuracy", opt(r.gap_closed_accuracy)}, {"loss", opt(r.gap_closed_loss)}}},
      {"router_entropy", r.router_entropy},
      {"router_objective", r.router_objective},
      {"seconds", {{"table", r.table_seconds}, {"router", r.router_seconds}}},
      {"timing", nullptr}};
  j["candidates"] = nlohmann::json::array();
  for (std::size_t k = 0; k < r.masks.size(); ++k)
    j["candidates"].push_back({{"mask", r.masks[k]},
                               {"mask_hex", report::mask_hex(r.masks[k])},
                               {"structure", k < r.structures.size() ? r.structures[k] : std::string()},
                               {"cost", k < r.costs.size() ? r.costs[k] : 0.0}});
  j["strategies"] = nlohmann::json::array();
  for (const auto& s : r.strategies)
    j["strategies"].push_back({{"name", s.name},
                               {"yardstick", s.yardstick},
                               {"accuracy", s.accuracy},
                               {"loss", s.loss},
                               {"cost_per_sample", s.cost},
                               {"load", s.load}});
  if (r.timing)
    j["timing"] = {{"routed_seconds", r.timing->routed_seconds},
                   {"dense_seconds", r.timing->dense_seconds},
                   {"routed_flops_per_sample", r.timing->routed_flops_per_sample},
                   {"dense_flops_per_sample", r.timing->dense_flops_per_sample}};
  return j;
}

/// One row per strategy: name, yardstick, accuracy, loss, cost per sample, load (the
/// samples per candidate, separated by ';', in candidate order).
inline std::string moe_csv(const MoeReport& r) {
  std::string o = "strategy,yardstick,accuracy,loss,cost_per_sample,load\n";
  for (const auto& s : r.strategies) {
    std::string load;
    for (std::size_t k = 0; k < s.load.size(); ++k) load += (k ? ";" : "") + std::to_string(s.load[k]);
    o += fmt::format("{},{},{},{},{},{}\n", report::csv_quoted(s.name), s.yardstick ? 1 : 0, s.accuracy,
                     s.loss, s.cost, load);
  }
  return o;
}

/// Accuracy against mean cost per sample, one point per strategy (yardsticks hollow).
inline std::string moe_svg(const MoeReport& r) {
  report::SvgWriter svg(640, 460);
  const report::PlotArea area{80, 600, 60, 380};
  svg.panel_title(area, "mixture of structures: accuracy against cost");
  if (r.strategies.empty()) {
    svg.empty_note(area, "no strategies");
    svg.frame(area);
    return std::move(svg).finish();
  }
  double alo = 100, ahi = 0, clo = std::numeric_limits<double>::infinity(), chi = 0;
  for (const auto& s : r.strategies) {
    alo = std::min(alo, 100 * s.accuracy);
    ahi = std::max(ahi, 100 * s.accuracy);
    clo = std::min(clo, s.cost);
    chi = std::max(chi, s.cost);
  }
  double unit = 1;  // MFLOPs when the costs are large
  const char* unit_name = "";
  if (chi >= 1e6) {
    unit = 1e6;
    unit_name = " (MFLOP)";
  } else if (chi >= 1e3) {
    unit = 1e3;
    unit_name = " (kFLOP)";
  }
  const auto yt = report::percent_ticks(alo, ahi, 0.1, 0.1);
  const double span = std::max((chi - clo) / unit, 1e-9);
  const auto xt = report::nice_ticks(clo / unit - 0.1 * span, chi / unit + 0.1 * span);
  const report::LinearScale xs{xt.lo, xt.hi, area.x0, area.x1}, ys{yt.lo, yt.hi, area.y1, area.y0};
  svg.y_grid(area, yt, ys, yt.decimals);
  svg.x_grid(area, xt, xs);
  svg.out("<g id=\"strategies\">\n");
  // Points first; then one label per distinct point (names joined by " = "), placed from
  // the top down, each at least 12 px below a nearby label placed before it.
  struct Label {
    double x, y;
    std::string text;
  };
  std::vector<Label> labels;
  for (const auto& s : r.strategies) {
    const double x = xs(s.cost / unit), y = ys(100 * s.accuracy);
    svg.out("<path d=\"{}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"1.5\"/>\n", report::circle_path(x, y, 5),
            s.yardstick ? "none" : report::colour_front,
            s.yardstick ? report::colour_plain : report::colour_front_dark);
    const auto same = std::find_if(labels.begin(), labels.end(), [&](const Label& l) {
      return std::abs(l.x - x) < 0.5 && std::abs(l.y - y) < 0.5;
    });
    if (same != labels.end())
      same->text += " = " + s.name;
    else
      labels.push_back({x, y, s.name});
  }
  std::stable_sort(labels.begin(), labels.end(), [](const Label& a, const Label& b) { return a.y < b.y; });
  std::vector<std::pair<double, double>> placed;
  for (const auto& l : labels) {
    double ly = l.y - 6;
    for (const auto& [px, py] : placed)
      if (std::abs(px - l.x) < 90 && ly < py + 12) ly = py + 12;
    placed.emplace_back(l.x, ly);
    svg.text(l.x + 8, ly, l.text);
  }
  svg.out("</g>\n");
  svg.frame(area);
  svg.text(area.centre_x(), area.y1 + 40, fmt::format("mean cost per sample{}", unit_name),
           R"(text-anchor="middle")");
  svg.text(24, area.centre_y(), "test accuracy (%)",
           "text-anchor=\"middle\" transform=\"rotate(-90 24 220)\"");
  svg.footer(
      fmt::format("{} \u00b7 {} candidates \u00b7 router {} \u00b7 hollow: oracles (on the test split)",
                  r.family, r.masks.size(), to_string(r.router.objective)));
  return std::move(svg).finish();
}

/// Writes moe.json, moe.csv and moe.svg into `dir`, each atomically.
inline void write_moe_outputs(const std::filesystem::path& dir, const MoeReport& r) {
  write_file_atomically(dir / "moe.json", std::string_view(moe_json(r).dump(1) + "\n"));
  write_file_atomically(dir / "moe.csv", std::string_view(moe_csv(r)));
  write_file_atomically(dir / "moe.svg", std::string_view(moe_svg(r)));
}

// ---------------------------------------------------------------------------------------
// 7. The engine
// ---------------------------------------------------------------------------------------

struct MoeOptions {
  std::vector<std::uint64_t> candidates{};  ///< the experts' masks (distinct)
  RouterOptions router{};
  std::vector<double> costs{};           ///< per candidate; empty: M::cost's forward FLOPs per sample
  std::int64_t random_replicates = 100;  ///< R seeded random per-sample assignments
  std::uint64_t random_seed = 0;
  int threads = 1;
  Index chunk = 256;
  bool time_routed = false;  ///< also time routed execution against dense (reported, never asserted)
  int timing_repeats = 3;

  /// `structures` = 2^n, the family's mask count.
  void validate(std::uint64_t structures) const {
    auto bad = [](const std::string& what) { throw InputError("moe: " + what); };
    if (candidates.empty()) bad("the candidate set is empty; give at least one mask");
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      if (candidates[i] >= structures)
        bad(fmt::format("candidate mask {} is not a structure of this family (masks are < {})",
                        report::mask_hex(candidates[i]), structures));
      for (std::size_t j = 0; j < i; ++j)
        if (candidates[j] == candidates[i])
          bad(fmt::format("candidate mask {} is listed twice", report::mask_hex(candidates[i])));
    }
    router.validate();
    if (!costs.empty()) {
      if (costs.size() != candidates.size())
        bad(fmt::format("{} costs for {} candidates", costs.size(), candidates.size()));
      for (const double c : costs)
        if (!(c >= 0) || !std::isfinite(c)) bad(fmt::format("costs must be finite and >= 0, got {}", c));
    }
    if (random_replicates < 1) bad(fmt::format("random replicates must be >= 1, got {}", random_replicates));
    if (threads < 1) bad(fmt::format("threads must be >= 1, got {}", threads));
    if (chunk < 1) bad(fmt::format("chunk must be >= 1, got {}", chunk));
    if (timing_repeats < 1) bad(fmt::format("timing repeats must be >= 1, got {}", timing_repeats));
  }
};

/// Experiment 4 on model M: shared weights (given, or trained by stochastic gating), the
/// candidates' per-sample tables on the router-train and test splits, the router, and every
/// strategy on the test split. R is the router's scalar type.
template <HostModel M, std::floating_point R = double>
class MixtureOfStructures {
 public:
  using model_type = M;
  using family = typename M::family;
  using mask_type = typename M::mask_type;
  using config_type = typename M::config_type;
  using T = typename M::scalar_type;

  MixtureOfStructures(const config_type& model, const MoeOptions& options)
      : model_(model), options_(options) {
    (void)M(model_, 1);  // validates the widths
    options_.validate(mask_type::count);
    costs_ = options_.costs.empty() ? structure_costs<M>(model_, options_.candidates) : options_.costs;
  }

  /// Trains the shared weights with stochastic gating (Trainer<M> with `gating`) on
  /// `train`, validating on `val` (its dense structure); run() then uses them.
  TrainResult train_shared(const TrainOptions& train, const GatingOptions& gating,
                           const DatasetView& train_split, const DatasetView& val, bool progress = false) {
    Trainer<M> t(model_, mask_type::all(), train,
                 RunOptions{.threads = options_.threads, .progress = progress}, gating);
    auto fit = t.fit(train_split, val);
    shared_.assign(t.params().begin(), t.params().end());
    return fit;
  }

  /// Uses `params` as the shared weights.
  void set_shared(std::span<const T> params) { shared_.assign(params.begin(), params.end()); }
  [[nodiscard]] std::span<const T> shared() const noexcept { return shared_; }
  [[nodiscard]] const std::vector<double>& costs() const noexcept { return costs_; }
  [[nodiscard]] const std::optional<Router<R>>& router() const noexcept { return router_; }
  [[nodiscard]] const SampleTable& train_table() const noexcept { return train_table_; }
  [[nodiscard]] const SampleTable& test_table() const noexcept { return test_table_; }
  [[nodiscard]] const Assignment& router_assignment() const noexcept { return routed_; }

  /// Everything on the shared weights: tables, router, strategies, optional timing.
  MoeReport run(const DatasetView& router_train, const DatasetView& test) {
    using Clock = std::chrono::steady_clock;
    if (shared_.empty()) throw InputError("moe: no shared weights; call set_shared or train_shared first");
    const auto& masks = options_.candidates;
    MoeReport r;
    r.family = family::describe();
    r.masks = masks;
    for (const auto m : masks) r.structures.push_back(family::to_string(mask_type(m)));
    r.costs = costs_;
    r.dense_mask = mask_type::full_bits;
    r.router = options_.router;
    r.train_samples = router_train.size();
    r.test_samples = test.size();
    r.random_replicates = options_.random_replicates;

    auto t0 = Clock::now();
    train_table_ =
        per_sample_losses<M>(model_, shared_, router_train, masks, options_.threads, options_.chunk);
    test_table_ = per_sample_losses<M>(model_, shared_, test, masks, options_.threads, options_.chunk);
    r.table_seconds = std::chrono::duration<double>(Clock::now() - t0).count();

    // Dense: a candidate, or evaluated separately.
    const auto dense_it = std::find(masks.begin(), masks.end(), r.dense_mask);
    if (dense_it != masks.end()) {
      const Assignment a(static_cast<std::size_t>(test.size()),
                         static_cast<std::int32_t>(dense_it - masks.begin()));
      r.strategies.push_back(evaluate_assignment(test_table_, a, costs_, "dense"));
    } else {
      const std::vector<std::uint64_t> dm{r.dense_mask};
      const auto dt = per_sample_losses<M>(model_, shared_, test, dm, options_.threads, options_.chunk);
      const std::vector<double> dc =
          options_.costs.empty() ? structure_costs<M>(model_, dm)
                                 : std::vector<double>{*std::max_element(costs_.begin(), costs_.end())};
      auto s = evaluate_assignment(dt, Assignment(static_cast<std::size_t>(test.size()), 0), dc, "dense");
      s.load.assign(masks.size(), 0);  // not among the candidates
      r.strategies.push_back(s);
    }

    r.best_single = best_single_candidate(train_table_);
    r.strategies.push_back(evaluate_assignment(
        test_table_,
        Assignment(static_cast<std::size_t>(test.size()), static_cast<std::int32_t>(r.best_single)), costs_,
        "best_single"));

    {  // Random routings of the test split: a typical one (replicate 0) and the best of R,
       // chosen on the test split itself, so a yardstick (a per-sample random routing
       // ignores the input: choosing it on other samples would choose nothing).
      StrategyResult best;
      for (std::int64_t rep = 0; rep < options_.random_replicates; ++rep) {
        const auto a = random_assignment(masks.size(), test.size(), options_.random_seed,
                                         static_cast<std::uint64_t>(rep));
        auto s = evaluate_assignment(test_table_, a, costs_, "best_random", true);
        if (rep == 0) {
          StrategyResult typical = s;
          typical.name = "random";
          typical.yardstick = false;
          r.strategies.push_back(std::move(typical));
        }
        if (rep == 0 || s.accuracy > best.accuracy || (s.accuracy == best.accuracy && s.loss < best.loss)) {
          best = std::move(s);
          r.best_random = static_cast<std::uint64_t>(rep);
        }
      }
      r.strategies.push_back(std::move(best));
    }

    t0 = Clock::now();
    const auto xtrain = moe_detail::gather_all<R>(router_train);
    const auto targets = router_targets(train_table_, costs_, options_.router);
    router_.emplace(xtrain.rows(), options_.router.hidden, static_cast<Index>(masks.size()),
                    options_.router.activation);
    r.router_objective = train_router(*router_, xtrain, targets, options_.router).objective;
    r.router_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    routed_ = route(*router_, moe_detail::gather_all<R>(test), &r.router_entropy);
    r.strategies.push_back(evaluate_assignment(test_table_, routed_, costs_, "router"));

    r.strategies.push_back(
        evaluate_assignment(test_table_, oracle_assignment(test_table_), costs_, "oracle", true));
    r.strategies.push_back(evaluate_assignment(test_table_, cost_aware_oracle_assignment(test_table_, costs_),
                                               costs_, "cost_aware_oracle", true));

    const auto& single = r.strategy("best_single");
    const auto& router = r.strategy("router");
    const auto& oracle = r.strategy("oracle");
    if (oracle.accuracy != single.accuracy)
      r.gap_closed_accuracy = (router.accuracy - single.accuracy) / (oracle.accuracy - single.accuracy);
    if (oracle.loss != single.loss)
      r.gap_closed_loss = (single.loss - router.loss) / (single.loss - oracle.loss);

    if (options_.time_routed)
      r.timing = time_routed_execution<M>(model_, shared_, test, masks, routed_, options_.threads,
                                          options_.chunk, options_.timing_repeats);
    return r;
  }

 private:
  config_type model_;
  MoeOptions options_;
  std::vector<double> costs_;
  std::vector<T> shared_;
  std::optional<Router<R>> router_;
  SampleTable train_table_, test_table_;
  Assignment routed_;
};

}  // namespace additive
