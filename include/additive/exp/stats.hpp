// Statistics the engines report: rank agreement (Kendall's tau-b) and sample summaries.
// They live in stats/descriptive.hpp; this header keeps the engines' spelling
// (`additive::kendall_tau_b`, `additive::mean_std`).
#pragma once

#include "additive/stats/descriptive.hpp"

namespace additive {

using stats::kendall_tau_b;
using stats::mean_std;

}  // namespace additive
