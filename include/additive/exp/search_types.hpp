// The records a structure search produces: one per training run, one per ranked
// structure, and the whole report. The engine (search.hpp) fills them; report.hpp writes
// them out as a terminal leaderboard, JSON, CSV and SVG.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "additive/nn/cost.hpp"
#include "additive/stats/runs.hpp"

namespace additive {

/// One training run of one structure with one seed.
struct RunRecord {
  std::string phase = "short";  ///< "short": a rung of the search; "long": the trust check
  std::uint64_t mask = 0;
  int seed = 0;             ///< index r of the R seeds (the training seed is base + r)
  std::int64_t epochs = 0;  ///< the run's budget: (mask, seed, epochs) names the run
  double val_accuracy = 0;
  double val_loss = 0;
  double train_loss = 0;
  double seconds = 0;  ///< wall time of the run (not part of the results' identity)
  /// Which validation images the run classified right, in the split's order (empty: not
  /// recorded, as by results files of older versions and by the CUDA runner).
  stats::CorrectBits correct{};
};

/// One structure of the leaderboard: a representative of its group of equivalent masks.
struct SearchEntry {
  int rank = 0;  ///< 1-based
  std::uint64_t mask = 0;
  std::string structure;                  ///< "[12|34] . [1234]"
  std::vector<std::uint64_t> equivalent;  ///< other masks computing the same function (not trained)
  int runs = 0;                           ///< seeds trained at the budget below
  std::int64_t epochs = 0;                ///< epochs of each of those runs
  int rung = 0;  ///< the last rung of the race the structure ran in (0-based; without racing 0)
  double acc_mean = 0, acc_std = 0;  ///< validation accuracy over the seeds (std: sample, 0 for one seed)
  double loss_mean = 0, loss_std = 0;
  /// Mean validation accuracy at the first rung, the budget every structure ran with: what
  /// the Pareto front and the accuracy-communication plot compare (NaN: acc_mean is it;
  /// screen_accuracy() reads either).
  double screen_acc = std::numeric_limits<double>::quiet_NaN();
  StructureCost cost;
  bool pareto = false;  ///< on the front of (max screen_acc, min communication)
  /// Paired against the leader of the structure's last rung on the same seeds and images
  /// (stats/paired.hpp), as fractions: the mean accuracy difference (0 for the leader) and
  /// its interval at SearchReport::paired.level, the Holm-adjusted p-value, and whether the
  /// structure is in the top group of the last rung (cannot be told apart from the leader
  /// at SearchReport::paired.alpha). Only structures of the last rung can be in the final
  /// top group; for one dropped at an earlier rung these compare it with that rung's leader.
  double diff = 0;
  double diff_lo = std::numeric_limits<double>::quiet_NaN(),
         diff_hi = std::numeric_limits<double>::quiet_NaN();
  double p_adjusted = std::numeric_limits<double>::quiet_NaN();
  bool top_group = false;
  /// Dropped by the race's cap while still in its rung's top group (not shown worse than
  /// that rung's leader, but not among the best 1/eta by mean accuracy).
  bool cut = false;
};

/// The accuracy every structure has at the same budget (SearchEntry::screen_acc).
inline double screen_accuracy(const SearchEntry& e) {
  return e.screen_acc == e.screen_acc ? e.screen_acc : e.acc_mean;
}

/// One rung of a race (SearchOptions::race): what ran and what went on.
struct RungSummary {
  int seeds = 1;
  std::int64_t epochs = 1;
  std::int64_t structures = 0;  ///< structures trained at this rung
  std::int64_t top_group = 0;   ///< of them, not distinguishable from the rung's leader
  std::int64_t kept = 0;        ///< went on to the next rung (0 at the last)
  double seed_tau = std::numeric_limits<double>::quiet_NaN();  ///< mean Kendall tau between seeds
};

/// How the leaderboard's paired comparisons were made, and what they found.
struct PairedSummary {
  std::string test;                   ///< the p-values' test (stats::to_string(PairedTest))
  std::string interval;               ///< how the intervals were made
  std::string correction = "Holm";    ///< over the comparisons with the leader
  double alpha = 0.05, level = 0.95;  ///< family-wise level of the top group; interval level
  int seeds = 0;
  std::int64_t images = 0;     ///< validation images per run (0: no per-image bits recorded)
  int resamples = 0;           ///< bootstrap replicates (0: no bootstrap)
  std::int64_t top_group = 0;  ///< structures in the top group, the leader included
  double seed_tau =
      std::numeric_limits<double>::quiet_NaN();  ///< mean Kendall tau between seeds (NaN: one seed)
};

/// One term of the gate-effect model (stats/gate_effects.hpp): a gate ("b1 2+3": turning
/// it on changes the mean validation accuracy by `estimate`, a fraction, averaged over the
/// other gates) or an interaction ("b1 2+3 x b2 res").
struct GateEffectRow {
  std::string name;
  double estimate = 0, lo = 0, hi = 0, p = 1;
};

struct GateEffectSummary {
  std::vector<GateEffectRow> terms;  ///< main effects by gate, then selected interactions
  double r2 = 0, adjusted_r2 = 0;    ///< variance between structures explained
  double r2_main = 0;                ///< by the main effects alone
  int residual_df = 0;
  double level = 0.95;
  std::vector<std::string> notes;  ///< gates dropped and why
};

/// Kendall's tau between the ranking after the search budget and after a longer one.
struct RankTrust {
  std::int64_t short_epochs = 0, long_epochs = 0;
  std::vector<std::uint64_t> masks;         ///< the top structures retrained
  std::vector<double> short_acc, long_acc;  ///< same order as masks
  double tau = 0;                           ///< Kendall's tau-b in [-1, 1]
};

struct SearchReport {
  std::string family;                // Family::describe()
  std::int64_t candidates = 0;       ///< structures considered
  std::int64_t trained = 0;          ///< distinct functions trained
  std::vector<SearchEntry> entries;  ///< ranked, best first
  std::optional<RankTrust> trust;
  std::int64_t top_k = 8;
  std::optional<PairedSummary> paired;            ///< with >= 2 structures
  std::optional<GateEffectSummary> gate_effects;  ///< when the fit has residual degrees of freedom
  /// The race, rung by rung (one rung without racing); `paired` describes the last rung,
  /// `gate_effects` the first (where every structure ran with the same budget).
  std::vector<RungSummary> rungs;
  std::int64_t eta = 0;  ///< each rung kept at most ceil(n / eta) structures (0: no race)
  std::string stopped;   ///< why the race ended before its last rung (empty: it ran them all)
};

}  // namespace additive
