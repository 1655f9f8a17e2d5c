// Co-training step time (include/additive/exp/cotrain.hpp) on thread ranks: K = 2 ranks,
// each computing the gradient of its half of the global batch on one thread, against one
// rank doing the whole batch (on 1 thread, and on 2 model threads). The default MLP:
// 784 -> d 256, h 1024, S 4, L 2, float, AdamW, global batch 256, the dense structure on
// every rank (so only the parallelism differs). One step = forward + backward on the
// rank's share, the gradient all-reduce, and the AdamW step on every replica. At the end
// it prints the ratio of the step times.
//
//   bench_cotrain [--benchmark_min_time=2] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "additive/dist/thread_comm.hpp"
#include "additive/exp/cotrain.hpp"

namespace {

using namespace additive;
using Family = MlpFamily<4, 2, GateLayout::merge_only>;
using T = float;
using Co = CoTrainer<cpu::MlpModel<Family, T>, dist::ThreadComm>;

constexpr std::int64_t batch = 256;
const MlpConfig config{.in_dim = 784, .d = 256, .h = 1024, .classes = 10};
const TrainOptions train{.batch = batch, .lr = 1e-3, .seed = 1};

/// Seconds per step of the last (measured) run of each (K, threads).
std::map<std::pair<int, int>, double> step_seconds;

ImageDataset random_images(std::int64_t n) {
  ImageDataset d{.count = n, .rows = 28, .cols = 28, .num_classes = 10, .pixels = {}, .labels = {}};
  std::mt19937_64 gen(7);
  d.pixels.resize(static_cast<std::size_t>(n * 784));
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(gen() & 0xff);
  d.labels.resize(static_cast<std::size_t>(n));
  for (auto& l : d.labels) l = static_cast<std::uint8_t>(gen() % 10);
  return d;
}

void cotrain_step(benchmark::State& state) {
  const int K = static_cast<int>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  static const ImageDataset images = random_images(batch);
  const DatasetView data(images);
  std::vector<std::int64_t> positions(batch);
  for (std::int64_t i = 0; i < batch; ++i) positions[static_cast<std::size_t>(i)] = i;
  const auto mask = Family::mask_type(0x3f);  // dense

  // Ranks 1..K-1 on their own threads take exactly as many steps as rank 0 (this thread).
  const auto steps = static_cast<std::int64_t>(state.max_iterations);
  dist::ThreadGroup group(K);
  std::vector<dist::ThreadComm> comms;
  for (int r = 0; r < K; ++r) comms.push_back(group.join(r));
  std::vector<std::jthread> others;
  for (int r = 1; r < K; ++r)
    others.emplace_back([&, r] {
      Co co(comms[static_cast<std::size_t>(r)], config, mask, train, CoTrainOptions{.checksum_every = 0},
            threads);
      for (std::int64_t s = 0; s < steps; ++s) co.train_step(data, positions, T(1e-3));
    });
  Co co(comms[0], config, mask, train, CoTrainOptions{.checksum_every = 0}, threads);
  T loss = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    loss = co.train_step(data, positions, T(1e-3));
    benchmark::DoNotOptimize(loss);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  others.clear();  // joins
  step_seconds[{K, threads}] = seconds / double(state.iterations());
  state.SetItemsProcessed(state.iterations() * batch);  // items_per_second = samples/s
  state.counters["ms_per_step"] = 1e3 * seconds / double(state.iterations());
  state.counters["loss"] = static_cast<double>(loss);
  // Rank 0's wall time inside the gradient all-reduce (waiting for the other rank included).
  state.counters["allreduce_ms"] = 1e3 * co.comm_stats().seconds / double(state.iterations());
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::pair<int, int>> runs{{1, 1}, {1, 2}, {2, 1}};  // (K ranks, threads per rank)
  for (const auto& [K, threads] : runs)
    benchmark::RegisterBenchmark("cotrain_step", cotrain_step)
        ->Args({K, threads})
        ->ArgNames({"K", "threads"})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  const auto one = step_seconds.find({1, 1});
  const auto one2 = step_seconds.find({1, 2});
  const auto two = step_seconds.find({2, 1});
  if (one != step_seconds.end() && two != step_seconds.end())
    std::printf("step time K=2 (1 thread each) / K=1 (1 thread): %.3f (speedup %.2fx)\n",
                two->second / one->second, one->second / two->second);
  if (one2 != step_seconds.end() && two != step_seconds.end())
    std::printf("step time K=2 (1 thread each) / K=1 (2 threads): %.3f\n", two->second / one2->second);
  return 0;
}
