// Paired comparison of structures, and the top group: which structures the data cannot
// tell apart from the best. All structures of one seed share initial weights, data order
// and validation images, so each is compared with a reference (the leader) on the same
// seeds and the same images:
//
//   difference   mean over seeds of (accuracy - reference's accuracy), as a fraction
//   interval     percentile interval of a paired bootstrap that resamples the validation
//                images (and the seeds, when there are >= 2) jointly for all structures;
//                with accuracies alone (no per-image bits), a Student t interval over seeds
//   p-value      two-sided, "no difference", by one of three tests (PairedTest)
//   top group    the leader plus every structure whose Holm-adjusted p-value is >= alpha,
//                the family being all comparisons with the leader
//
// The winner's curse: the leader is the structure with the best mean accuracy on the very
// data used to compare it, so its lead is biased upward and, when several structures are
// truly tied at the top, the family-wise error of excluding one of them exceeds alpha (the
// comparisons test a fixed reference; choosing it as the maximum is not accounted for).
// A reference fixed in advance (compare_to_reference) has no such bias.
// docs/statistics.md states the tests, the bootstrap protocol and these caveats.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/seed.hpp"
#include "additive/stats/descriptive.hpp"
#include "additive/stats/distributions.hpp"
#include "additive/stats/runs.hpp"

namespace additive::stats {

/// The test behind a comparison's p-value.
enum class PairedTest {
  /// `bootstrap` when every run has per-image correctness, otherwise `seed_t`.
  automatic,
  /// Wald test with the paired bootstrap's standard error: p = 2 Phi(-|d| / se_boot). The
  /// bootstrap resamples images and seeds, so it counts both sources of noise; its
  /// distribution of a mean over thousands of images is close to normal, and the normal
  /// tail (unlike counting resamples beyond zero) resolves the small p-values Holm needs.
  bootstrap,
  /// McNemar's exact test on the discordant images summed over seeds: b images right only
  /// in the structure, c right only in the reference, p = 2 P(Binomial(b + c, 1/2) <=
  /// min(b, c)). Exact given the trained networks, but it treats every (seed, image) pair
  /// as independent: it ignores seed-to-seed training noise, and an image that is
  /// discordant the same way under every seed counts R times.
  mcnemar,
  /// Paired t over seeds: t = mean(d_r) / (sd(d_r) / sqrt(R)), R - 1 degrees of freedom,
  /// with d_r seed r's accuracy difference. Needs R >= 2; counts training noise, but is
  /// conditional on the validation set, and with 2 or 3 seeds has little power.
  seed_t,
};

inline std::string_view to_string(PairedTest t) {
  switch (t) {
    case PairedTest::automatic:
      return "automatic";
    case PairedTest::bootstrap:
      return "paired bootstrap (Wald, bootstrap standard error)";
    case PairedTest::mcnemar:
      return "McNemar exact (discordant images summed over seeds)";
    case PairedTest::seed_t:
      return "paired t over seeds";
  }
  return "?";
}

/// How a comparison's interval was made.
enum class PairedInterval {
  bootstrap_percentile,  ///< percentile interval of the paired bootstrap
  seed_t,                ///< mean difference +- t quantile * sd / sqrt(R)
};

inline std::string_view to_string(PairedInterval i) {
  return i == PairedInterval::bootstrap_percentile ? "paired bootstrap percentile" : "t over seeds";
}

struct PairedOptions {
  double alpha = 0.05;  ///< family-wise level of the top group (Holm)
  double level = 0.95;  ///< confidence level of each (unadjusted) interval
  PairedTest test = PairedTest::automatic;
  int resamples = 2000;                  ///< bootstrap replicates B (used when runs carry per-image bits)
  std::uint64_t seed = 0;                ///< the bootstrap's seed: the same seed, the same numbers
  bool resample_seeds = true;            ///< the bootstrap also resamples seeds (only when R >= 2)
  bool same_images_across_seeds = true;  ///< every seed validated on the same images (the search's case)

  void validate() const {
    if (!(alpha > 0 && alpha < 1))
      throw InputError(fmt::format("paired statistics: alpha must be in (0, 1), got {}", alpha));
    if (!(level > 0 && level < 1))
      throw InputError(fmt::format("paired statistics: level must be in (0, 1), got {}", level));
    if (resamples < 2)
      throw InputError(fmt::format("paired statistics: needs >= 2 bootstrap resamples, got {}", resamples));
  }
};

/// One structure compared with the reference. Accuracies and differences are fractions
/// (0.01 is one percentage point).
struct PairedDifference {
  std::size_t structure = 0;  ///< index in the run table
  std::uint64_t mask = 0;
  int rank = 0;  ///< 1-based, by mean accuracy (ties: table order)
  bool is_reference = false;
  double accuracy = 0;          ///< mean over seeds
  double difference = 0;        ///< mean over seeds of (accuracy - reference's accuracy); 0 for the reference
  double lo = 0, hi = 0;        ///< interval at PairedOptions::level (NaN when none can be made)
  double se = 0;                ///< standard error behind the interval (bootstrap SD, or sd / sqrt(R))
  std::int64_t right_only = 0;  ///< images right here and wrong in the reference, summed over seeds
  std::int64_t wrong_only = 0;  ///< images wrong here and right in the reference, summed over seeds
  double p_mcnemar = std::numeric_limits<double>::quiet_NaN();    ///< NaN without per-image bits
  double p_bootstrap = std::numeric_limits<double>::quiet_NaN();  ///< NaN without per-image bits
  double p_seed_t = std::numeric_limits<double>::quiet_NaN();     ///< NaN with one seed
  double p = 1;           ///< the p-value of the chosen test (1 for the reference)
  double p_adjusted = 1;  ///< Holm-adjusted over the family (1 for the reference)
  bool in_top_group = false;
};

/// Every structure compared with one reference, and the top group.
struct PairedComparison {
  std::size_t reference = 0;
  std::uint64_t reference_mask = 0;
  PairedTest test = PairedTest::automatic;  ///< resolved: never `automatic`
  PairedInterval interval = PairedInterval::bootstrap_percentile;
  double alpha = 0.05, level = 0.95;
  int resamples = 0;  ///< bootstrap replicates (0: no bootstrap)
  int seeds = 0;
  std::size_t images = 0;              ///< validation images per run (0: no per-image bits)
  std::size_t family = 0;              ///< comparisons in the Holm family (structures - 1)
  std::vector<PairedDifference> rows;  ///< table order
  std::vector<std::size_t> top_group;  ///< table indices, by rank (the reference first when it leads)
};

// ---------------------------------------------------------------------------------------
// Building blocks

/// McNemar's exact two-sided p-value for discordant counts b and c.
inline double mcnemar_exact_p(std::int64_t b, std::int64_t c) {
  if (b < 0 || c < 0) throw RuntimeError(fmt::format("McNemar: negative count ({}, {})", b, c));
  return binomial_two_sided_half(std::min(b, c), b + c);
}

/// Holm's step-down adjustment (Holm 1979): with p sorted ascending, p_(i) becomes
/// max_{j <= i} min(1, (m - j + 1) p_(j)), i and j 1-based. Rejecting where the adjusted
/// p-value is below alpha controls the family-wise error at alpha for any dependence
/// between the tests. Equal p-values keep their input order.
inline std::vector<double> holm_adjust(std::span<const double> p) {
  const std::size_t m = p.size();
  for (const double v : p)
    if (!(v >= 0 && v <= 1)) throw RuntimeError(fmt::format("Holm: p-value {} is not in [0, 1]", v));
  std::vector<std::size_t> order(m);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return p[a] < p[b]; });
  std::vector<double> adjusted(m);
  double running = 0;
  for (std::size_t i = 0; i < m; ++i) {
    running = std::max(running, std::min(1.0, double(m - i) * p[order[i]]));
    adjusted[order[i]] = running;
  }
  return adjusted;
}

/// The q-quantile of sorted values by linear interpolation between order statistics
/// (Hyndman and Fan's type 7, numpy's default): position h = (n - 1) q.
inline double sorted_quantile(std::span<const double> sorted, double q) {
  if (sorted.empty()) throw RuntimeError("quantile of no values");
  const double h = double(sorted.size() - 1) * q;
  const auto lo = static_cast<std::size_t>(std::floor(h));
  if (lo + 1 >= sorted.size()) return sorted.back();
  return sorted[lo] + (h - double(lo)) * (sorted[lo + 1] - sorted[lo]);
}

/// The structure with the best mean accuracy (the first in table order on a tie).
inline std::size_t leader(const RunTable& table) {
  const auto acc = table.mean_accuracy();
  return std::size_t(std::max_element(acc.begin(), acc.end()) - acc.begin());  // first maximum
}

/// Kendall's tau-b between the structures' accuracies under each pair of seeds.
struct SeedAgreement {
  struct Pair {
    int a = 0, b = 0;
    double tau = 0;
  };
  std::vector<Pair> pairs;                                     ///< (0,1), (0,2), ..., (R-2, R-1)
  double mean_tau = std::numeric_limits<double>::quiet_NaN();  ///< NaN for one seed
};

inline SeedAgreement seed_rank_agreement(const RunTable& table) {
  SeedAgreement out;
  double sum = 0;
  for (int a = 0; a < table.seeds(); ++a)
    for (int b = a + 1; b < table.seeds(); ++b) {
      out.pairs.push_back({a, b, kendall_tau_b(table.accuracy_of_seed(a), table.accuracy_of_seed(b))});
      sum += out.pairs.back().tau;
    }
  if (!out.pairs.empty()) out.mean_tau = sum / double(out.pairs.size());
  return out;
}

// ---------------------------------------------------------------------------------------
// The paired bootstrap

/// B resampled mean accuracies of every structure, row-major (replicate b, structure s)
/// at b * structures + s. Replicate b, for any B, draws from
///
///   gen = std::mt19937_64(derive_seed(seed, seed_domain::resample, b))
///   seeds:  when R >= 2 and resample_seeds, pick_j = bounded_rand(gen, R) for j = 0..R-1
///           (in that order); otherwise pick_j = j
///   images: with the same images across seeds, N draws i_t = bounded_rand(gen, N) give
///           every image its multiplicity w_i, shared by all picks; otherwise each pick j
///           in turn draws its own N_{pick_j} multiplicities
///   acc*_s = (sum over j of (sum_i w_i correct_{s, pick_j, i}) / N_{pick_j}) / R
///
/// The same draws serve every structure, so differences of two columns are paired
/// resamples (tests/golden/make_paired_stats.py replays this protocol in Python).
inline std::vector<double> bootstrap_accuracies(const RunTable& table, int resamples, std::uint64_t seed,
                                                bool resample_seeds, bool same_images_across_seeds) {
  table.validate(same_images_across_seeds);  // every run filled, image counts consistent
  if (!table.has_correct()) throw InputError("paired bootstrap: needs every run's per-image correctness");
  if (resamples < 1) throw InputError("paired bootstrap: needs >= 1 resample");
  const std::size_t n_structures = table.structures();
  const int n_seeds = table.seeds();
  std::vector<double> out(std::size_t(resamples) * n_structures);

  // Multiplicities as bit planes: bit k of w_i is bit i of plane k, so a weighted count
  // of right images is sum_k 2^k popcount(plane_k & correct).
  struct Planes {
    std::vector<std::vector<std::uint64_t>> planes;
    void build(std::mt19937_64& gen, std::size_t n, std::vector<std::uint32_t>& w) {
      w.assign(n, 0);
      for (std::size_t t = 0; t < n; ++t) ++w[bounded_rand(gen, n)];
      const std::uint32_t max_w = *std::max_element(w.begin(), w.end());
      const auto k_count = std::size_t(std::bit_width(max_w));
      planes.assign(k_count, std::vector<std::uint64_t>((n + 63) / 64, 0));
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t k = 0; k < k_count; ++k)
          if ((w[i] >> k) & 1U) planes[k][i / 64] |= std::uint64_t{1} << (i % 64);
    }
    [[nodiscard]] std::int64_t weighted(const CorrectBits& c) const {
      std::int64_t total = 0;
      for (std::size_t k = 0; k < planes.size(); ++k) {
        std::int64_t n = 0;
        for (std::size_t word = 0; word < c.words().size(); ++word)
          n += std::popcount(planes[k][word] & c.words()[word]);
        total += n << k;
      }
      return total;
    }
  };

  std::vector<int> pick(static_cast<std::size_t>(n_seeds));
  std::vector<std::uint32_t> w;
  Planes shared;
  std::vector<Planes> own(static_cast<std::size_t>(n_seeds));
  std::vector<double> sum(n_structures);
  for (int b = 0; b < resamples; ++b) {
    std::mt19937_64 gen(derive_seed(seed, seed_domain::resample, std::uint64_t(b)));
    for (int j = 0; j < n_seeds; ++j)
      pick[std::size_t(j)] =
          n_seeds >= 2 && resample_seeds ? int(bounded_rand(gen, std::uint64_t(n_seeds))) : j;
    if (same_images_across_seeds) {
      shared.build(gen, table.at(0, 0).correct->size(), w);
    } else {
      for (int j = 0; j < n_seeds; ++j)
        own[std::size_t(j)].build(gen, table.at(0, pick[std::size_t(j)]).correct->size(), w);
    }
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int j = 0; j < n_seeds; ++j) {
      const int r = pick[std::size_t(j)];
      const Planes& planes = same_images_across_seeds ? shared : own[std::size_t(j)];
      for (std::size_t s = 0; s < n_structures; ++s) {
        const CorrectBits& c = *table.at(s, r).correct;
        sum[s] += double(planes.weighted(c)) / double(c.size());
      }
    }
    for (std::size_t s = 0; s < n_structures; ++s)
      out[std::size_t(b) * n_structures + s] = sum[s] / double(n_seeds);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Comparison with a reference, and the top group

namespace detail {

inline PairedTest resolve_test(const RunTable& table, PairedTest requested) {
  const bool bits = table.has_correct();
  if (requested == PairedTest::automatic) {
    if (bits) return PairedTest::bootstrap;
    if (table.seeds() >= 2) return PairedTest::seed_t;
    throw InputError(
        "paired statistics: with one seed and no per-image correctness no two structures can be compared "
        "(record the per-image correctness, or train >= 2 seeds)");
  }
  if ((requested == PairedTest::bootstrap || requested == PairedTest::mcnemar) && !bits)
    throw InputError(fmt::format("paired statistics: the {} needs every run's per-image correctness",
                                 to_string(requested)));
  if (requested == PairedTest::seed_t && table.seeds() < 2)
    throw InputError("paired statistics: the paired t over seeds needs >= 2 seeds");
  return requested;
}

}  // namespace detail

/// Every structure compared with `reference` (a table index), with the top group: the
/// reference and every structure whose Holm-adjusted p-value is >= alpha. Use this with a
/// reference fixed in advance (a baseline); top_group() picks the leader from the data.
inline PairedComparison compare_to_reference(const RunTable& table, std::size_t reference,
                                             const PairedOptions& options = {}) {
  options.validate();
  table.validate(options.same_images_across_seeds);
  if (reference >= table.structures())
    throw InputError(
        fmt::format("paired statistics: reference {} is not a structure of the table", reference));
  const std::size_t n_structures = table.structures();
  const int n_seeds = table.seeds();
  const bool bits = table.has_correct();

  PairedComparison out;
  out.reference = reference;
  out.reference_mask = table.masks()[reference];
  out.test = detail::resolve_test(table, options.test);
  out.interval =
      out.test == PairedTest::seed_t ? PairedInterval::seed_t : PairedInterval::bootstrap_percentile;
  out.alpha = options.alpha;
  out.level = options.level;
  out.resamples = bits ? options.resamples : 0;
  out.seeds = n_seeds;
  out.images = bits ? table.at(0, 0).correct->size() : 0;
  out.family = n_structures - 1;

  const auto acc = table.mean_accuracy();
  std::vector<std::size_t> by_rank(n_structures);
  std::iota(by_rank.begin(), by_rank.end(), std::size_t{0});
  std::stable_sort(by_rank.begin(), by_rank.end(),
                   [&](std::size_t a, std::size_t b) { return acc[a] > acc[b]; });

  std::vector<double> boot;
  if (bits)
    boot = bootstrap_accuracies(table, options.resamples, options.seed, options.resample_seeds,
                                options.same_images_across_seeds);
  const double q_lo = (1 - options.level) / 2;
  const double q_hi = (1 + options.level) / 2;

  out.rows.resize(n_structures);
  for (std::size_t k = 0; k < n_structures; ++k) out.rows[by_rank[k]].rank = int(k) + 1;
  std::vector<double> d(std::size_t(n_seeds), 0.0);
  std::vector<double> diffs(bits ? std::size_t(options.resamples) : 0);
  for (std::size_t s = 0; s < n_structures; ++s) {
    PairedDifference& row = out.rows[s];
    row.structure = s;
    row.mask = table.masks()[s];
    row.accuracy = acc[s];
    row.is_reference = s == reference;
    if (row.is_reference) {
      row.lo = row.hi = row.se = 0;
      continue;
    }
    double mean = 0;
    for (int r = 0; r < n_seeds; ++r) {
      d[std::size_t(r)] = table.at(s, r).accuracy - table.at(reference, r).accuracy;
      mean += d[std::size_t(r)];
    }
    mean /= double(n_seeds);
    row.difference = mean;

    if (bits) {
      for (int r = 0; r < n_seeds; ++r) {
        row.right_only += right_only_in_first(*table.at(s, r).correct, *table.at(reference, r).correct);
        row.wrong_only += right_only_in_first(*table.at(reference, r).correct, *table.at(s, r).correct);
      }
      row.p_mcnemar = mcnemar_exact_p(row.right_only, row.wrong_only);
      for (std::size_t b = 0; b < diffs.size(); ++b)
        diffs[b] = boot[b * n_structures + s] - boot[b * n_structures + reference];
      const auto [boot_mean, boot_sd] = mean_std(diffs);
      (void)boot_mean;
      row.p_bootstrap =
          boot_sd > 0 ? std::erfc(std::abs(mean) / boot_sd / std::numbers::sqrt2) : (mean == 0 ? 1.0 : 0.0);
      std::sort(diffs.begin(), diffs.end());
      row.lo = sorted_quantile(diffs, q_lo);
      row.hi = sorted_quantile(diffs, q_hi);
      row.se = boot_sd;
    }
    if (n_seeds >= 2) {
      const auto [m, sd] = mean_std(d);
      const double se = sd / std::sqrt(double(n_seeds));
      row.p_seed_t = se > 0 ? student_t_two_sided(m / se, n_seeds - 1) : (m == 0 ? 1.0 : 0.0);
      if (out.interval == PairedInterval::seed_t) {
        const double half = se > 0 ? student_t_quantile(q_hi, n_seeds - 1) * se : 0.0;
        row.lo = mean - half;
        row.hi = mean + half;
        row.se = se;
      }
    }
    switch (out.test) {
      case PairedTest::bootstrap:
        row.p = row.p_bootstrap;
        break;
      case PairedTest::mcnemar:
        row.p = row.p_mcnemar;
        break;
      case PairedTest::seed_t:
        row.p = row.p_seed_t;
        break;
      case PairedTest::automatic:
        throw RuntimeError("paired statistics: unresolved test");
    }
  }

  // Holm over the family of comparisons with the reference.
  std::vector<double> family_p;
  std::vector<std::size_t> family_index;
  for (std::size_t s = 0; s < n_structures; ++s)
    if (s != reference) {
      family_p.push_back(out.rows[s].p);
      family_index.push_back(s);
    }
  const auto adjusted = holm_adjust(family_p);
  for (std::size_t k = 0; k < family_index.size(); ++k) {
    auto& row = out.rows[family_index[k]];
    row.p_adjusted = adjusted[k];
    row.in_top_group = adjusted[k] >= options.alpha;
  }
  out.rows[reference].in_top_group = true;
  for (const std::size_t s : by_rank)
    if (out.rows[s].in_top_group) out.top_group.push_back(s);
  return out;
}

/// The top group: the leader (best mean accuracy) compared with every other structure.
/// Mind the winner's curse (this file's header, docs/statistics.md).
inline PairedComparison top_group(const RunTable& table, const PairedOptions& options = {}) {
  table.validate(options.same_images_across_seeds);
  return compare_to_reference(table, leader(table), options);
}

/// One line for a report: what was compared, with which test, correction and interval.
inline std::string describe(const PairedComparison& c) {
  std::string how = std::string(to_string(c.test));
  if (c.resamples > 0 && c.test != PairedTest::seed_t)
    how += fmt::format(", {} resamples of {} images{}", c.resamples, c.images,
                       c.seeds >= 2 ? fmt::format(" and {} seeds", c.seeds) : std::string());
  return fmt::format(
      "top group: {} of {} structures not distinguishable from {:#x} at family-wise level {} ({}; Holm over "
      "{} "
      "comparisons); intervals: {:g}% {}, not adjusted; the leader is chosen from the same data (winner's "
      "curse)",
      c.top_group.size(), c.rows.size(), c.reference_mask, c.alpha, how, c.family, 100 * c.level,
      to_string(c.interval));
}

}  // namespace additive::stats
