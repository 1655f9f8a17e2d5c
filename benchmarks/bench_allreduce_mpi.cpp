// All-reduce bandwidth of MPI (dist/mpi_comm.hpp, MPI_Allreduce in place) against a
// memcpy bound measured in the same run, every rank copying at once. Counters as in
// bench_allreduce (algbw, busbw = algbw * 2(p-1)/p, copy_GBps). Run under mpirun:
//
//   mpirun -n 2 bench_allreduce_mpi [Google Benchmark flags]
//
// Every rank runs every benchmark with a fixed iteration count (Google Benchmark's own
// choice could differ between ranks, and a collective needs all of them); rank 0 reports.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "additive/dist/mpi_comm.hpp"

namespace {

using additive::dist::MpiComm;

MpiComm* world = nullptr;

void mpi_allreduce(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<float> x(bytes / sizeof(float), 0.0f);  // zeros stay zeros
  world->barrier();
  for (auto _ : state) {
    world->all_reduce_sum(std::span<float>(x));
    benchmark::ClobberMemory();
  }
  const int p = world->size();
  state.counters["algbw_GBps"] =
      benchmark::Counter(static_cast<double>(bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["busbw_GBps"] = benchmark::Counter(static_cast<double>(bytes) / 1e9 * 2.0 * (p - 1) / p,
                                                    benchmark::Counter::kIsIterationInvariantRate);
}

void memcpy_bound(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  world->barrier();
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::ClobberMemory();
  }
  world->barrier();
  state.counters["copy_GBps"] =
      benchmark::Counter(static_cast<double>(bytes) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Rank 0 prints; the others run the same benchmarks silently.
class Silent : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  additive::dist::MpiEnvironment env(argc, argv);
  MpiComm comm = MpiComm::world();
  world = &comm;
  benchmark::Initialize(&argc, argv);
  for (long bytes = 4L << 10; bytes <= 64L << 20; bytes *= 4) {
    // About 0.5 GB moved per benchmark: enough iterations to time, the same on every rank.
    const auto iterations = std::clamp<long>((512L << 20) / bytes, 10, 20000);
    benchmark::RegisterBenchmark("mpi_allreduce", mpi_allreduce)
        ->Arg(bytes)
        ->Iterations(iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("memcpy_bound", memcpy_bound)
        ->Arg(bytes)
        ->Iterations(iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  if (comm.rank() == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    Silent silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  return 0;
}
