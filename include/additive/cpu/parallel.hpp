// Deterministic parallelism for the CPU backend. Work is cut into tasks whose bounds
// depend only on the problem size, never on the thread count; each task runs single-
// threaded code, and partial results are combined in task order. So the same inputs
// give bit-identical results on 1, 2 or 64 threads.
//
// Tasks run on a small pool of threads owned by the calling thread. The caller takes
// part, and tasks are claimed one at a time, so a call returns as soon as every task
// has run: it never waits for a helper that has not started (on a busy machine a
// descheduled helper simply runs nothing; a fork-join team would stall on it at the
// barrier of every call). Which thread runs a task never changes what the task computes.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

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

namespace detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// True on pool helpers, and on a caller while it runs tasks: a nested call runs serially.
inline thread_local bool in_task = false;

/// The helpers of one calling thread. A call publishes a job (a task count and a function);
/// the caller and up to `threads - 1` helpers claim task indices one at a time from one
/// atomic word that carries the job's epoch, so a helper that wakes late cannot claim a
/// task of a finished job (its compare-and-swap fails on the epoch).
class TaskPool {
 public:
  using Call = void (*)(void*, Index);

  TaskPool() = default;
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;
  ~TaskPool() {
    stop_.store(true, std::memory_order_seq_cst);
    signal_.fetch_add(1, std::memory_order_seq_cst);
    signal_.notify_all();
    for (auto& w : workers_) w.join();
  }

  /// The pool of the calling thread (created on first use, joined when the thread exits).
  static TaskPool& local() {
    thread_local TaskPool pool;
    return pool;
  }

  /// Runs call(ctx, t) for t in [0, tasks) on this thread and up to threads - 1 helpers;
  /// returns when every task has finished. `call` must not throw. If the system refuses
  /// a new thread, the job runs on the helpers that exist (possibly none).
  void run(int threads, Index tasks, Call call, void* ctx) {
    try {
      while (workers_.size() < static_cast<std::size_t>(std::max(0, threads - 1))) {
        const int id = static_cast<int>(workers_.size());
        workers_.emplace_back([this, id] { worker_loop(id); });
      }
    } catch (const std::system_error&) {
    }
    const int helpers = std::min(std::max(0, threads - 1), static_cast<int>(workers_.size()));
    // Close the claim word before rewriting the job, publish the job, then open it.
    const std::uint64_t epoch = ++epoch_;
    claim_.store(epoch << 32 | closed, std::memory_order_seq_cst);
    tasks_.store(tasks, std::memory_order_release);
    call_.store(call, std::memory_order_release);
    ctx_.store(ctx, std::memory_order_release);
    helpers_.store(helpers, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    claim_.store(epoch << 32, std::memory_order_seq_cst);
    signal_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) signal_.notify_all();

    in_task = true;
    work(-1);
    in_task = false;
    // Wait for the tasks that helpers claimed. Spin briefly, then let others run.
    for (int spins = 0; done_.load(std::memory_order_acquire) < tasks; ++spins) {
      if (spins < spin_limit)
        cpu_relax();
      else
        std::this_thread::yield();
    }
  }

 private:
  static constexpr std::uint64_t closed = 0xffffffffu;  // next-task field of a closed job
  static constexpr int spin_limit = 4096;

  /// Claims and runs tasks of the current job until none is left. id -1 is the caller.
  void work(int id) noexcept {
    for (;;) {
      std::uint64_t c = claim_.load(std::memory_order_acquire);
      const Index tasks = tasks_.load(std::memory_order_acquire);
      const Call call = call_.load(std::memory_order_acquire);
      void* const ctx = ctx_.load(std::memory_order_acquire);
      const int helpers = helpers_.load(std::memory_order_acquire);
      const auto next = static_cast<Index>(c & 0xffffffffu);
      if (id >= helpers || next >= tasks) return;
      // Succeeds only if the job read above is still the open one.
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_relaxed))
        continue;
      call(ctx, next);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void worker_loop(int id) noexcept {
    in_task = true;
    std::uint32_t seen = signal_.load(std::memory_order_seq_cst);
    for (;;) {
      if (stop_.load(std::memory_order_seq_cst)) return;
      work(id);
      // Wait for the next job: spin for a while (jobs of one step follow each other
      // closely), then sleep on the signal word.
      int spins = 0;
      while (signal_.load(std::memory_order_acquire) == seen && spins < spin_limit) {
        cpu_relax();
        ++spins;
      }
      if (signal_.load(std::memory_order_seq_cst) == seen) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        signal_.wait(seen, std::memory_order_seq_cst);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      seen = signal_.load(std::memory_order_seq_cst);
    }
  }

  std::atomic<std::uint64_t> claim_{closed};  // epoch << 32 | next task
  std::atomic<Index> tasks_{0};
  std::atomic<Call> call_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int> helpers_{0};
  std::atomic<Index> done_{0};
  std::atomic<std::uint32_t> signal_{0};  // bumped per job; helpers sleep on it
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::uint64_t epoch_ = 0;  // written by the owning thread only
  std::vector<std::thread> workers_;
};

}  // namespace detail

/// Runs fn(task) for task in [0, tasks) on up to `threads` threads (the caller included).
/// Tasks must be independent and must not throw. Nested calls (from inside a task, or
/// from inside an OpenMP parallel region) run serially on the calling thread.
template <class Fn>
void parallel_tasks(int threads, Index tasks, Fn&& fn) {
  if (tasks <= 0) return;
  // (The pool counts tasks in 32 bits.)
  bool serial =
      threads <= 1 || tasks <= 1 || static_cast<std::uint64_t>(tasks) >= 0xffffffffu || detail::in_task;
#if defined(_OPENMP)
  serial = serial || omp_in_parallel();
#endif
  if (serial) {
    for (Index t = 0; t < tasks; ++t) fn(t);
    return;
  }
  using F = std::remove_reference_t<Fn>;
  detail::TaskPool::local().run(
      static_cast<int>(std::min<Index>(threads, tasks)), tasks,
      [](void* ctx, Index t) { (*static_cast<F*>(ctx))(t); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

/// Runs fn(first, count) over fixed chunks of [0, n).
template <class Fn>
void parallel_chunks(int threads, Index n, Index grain, Fn&& fn) {
  parallel_tasks(threads, task_count(n, grain), [&](Index t) {
    const Index first = t * grain;
    fn(first, std::min(grain, n - first));
  });
}

/// Threads the machine offers, at least 1.
[[nodiscard]] inline int hardware_threads() noexcept {
#if defined(_OPENMP)
  return std::max(1, omp_get_num_procs());
#else
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#endif
}

}  // namespace additive::cpu
