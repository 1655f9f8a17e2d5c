// All-reduce bandwidth of the thread ring (in-process ranks, dist/thread_comm.hpp) against
// a memcpy bound measured in the same run; bench_allreduce_mpi is the MPI counterpart.
// Sizes 4 KiB .. 64 MiB of float, 2 ranks (threads). Counters:
//   algbw  bytes / time                          (what one rank's buffer sees)
//   busbw  algbw * 2(p-1)/p                      (bytes each rank moves in a ring; NCCL's
//                                                 convention, comparable to memcpy's GB/s)
//   memcpy: bytes / time of one memcpy per iteration, 1 thread and 2 threads (each its
//   own buffers): a bound for busbw, since a ring step is at best a copy.
//
//   bench_allreduce [--benchmark_filter=thread_ring] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

#include "additive/dist/thread_comm.hpp"

namespace {

using additive::dist::ThreadComm;

constexpr int ranks = 2;

void set_counters(benchmark::State& state, double bytes, int p) {
  state.counters["algbw_GBps"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["busbw_GBps"] =
      benchmark::Counter(bytes / 1e9 * 2.0 * (p - 1) / p, benchmark::Counter::kIsIterationInvariantRate);
}

/// This thread is rank 0; ranks 1..p-1 are threads that run the same number of
/// all-reduces (state.max_iterations, known before the loop), so every iteration is one
/// collective of all ranks, timed on rank 0.
void thread_ring(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  const std::size_t n = bytes / sizeof(float);
  additive::dist::ThreadGroup group(ranks);
  std::vector<std::vector<float>> buffers(ranks, std::vector<float>(n, 0.0f));  // zeros stay zeros
  ThreadComm root = group.join(0);
  {
    std::vector<std::jthread> others;
    for (int r = 1; r < ranks; ++r)
      others.emplace_back([&, r, iterations = state.max_iterations] {
        ThreadComm comm = group.join(r);
        comm.barrier();
        for (benchmark::IterationCount i = 0; i < iterations; ++i)
          comm.all_reduce_sum(std::span<float>(buffers[static_cast<std::size_t>(r)]));
      });
    root.barrier();  // all ranks started
    for (auto _ : state) {
      root.all_reduce_sum(std::span<float>(buffers[0]));
      benchmark::ClobberMemory();
    }
  }
  set_counters(state, static_cast<double>(bytes), ranks);
}

void memcpy_bound(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  std::vector<std::vector<char>> src(static_cast<std::size_t>(threads), std::vector<char>(bytes, 1));
  std::vector<std::vector<char>> dst(static_cast<std::size_t>(threads), std::vector<char>(bytes, 0));
  if (threads == 1) {
    for (auto _ : state) {
      std::memcpy(dst[0].data(), src[0].data(), bytes);
      benchmark::ClobberMemory();
    }
  } else {
    // Both threads copy at once, each its own buffers, in lock step (a barrier per copy).
    additive::dist::ThreadGroup group(threads);
    ThreadComm root = group.join(0);
    std::vector<std::jthread> others;
    for (int t = 1; t < threads; ++t)
      others.emplace_back([&, t, iterations = state.max_iterations] {
        ThreadComm comm = group.join(t);
        comm.barrier();
        for (benchmark::IterationCount i = 0; i < iterations; ++i) {
          std::memcpy(dst[static_cast<std::size_t>(t)].data(), src[static_cast<std::size_t>(t)].data(),
                      bytes);
          comm.barrier();
        }
      });
    root.barrier();
    for (auto _ : state) {
      std::memcpy(dst[0].data(), src[0].data(), bytes);
      root.barrier();
    }
  }
  state.counters["copy_GBps"] =
      benchmark::Counter(static_cast<double>(bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void sizes(benchmark::internal::Benchmark* b) {
  for (long bytes = 4L << 10; bytes <= 64L << 20; bytes *= 4) b->Arg(bytes);
}
void sizes_threads(benchmark::internal::Benchmark* b) {
  for (const long threads : {1L, 2L})
    for (long bytes = 4L << 10; bytes <= 64L << 20; bytes *= 4) b->Args({bytes, threads});
}

BENCHMARK(thread_ring)->Apply(sizes)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(memcpy_bound)->Apply(sizes_threads)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
