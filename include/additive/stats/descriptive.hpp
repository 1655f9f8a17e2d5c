// Sample summaries and rank agreement: mean and standard deviation, Kendall's tau-b.
// (Formerly exp/stats.hpp, which still includes this header and brings the names into
// namespace additive for the engines that use them.)
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace additive::stats {

/// Kendall's tau-b of two paired samples (ties in either handled); 0 when undefined.
inline double kendall_tau_b(const std::vector<double>& a, const std::vector<double>& b) {
  std::int64_t concordant = 0, discordant = 0, ties_a = 0, ties_b = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    for (std::size_t j = i + 1; j < a.size(); ++j) {
      const double da = a[i] - a[j];
      const double db = b[i] - b[j];
      if (da == 0 && db == 0) continue;
      if (da == 0) {
        ++ties_a;
      } else if (db == 0) {
        ++ties_b;
      } else if ((da > 0) == (db > 0)) {
        ++concordant;
      } else {
        ++discordant;
      }
    }
  const auto n1 = double(concordant + discordant + ties_a);
  const auto n2 = double(concordant + discordant + ties_b);
  return n1 > 0 && n2 > 0 ? double(concordant - discordant) / std::sqrt(n1 * n2) : 0.0;
}

/// Mean and sample standard deviation (n - 1; 0 for one value) of a non-empty sample.
inline std::pair<double, double> mean_std(const std::vector<double>& v) {
  double mean = 0;
  for (const double x : v) mean += x;
  mean /= double(v.size());
  double var = 0;
  for (const double x : v) var += (x - mean) * (x - mean);
  return {mean, v.size() > 1 ? std::sqrt(var / double(v.size() - 1)) : 0.0};
}

}  // namespace additive::stats
