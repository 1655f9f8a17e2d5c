// What each gate is worth: the structures' responses (mean accuracy over seeds, or loss)
// fitted by ordinary least squares to per-gate effects, first main effects, then the
// pairwise interactions the data supports, with standard errors, t intervals, R^2, and
// predictions (with prediction intervals) for structures that were not trained.
//
// Coding. Gate g enters as x_g = bit_g - 1/2 (so -1/2 off, +1/2 on), an interaction of
// gates g and h as x_g x_h:
//
//   y = intercept + sum_g beta_g x_g + sum_{selected g<h} gamma_gh x_g x_h + noise
//
// so beta_g is "turning gate g on changes the response by beta_g", averaged over the
// settings of the other gates (exactly, in the full factorial), with or without the
// interactions in the model; gamma_gh is how much more turning g on is worth when h is on
// than when h is off. The intercept is the response averaged over the design. In the full
// factorial all columns are orthogonal, so adding interactions leaves the main effects
// unchanged and only their standard errors move.
//
// Interactions by forward selection: starting from the main-effects model, each step
// tries every remaining pair (g, h) of gates and adds the one with the smallest partial-F
// p-value if that p-value times the number of pairs still tried is below
// `interaction_alpha` (Bonferroni over the step's candidates), while the residual degrees
// of freedom stay >= `min_residual_df` and at most `max_interactions` are added. With no
// true interaction, the chance of adding any is at most about interaction_alpha; in the
// orthogonal full factorial the procedure is Holm's step-down on the interaction t tests
// (up to the residual variance, re-estimated at every step). Unlike fitting all pairs at
// once it also works for a sampled design with fewer structures than pairs. The intervals
// of the selected interactions are post-selection, so optimistic; those of main effects
// are not selected.
//
// Standard errors treat the structures as independent observations with equal variance:
// the noise term holds both the model's misfit and the seeds' noise. A seed shift common
// to all structures moves only the intercept.
//
// Rank deficiency: a gate that never varies in the fitted structures, or whose column is a
// combination of others (gate 3 always equal to gate 5 in a sample), is dropped and named
// in `notes`; predict() refuses masks whose response the fitted structures do not
// determine. docs/statistics.md has the same in prose.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <Eigen/Dense>

#include "additive/core/error.hpp"
#include "additive/stats/distributions.hpp"
#include "additive/stats/runs.hpp"

namespace additive::stats {

struct GateEffectsOptions {
  double level = 0.95;              ///< confidence level of the coefficients' intervals and of predict()
  bool interactions = true;         ///< false: main effects only
  double interaction_alpha = 0.05;  ///< entry level of the forward selection (Bonferroni per step)
  int max_interactions = -1;        ///< cap on added interactions (-1: none beyond min_residual_df)
  int min_residual_df = 5;          ///< no interaction is added that would leave fewer residual df

  void validate() const {
    if (!(level > 0 && level < 1))
      throw InputError(fmt::format("gate effects: level must be in (0, 1), got {}", level));
    if (!(interaction_alpha > 0 && interaction_alpha < 1))
      throw InputError(
          fmt::format("gate effects: interaction alpha must be in (0, 1), got {}", interaction_alpha));
    if (max_interactions < -1)
      throw InputError("gate effects: max interactions must be >= 0 (or -1: no cap)");
    if (min_residual_df < 1) throw InputError("gate effects: min residual df must be >= 1");
  }
};

/// One coefficient of the fitted model.
struct GateTerm {
  enum class Kind { intercept, main, interaction };
  Kind kind = Kind::intercept;
  int gate = -1;     ///< main effect and interaction: the (first) gate
  int other = -1;    ///< interaction: the second gate (gate < other)
  std::string name;  ///< "intercept", "g3", "g1:g4"
  double estimate = 0, se = 0;
  double lo = 0, hi = 0;  ///< t interval at GateEffectsOptions::level
  double t = 0, p = 1;    ///< t statistic and two-sided p-value of "coefficient = 0"
};

/// A predicted response: its mean with a confidence interval, and a prediction interval
/// for one new structure's response (the mean's uncertainty plus the residual noise).
struct GatePrediction {
  double mean = 0, se_mean = 0, lo_mean = 0, hi_mean = 0;
  double se = 0, lo = 0, hi = 0;
};

/// A fitted gate-effect model (fit_gate_effects).
class GateEffects {
 public:
  [[nodiscard]] int gates() const { return gates_; }
  /// Intercept, the main effects of the gates kept (in gate order), then the selected
  /// interactions (in the order they were added).
  [[nodiscard]] const std::vector<GateTerm>& terms() const { return terms_; }
  /// Gate g's main effect; empty when g was dropped (see notes()).
  [[nodiscard]] std::optional<GateTerm> main_effect(int g) const {
    for (const auto& t : terms_)
      if (t.kind == GateTerm::Kind::main && t.gate == g) return t;
    return std::nullopt;
  }
  [[nodiscard]] std::vector<GateTerm> interactions() const {
    std::vector<GateTerm> v;
    for (const auto& t : terms_)
      if (t.kind == GateTerm::Kind::interaction) v.push_back(t);
    return v;
  }
  [[nodiscard]] const std::vector<int>& dropped_gates() const { return dropped_; }
  /// What was dropped and why, one sentence each.
  [[nodiscard]] const std::vector<std::string>& notes() const { return notes_; }

  [[nodiscard]] int observations() const { return int(y_.size()); }
  [[nodiscard]] int residual_df() const { return df_; }
  [[nodiscard]] double sigma() const { return sigma_; }  ///< residual standard deviation
  [[nodiscard]] double level() const { return level_; }
  /// The share of the variance between structures the final model explains, and the same
  /// adjusted for its number of coefficients (NaN when all responses are equal).
  [[nodiscard]] double r2() const { return r2_; }
  [[nodiscard]] double adjusted_r2() const { return adj_r2_; }
  /// The same for the main-effects model alone.
  [[nodiscard]] double r2_main() const { return r2_main_; }
  [[nodiscard]] double adjusted_r2_main() const { return adj_r2_main_; }

  /// The model's response for `mask`, with intervals at the fit's level.
  [[nodiscard]] GatePrediction predict(std::uint64_t mask) const { return predict(mask, level_); }

  /// The model's response for `mask`, with intervals at `level`. InputError when the mask
  /// has bits beyond the gates, or when the fitted structures do not determine its
  /// response (a dropped gate set differently from the fitted ones).
  [[nodiscard]] GatePrediction predict(std::uint64_t mask, double level) const {
    if (gates_ < 64 && (mask >> gates_) != 0)
      throw InputError(fmt::format("gate effects: mask {:#x} has bits beyond the {} gates", mask, gates_));
    if (!(level > 0 && level < 1))
      throw InputError(fmt::format("gate effects: level must be in (0, 1), got {}", level));
    const Eigen::VectorXd full = row(mask, all_columns_);
    if (null_space_.cols() > 0 && (null_space_.transpose() * full).norm() > 1e-8 * full.norm()) {
      std::string names;
      for (const int g : dropped_) names += (names.empty() ? "" : ", ") + std::to_string(g);
      throw InputError(
          fmt::format("gate effects: the fitted structures do not determine the response of mask {:#x} "
                      "(dropped gates: {})",
                      mask, names));
    }
    const Eigen::VectorXd x = row(mask, columns_);
    GatePrediction p;
    p.mean = x.dot(beta_);
    const double v = x.dot(xtx_inv_ * x);
    const double q = student_t_quantile((1 + level) / 2, df_);
    p.se_mean = sigma_ * std::sqrt(v);
    p.lo_mean = p.mean - q * p.se_mean;
    p.hi_mean = p.mean + q * p.se_mean;
    p.se = sigma_ * std::sqrt(1 + v);
    p.lo = p.mean - q * p.se;
    p.hi = p.mean + q * p.se;
    return p;
  }

 private:
  friend GateEffects fit_gate_effects(std::span<const std::uint64_t>, std::span<const double>, int,
                                      const GateEffectsOptions&);

  /// A column of the design: the intercept (gate = other = -1), a main effect (other =
  /// -1), or an interaction.
  struct Column {
    int gate = -1, other = -1;
  };

  static double value(std::uint64_t mask, const Column& c) {
    auto x = [&](int g) { return double((mask >> g) & 1U) - 0.5; };
    if (c.gate < 0) return 1.0;
    if (c.other < 0) return x(c.gate);
    return x(c.gate) * x(c.other);
  }
  static Eigen::VectorXd row(std::uint64_t mask, const std::vector<Column>& columns) {
    Eigen::VectorXd v(Eigen::Index(columns.size()));
    for (std::size_t j = 0; j < columns.size(); ++j) v(Eigen::Index(j)) = value(mask, columns[j]);
    return v;
  }

  int gates_ = 0;
  double level_ = 0.95;
  std::vector<Column> columns_;      // of the fitted model
  std::vector<Column> all_columns_;  // intercept, every gate, the selected interactions
  Eigen::MatrixXd null_space_;       // (all_columns, k): directions the design does not determine
  Eigen::VectorXd beta_;             // (columns)
  Eigen::MatrixXd xtx_inv_;          // (columns, columns): (X^T X)^-1
  std::vector<double> y_;
  std::vector<GateTerm> terms_;
  std::vector<int> dropped_;
  std::vector<std::string> notes_;
  int df_ = 0;
  double sigma_ = 0, r2_ = 0, adj_r2_ = 0, r2_main_ = 0, adj_r2_main_ = 0;
};

namespace detail {

/// The design matrix (observations, columns) of `columns` for `masks`.
template <class Column>
Eigen::MatrixXd design(std::span<const std::uint64_t> masks, const std::vector<Column>& columns,
                       double (*value)(std::uint64_t, const Column&)) {
  Eigen::MatrixXd design_x(Eigen::Index(masks.size()), Eigen::Index(columns.size()));
  for (std::size_t i = 0; i < masks.size(); ++i)
    for (std::size_t j = 0; j < columns.size(); ++j)
      design_x(Eigen::Index(i), Eigen::Index(j)) = value(masks[i], columns[j]);
  return design_x;
}

/// The part of `v` (n) outside the column span of X (n, p), by least squares through QR.
inline Eigen::VectorXd residual_after(const Eigen::MatrixXd& design_x, const Eigen::VectorXd& v) {
  if (design_x.cols() == 0) return v;
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(design_x);
  return v - design_x * qr.solve(v);
}

/// True when column `c` adds a direction to X's column span (relative tolerance 1e-9).
inline bool adds_rank(const Eigen::MatrixXd& design_x, const Eigen::VectorXd& c) {
  return residual_after(design_x, c).norm() > 1e-9 * std::max(1.0, c.norm());
}

}  // namespace detail

/// Fits the gate-effect model to `response[i]` of structure `masks[i]` (a mask may repeat:
/// replicates), `gates` gates (1..64). InputError on mismatched sizes, bits beyond the
/// gates, a response that is not finite, or fewer structures than the main-effects model
/// has coefficients plus one (no residual degrees of freedom).
inline GateEffects fit_gate_effects(std::span<const std::uint64_t> masks, std::span<const double> response,
                                    int gates, const GateEffectsOptions& options = {}) {
  options.validate();
  if (gates < 1 || gates > 64)
    throw InputError(fmt::format("gate effects: gates must be in [1, 64], got {}", gates));
  if (masks.size() != response.size())
    throw InputError(fmt::format("gate effects: {} masks but {} responses", masks.size(), response.size()));
  for (std::size_t i = 0; i < masks.size(); ++i) {
    if (gates < 64 && (masks[i] >> gates) != 0)
      throw InputError(fmt::format("gate effects: mask {:#x} has bits beyond the {} gates", masks[i], gates));
    if (!std::isfinite(response[i]))
      throw InputError(fmt::format("gate effects: the response of mask {:#x} is not finite", masks[i]));
  }
  using Column = GateEffects::Column;
  const auto n = Eigen::Index(masks.size());
  const Eigen::VectorXd y = Eigen::Map<const Eigen::VectorXd>(response.data(), n);

  GateEffects fit;
  fit.gates_ = gates;
  fit.level_ = options.level;
  fit.y_.assign(response.begin(), response.end());

  // Main effects: keep each gate whose column adds rank; say why the others went.
  std::vector<Column> columns{Column{}};
  Eigen::MatrixXd design_x = detail::design(masks, columns, &GateEffects::value);  // (n, p)
  std::vector<int> kept;
  for (int g = 0; g < gates; ++g) {
    const Column c{g, -1};
    Eigen::VectorXd col(n);
    for (Eigen::Index i = 0; i < n; ++i) col(i) = GateEffects::value(masks[std::size_t(i)], c);
    if (!detail::adds_rank(design_x, col)) {
      fit.dropped_.push_back(g);
      const bool constant = (col.array() == col(0)).all();
      fit.notes_.push_back(
          constant
              ? fmt::format("gate {} is {} in all {} fitted structures: its effect cannot be estimated", g,
                            col(0) > 0 ? "on" : "off", n)
              : fmt::format(
                    "gate {}'s setting is determined by other gates' settings in the fitted structures "
                    "(for example always equal to another gate): its effect cannot be told apart from theirs",
                    g));
      continue;
    }
    columns.push_back(c);
    kept.push_back(g);
    design_x.conservativeResize(Eigen::NoChange, design_x.cols() + 1);
    design_x.col(design_x.cols() - 1) = col;
  }
  if (n <= design_x.cols())
    throw InputError(
        fmt::format("gate effects: {} structures cannot fit {} coefficients (intercept and {} gate effects) "
                    "with residual degrees of freedom left: train more structures",
                    n, design_x.cols(), design_x.cols() - 1));

  const double y_mean = y.mean();
  const double tss = (y.array() - y_mean).square().sum();
  auto rss_of = [&](const Eigen::MatrixXd& a) { return detail::residual_after(a, y).squaredNorm(); };
  auto r2_pair = [&](double rss, Eigen::Index p) -> std::pair<double, double> {
    if (!(tss > 0))
      return {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
    return {1 - rss / tss, 1 - (rss / double(n - p)) / (tss / double(n - 1))};
  };
  std::tie(fit.r2_main_, fit.adj_r2_main_) = r2_pair(rss_of(design_x), design_x.cols());

  // Interactions by forward selection (the header's rules).
  std::vector<Column> selected;
  if (options.interactions) {
    std::vector<Column> candidates;
    for (std::size_t a = 0; a < kept.size(); ++a)
      for (std::size_t b = a + 1; b < kept.size(); ++b) candidates.push_back({kept[a], kept[b]});
    for (;;) {
      const Eigen::Index df_new = n - design_x.cols() - 1;
      if (df_new < options.min_residual_df) break;
      if (options.max_interactions >= 0 && int(selected.size()) >= options.max_interactions) break;
      const Eigen::VectorXd e = detail::residual_after(design_x, y);
      const double rss = e.squaredNorm();
      const Eigen::HouseholderQR<Eigen::MatrixXd> qr(design_x);
      double best_p = 2;
      std::size_t best = 0;
      std::vector<Column> still;
      Eigen::VectorXd best_col;
      for (const auto& c : candidates) {
        Eigen::VectorXd col(n);
        for (Eigen::Index i = 0; i < n; ++i) col(i) = GateEffects::value(masks[std::size_t(i)], c);
        const Eigen::VectorXd rc = col - design_x * qr.solve(col);
        if (rc.norm() <= 1e-9 * std::max(1.0, col.norm())) continue;  // in the span: never estimable
        still.push_back(c);
        const double ss = std::pow(rc.dot(e), 2) / rc.squaredNorm();  // the drop in RSS
        const double rss_new = std::max(rss - ss, 0.0);
        const double p = rss_new > 0 ? f_survival(ss / (rss_new / double(df_new)), 1, double(df_new)) : 0.0;
        if (p < best_p) {
          best_p = p;
          best = still.size() - 1;
          best_col = col;
        }
      }
      candidates = still;
      if (candidates.empty() || best_p * double(candidates.size()) >= options.interaction_alpha) break;
      selected.push_back(candidates[best]);
      columns.push_back(candidates[best]);
      candidates.erase(candidates.begin() + std::ptrdiff_t(best));
      design_x.conservativeResize(Eigen::NoChange, design_x.cols() + 1);
      design_x.col(design_x.cols() - 1) = best_col;
    }
  }

  // The final fit: beta = R^-1 Q^T y, (X^T X)^-1 = R^-1 R^-T.
  const Eigen::Index p = design_x.cols();
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(design_x);
  fit.beta_ = qr.solve(y);
  const Eigen::MatrixXd r_factor =
      qr.matrixQR().topLeftCorner(p, p).triangularView<Eigen::Upper>();  // (p, p)
  const Eigen::MatrixXd r_inv =
      r_factor.triangularView<Eigen::Upper>().solve(Eigen::MatrixXd::Identity(p, p));  // (p, p)
  fit.xtx_inv_ = r_inv * r_inv.transpose();
  const double rss = (y - design_x * fit.beta_).squaredNorm();
  fit.df_ = int(n - p);
  fit.sigma_ = std::sqrt(rss / double(fit.df_));
  std::tie(fit.r2_, fit.adj_r2_) = r2_pair(rss, p);
  fit.columns_ = columns;

  const double q = student_t_quantile((1 + options.level) / 2, fit.df_);
  for (Eigen::Index j = 0; j < p; ++j) {
    const Column& c = columns[std::size_t(j)];
    GateTerm t;
    t.kind = c.gate < 0 ? GateTerm::Kind::intercept
                        : (c.other < 0 ? GateTerm::Kind::main : GateTerm::Kind::interaction);
    t.gate = c.gate;
    t.other = c.other;
    t.name = c.gate < 0
                 ? "intercept"
                 : (c.other < 0 ? fmt::format("g{}", c.gate) : fmt::format("g{}:g{}", c.gate, c.other));
    t.estimate = fit.beta_(j);
    t.se = fit.sigma_ * std::sqrt(fit.xtx_inv_(j, j));
    t.lo = t.estimate - q * t.se;
    t.hi = t.estimate + q * t.se;
    t.t = t.se > 0
              ? t.estimate / t.se
              : (t.estimate == 0 ? 0.0 : std::copysign(std::numeric_limits<double>::infinity(), t.estimate));
    t.p = student_t_two_sided(t.t, fit.df_);
    fit.terms_.push_back(std::move(t));
  }

  // The directions of (intercept, every gate, selected interactions) the design leaves
  // open: a prediction is determined exactly when its row is orthogonal to them.
  fit.all_columns_.push_back(Column{});
  for (int g = 0; g < gates; ++g) fit.all_columns_.push_back({g, -1});
  for (const auto& c : selected) fit.all_columns_.push_back(c);
  if (!fit.dropped_.empty()) {
    const Eigen::MatrixXd full = detail::design(masks, fit.all_columns_, &GateEffects::value);  // (n, all)
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(full, Eigen::ComputeFullV);
    const auto& sv = svd.singularValues();
    Eigen::Index rank = 0;
    for (Eigen::Index i = 0; i < sv.size(); ++i)
      if (sv(i) > 1e-9 * sv(0) * double(std::max(full.rows(), full.cols()))) ++rank;
    fit.null_space_ = svd.matrixV().rightCols(full.cols() - rank);
  }
  return fit;
}

/// Which response of a run table the gate-effect model fits.
enum class GateResponse { accuracy, loss };

/// The gate-effect model of a run table's mean accuracy (or loss) over seeds. Pass the
/// structures actually trained (a search with equivalent structures trains one of each
/// group: repeating its result under every equivalent mask would count it several times).
inline GateEffects fit_gate_effects(const RunTable& table, int gates,
                                    GateResponse response = GateResponse::accuracy,
                                    const GateEffectsOptions& options = {}) {
  if (response == GateResponse::loss && !table.has_loss())
    throw InputError("gate effects: the loss of some runs was not recorded");
  const auto y = response == GateResponse::accuracy ? table.mean_accuracy() : table.mean_loss();
  return fit_gate_effects(table.masks(), y, gates, options);
}

}  // namespace additive::stats
