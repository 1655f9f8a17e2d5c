// The records a structure search produces: one per training run, one per ranked
// structure, and the whole report. The engine (search.hpp) fills them; report.hpp writes
// them out as a terminal leaderboard, JSON, CSV and SVG.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "additive/nn/cost.hpp"

namespace additive {

/// One training run of one structure with one seed.
struct RunRecord {
  std::string phase = "short";  ///< "short": the search budget; "long": the trust check
  std::uint64_t mask = 0;
  int seed = 0;  ///< index r of the R seeds (the training seed is base + r)
  double val_accuracy = 0;
  double val_loss = 0;
  double train_loss = 0;
  double seconds = 0;  ///< wall time of the run (not part of the results' identity)
};

/// One structure of the leaderboard: a representative of its group of equivalent masks.
struct SearchEntry {
  int rank = 0;  ///< 1-based
  std::uint64_t mask = 0;
  std::string structure;                  ///< "[12|34] . [1234]"
  std::vector<std::uint64_t> equivalent;  ///< other masks computing the same function (not trained)
  int runs = 0;                           ///< seeds trained
  double acc_mean = 0, acc_std = 0;  ///< validation accuracy over the seeds (std: sample, 0 for one seed)
  double loss_mean = 0, loss_std = 0;
  StructureCost cost;
  bool pareto = false;  ///< on the front of (max accuracy, min communication)
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
};

}  // namespace additive
