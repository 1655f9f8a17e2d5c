// The distribution functions the statistics layer needs: the normal, Student t, F and
// binomial distributions, all from one regularized incomplete beta function. Written from
// the textbook formulas (Abramowitz & Stegun 26.5.8: the continued fraction of I_x(a, b),
// evaluated by the modified Lentz method; 26.2.23 for a first guess of normal quantiles);
// quantiles are found by safeguarded Newton iteration on the distribution function, so
// their accuracy is that of the distribution function (about 1e-13 relative).
// tests/golden/make_paired_stats.py checks them against scipy.stats.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>

#include "additive/core/error.hpp"

namespace additive::stats {

namespace detail {

/// The continued fraction of I_x(a, b) (A&S 26.5.8), without its prefactor; converges fast
/// for x < (a + 1) / (a + b + 2).
inline double beta_continued_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300;
  constexpr double eps = 1e-16;
  constexpr int max_iterations = 100000;  // needs O(sqrt(max(a, b))) terms
  // f = 1 / (1 + d1 / (1 + d2 / (1 + ...))), Lentz: f = C_k / D_k products.
  double c = 1.0;
  double d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::abs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double f = d;
  for (int m = 1; m <= max_iterations; ++m) {
    const double md = m;
    // even term d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
    double num = md * (b - md) * x / ((a + 2 * md - 1) * (a + 2 * md));
    d = 1.0 + num * d;
    if (std::abs(d) < tiny) d = tiny;
    c = 1.0 + num / c;
    if (std::abs(c) < tiny) c = tiny;
    d = 1.0 / d;
    f *= d * c;
    // odd term d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
    num = -(a + md) * (a + b + md) * x / ((a + 2 * md) * (a + 2 * md + 1));
    d = 1.0 + num * d;
    if (std::abs(d) < tiny) d = tiny;
    c = 1.0 + num / c;
    if (std::abs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double delta = d * c;
    f *= delta;
    if (std::abs(delta - 1.0) < eps) return f;
  }
  throw RuntimeError(fmt::format("incomplete beta: no convergence for a={}, b={}, x={}", a, b, x));
}

/// log(x^a y^b / (a B(a, b))), y = 1 - x: the prefactor of the continued fraction.
inline double beta_prefactor_log(double a, double b, double x, double y) {
  return std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log(y) -
         std::log(a);
}

/// I_x(a, b) with y = 1 - x supplied by the caller: where x is close to 1, the caller
/// knows y to full relative accuracy (t^2 / (df + t^2) rather than 1 - df / (df + t^2)).
inline double incomplete_beta(double a, double b, double x, double y) {
  if (!(a > 0) || !(b > 0) || !(x >= 0) || !(y >= 0) || !(std::abs(x + y - 1) <= 1e-12))
    throw RuntimeError(
        fmt::format("incomplete beta: needs a, b > 0 and x = 1 - y in [0, 1], got {}, {}, {}", a, b, x));
  if (x == 0) return 0.0;
  if (y == 0) return 1.0;
  // The continued fraction converges fast below the mean; above it use I_x(a,b) = 1 - I_y(b,a).
  if (x < (a + 1) / (a + b + 2))
    return std::exp(beta_prefactor_log(a, b, x, y)) * beta_continued_fraction(a, b, x);
  return 1.0 - std::exp(beta_prefactor_log(b, a, y, x)) * beta_continued_fraction(b, a, y);
}

}  // namespace detail

/// The regularized incomplete beta function I_x(a, b) = P(Beta(a, b) <= x), a, b > 0.
inline double incomplete_beta(double a, double b, double x) {
  if (!(x >= 0) || !(x <= 1))
    throw RuntimeError(
        fmt::format("incomplete beta: needs a, b > 0 and x in [0, 1], got {}, {}, {}", a, b, x));
  return detail::incomplete_beta(a, b, x, 1 - x);
}

// ---------------------------------------------------------------------------------------
// Normal

/// P(Z <= z) for a standard normal Z.
inline double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::numbers::sqrt2); }

/// The standard normal density.
inline double normal_pdf(double z) { return std::exp(-0.5 * z * z) / std::sqrt(2 * std::numbers::pi); }

namespace detail {

/// Solves `log value(x) = log target` for x > 0 by Newton steps (derivative `slope(x)` of
/// value), bisecting whenever a step leaves the bracket [lo, hi] that holds the root.
/// `increasing` says whether value grows with x.
template <class Value, class Slope>
double solve_log(Value value, Slope slope, double target, double lo, double hi, double x, bool increasing) {
  for (int i = 0; i < 200; ++i) {
    const double v = value(x);
    if ((v < target) == increasing) {
      lo = x;
    } else {
      hi = x;
    }
    const double d = slope(x);
    double next = d != 0 && v > 0 ? x - (std::log(v) - std::log(target)) / (d / v) : 0.5 * (lo + hi);
    if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
    const double step = next - x;
    x = next;
    if (std::abs(step) <= 1e-15 * x || hi - lo <= 1e-15 * hi) break;
  }
  return x;
}

}  // namespace detail

/// The p-quantile of the standard normal, 0 < p < 1.
inline double normal_quantile(double p) {
  if (!(p > 0) || !(p < 1))
    throw RuntimeError(fmt::format("normal quantile: p must be in (0, 1), got {}", p));
  if (p == 0.5) return 0.0;
  // z > 0 with P(|Z| > z) = 2 min(p, 1-p) in the tails, P(|Z| < z) = |2p - 1| near the
  // median (2p - 1 is exact there, so quantiles near 0 keep their relative accuracy).
  const double q = std::min(p, 1 - p);
  const double c = std::abs(2 * p - 1);
  const bool central = c < 0.5;
  // First guess A&S 26.2.23 (error < 4.5e-4); then Newton on the log of the probability.
  const double t = std::sqrt(-2.0 * std::log(q));
  const double guess = std::max(1e-300, t - (2.515517 + 0.802853 * t + 0.010328 * t * t) /
                                                (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t));
  double z = 0;
  if (central) {
    z = detail::solve_log([](double x) { return std::erf(x / std::numbers::sqrt2); },
                          [](double x) { return 2 * normal_pdf(x); }, c, 0.0, 1.0, std::min(guess, 0.99),
                          true);
  } else {
    z = detail::solve_log([](double x) { return std::erfc(x / std::numbers::sqrt2); },
                          [](double x) { return -2 * normal_pdf(x); }, 2 * q, 0.0, 40.0, guess, false);
  }
  return p < 0.5 ? -z : z;
}

// ---------------------------------------------------------------------------------------
// Student t

/// P(|T| > |t|) for T ~ Student t with `df` > 0 degrees of freedom: the two-sided p-value.
inline double student_t_two_sided(double t, double df) {
  if (!(df > 0)) throw RuntimeError(fmt::format("student t: df must be > 0, got {}", df));
  if (std::isinf(t)) return 0.0;
  // P(|T| > t) = I_x(df/2, 1/2), x = df / (df + t^2), 1 - x = t^2 / (df + t^2)
  const double t2 = t * t;
  return detail::incomplete_beta(df / 2, 0.5, df / (df + t2), t2 / (df + t2));
}

/// P(|T| < |t|), accurate for small t (where the two-sided p-value is close to 1).
inline double student_t_central(double t, double df) {
  if (!(df > 0)) throw RuntimeError(fmt::format("student t: df must be > 0, got {}", df));
  if (std::isinf(t)) return 1.0;
  const double t2 = t * t;
  return detail::incomplete_beta(0.5, df / 2, t2 / (df + t2), df / (df + t2));
}

/// P(T <= t) for T ~ Student t with `df` > 0 degrees of freedom.
inline double student_t_cdf(double t, double df) {
  if (std::abs(t) < 1) return 0.5 + std::copysign(0.5 * student_t_central(t, df), t);
  const double tail = 0.5 * student_t_two_sided(t, df);  // P(T > |t|)
  return t < 0 ? tail : 1.0 - tail;
}

/// The density of Student t with `df` degrees of freedom.
inline double student_t_pdf(double t, double df) {
  const double log_c =
      std::lgamma((df + 1) / 2) - std::lgamma(df / 2) - 0.5 * std::log(df * std::numbers::pi);
  return std::exp(log_c - (df + 1) / 2 * std::log1p(t * t / df));
}

/// The p-quantile of Student t with `df` > 0 degrees of freedom, 0 < p < 1.
inline double student_t_quantile(double p, double df) {
  if (!(p > 0) || !(p < 1))
    throw RuntimeError(fmt::format("student t quantile: p must be in (0, 1), got {}", p));
  if (!(df > 0)) throw RuntimeError(fmt::format("student t quantile: df must be > 0, got {}", df));
  if (p == 0.5) return 0.0;
  // As normal_quantile: t > 0 with P(|T| > t) = 2 min(p, 1-p), or P(|T| < t) = |2p - 1|
  // near the median.
  const double q = std::min(p, 1 - p);
  const double c = std::abs(2 * p - 1);
  const bool central = c < 0.5;
  auto value = [&](double t) { return central ? student_t_central(t, df) : student_t_two_sided(t, df); };
  auto slope = [&](double t) { return (central ? 2 : -2) * student_t_pdf(t, df); };
  const double target = central ? c : 2 * q;
  // Bracket [lo, hi] around the root, from the normal quantile up.
  double lo = 0.0;
  double hi = std::max(1.0, std::abs(normal_quantile(q)));
  while ((value(hi) < target) == central) {
    lo = hi;
    hi *= 2;
    if (hi > 1e300) return p < 0.5 ? -hi : hi;
  }
  const double t = detail::solve_log(value, slope, target, lo, hi, 0.5 * (lo + hi), central);
  return p < 0.5 ? -t : t;
}

// ---------------------------------------------------------------------------------------
// F and binomial

/// P(F > f) for F ~ F(d1, d2), d1, d2 > 0: the p-value of an F test.
inline double f_survival(double f, double d1, double d2) {
  if (!(d1 > 0) || !(d2 > 0))
    throw RuntimeError(fmt::format("F distribution: needs d1, d2 > 0, got {}, {}", d1, d2));
  if (!(f > 0)) return 1.0;
  if (std::isinf(f)) return 0.0;
  return detail::incomplete_beta(d2 / 2, d1 / 2, d2 / (d2 + d1 * f), d1 * f / (d2 + d1 * f));
}

/// P(X <= k) for X ~ Binomial(n, p).
inline double binomial_cdf(std::int64_t k, std::int64_t n, double p) {
  if (n < 0 || !(p >= 0) || !(p <= 1))
    throw RuntimeError(fmt::format("binomial: needs n >= 0 and p in [0, 1], got {}, {}", n, p));
  if (k < 0) return 0.0;
  if (k >= n) return 1.0;
  if (p == 0) return 1.0;
  if (p == 1) return 0.0;
  // P(X <= k) = I_{1-p}(n - k, k + 1)
  return detail::incomplete_beta(double(n - k), double(k + 1), 1 - p, p);
}

/// The exact two-sided binomial test of `k` successes in `n` trials against p = 1/2:
/// 2 P(X <= min(k, n-k)), at most 1 (for p = 1/2 this equals scipy's binomtest, which sums
/// the outcomes no more likely than the one observed). 1 when n = 0.
inline double binomial_two_sided_half(std::int64_t k, std::int64_t n) {
  if (k < 0 || k > n)
    throw RuntimeError(fmt::format("binomial test: needs 0 <= k <= n, got k={}, n={}", k, n));
  if (n == 0) return 1.0;
  return std::min(1.0, 2.0 * binomial_cdf(std::min(k, n - k), n, 0.5));
}

}  // namespace additive::stats
