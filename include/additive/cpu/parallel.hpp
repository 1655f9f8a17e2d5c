// Deterministic parallelism for the CPU backend. Work is cut into tasks whose bounds
// depend only on the problem size, never on the thread count; each task runs single-
// threaded code, and partial results are combined in task order. So the same inputs
// give bit-identical results on 1, 2 or 64 threads.
#pragma once

#include <algorithm>

#include "additive/core/view.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace additive::cpu {

/// Columns per task for batch-parallel work. A multiple of every Eigen register block.
inline constexpr Index column_task = 64;

/// Number of fixed-size tasks covering n items.
[[nodiscard]] constexpr Index task_count(Index n, Index grain = column_task) noexcept {
  return n <= 0 ? 0 : (n + grain - 1) / grain;
}

/// Runs fn(task) for task in [0, tasks) on up to `threads` threads.
/// Tasks must be independent and must not throw.
template <class Fn>
void parallel_tasks(int threads, Index tasks, Fn&& fn) {
  if (tasks <= 0) return;
#if defined(_OPENMP)
  if (threads > 1 && tasks > 1) {
    const int team = static_cast<int>(std::min<Index>(threads, tasks));
#pragma omp parallel for num_threads(team) schedule(static)
    for (Index t = 0; t < tasks; ++t) fn(t);
    return;
  }
#endif
  (void)threads;
  for (Index t = 0; t < tasks; ++t) fn(t);
}

/// Runs fn(first, count) over fixed chunks of [0, n).
template <class Fn>
void parallel_chunks(int threads, Index n, Index grain, Fn&& fn) {
  parallel_tasks(threads, task_count(n, grain), [&](Index t) {
    const Index first = t * grain;
    fn(first, std::min(grain, n - first));
  });
}

/// Threads the machine offers (OpenMP's view), at least 1.
[[nodiscard]] inline int hardware_threads() noexcept {
#if defined(_OPENMP)
  return std::max(1, omp_get_num_procs());
#else
  return 1;
#endif
}

}  // namespace additive::cpu
