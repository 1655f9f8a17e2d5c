// Training-step throughput (samples/s) of the default MLP model: 784 -> d = 256, h = 1024,
// S = 4 shards, L = 2 blocks, batch 256, float. One step = forward + backward + AdamW step,
// on one fixed batch (the data pipeline is not measured). benchmarks/pytorch_peer.py runs
// the same model in PyTorch; scripts/bench.sh runs both side by side (benchmarks/RESULTS.md).
//
//   bench_train_step [--benchmark_filter=train_step/dense/threads:2] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "additive/cpu/mlp_model.hpp"
#include "additive/optim/adamw.hpp"

namespace {

using namespace additive;
using Family = MlpFamily<4, 2>;
using T = float;

constexpr Index batch = 256;
constexpr std::uint64_t seed = 1;

/// The structures of the issue: dense, all-split, and two mixed ones.
struct Case {
  const char* name;
  std::uint64_t bits;
};
constexpr Case cases[] = {
    {"dense", 0xff},      // [1234] res=1 . [1234] res=1
    {"all_split", 0x88},  // [1|2|3|4] res=1 . [1|2|3|4] res=1
    {"mixed_dd", 0xdd},   // [12|34] res=1 . [12|34] res=1
    {"mixed_ad", 0xad},   // [12|34] res=1 . [1|23|4] res=1
};

void train_step(benchmark::State& state, std::uint64_t bits) {
  const int threads = static_cast<int>(state.range(0));
  const MlpConfig config{.in_dim = 784, .d = 256, .h = 1024, .classes = 10};
  const auto mask = Family::mask_type(bits);

  cpu::MlpModel<Family, T> model(config, threads);
  std::vector<T> params(model.layout().total()), grads(model.layout().total());
  init_mlp_params<T>(config, Family::blocks, seed, params);
  AdamW<T> optimizer(model.layout(), AdamWConfig{.weight_decay = 0.01});
  optimizer.set_threads(threads);

  // Pixels in [0, 1] and labels in [0, 10): (in_dim, batch) column-major, as a real batch.
  std::mt19937_64 rng(seed + 1);
  std::uniform_real_distribution<T> pixel(0, 1);
  std::uniform_int_distribution<std::int32_t> label(0, static_cast<std::int32_t>(config.classes) - 1);
  std::vector<T> x(static_cast<std::size_t>(config.in_dim * batch));
  std::vector<std::int32_t> y(static_cast<std::size_t>(batch));
  for (auto& v : x) v = pixel(rng);
  for (auto& v : y) v = label(rng);
  const MatView<const T> xv(x.data(), config.in_dim, batch);

  T loss = 0;
  for (auto _ : state) {
    loss = model.forward(mask, params, xv, y);
    model.backward(params, grads);
    optimizer.step(params, grads, T(1e-3));
    benchmark::DoNotOptimize(params.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * batch);  // items_per_second = samples/s
  state.counters["loss"] = static_cast<double>(loss);
  state.SetLabel(Family::to_string(mask));
}

}  // namespace

int main(int argc, char** argv) {
  // 1 and 2 threads, and every thread of the machine.
  std::vector<std::int64_t> threads{1, 2};
  if (const int all = cpu::hardware_threads(); all > 2) threads.push_back(all);
  for (const Case& c : cases)
    benchmark::RegisterBenchmark((std::string("train_step/") + c.name).c_str(), train_step, c.bits)
        ->ArgName("threads")
        ->ArgsProduct({threads})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()             // wall time: the step uses several threads
        ->MeasureProcessCPUTime();  // CPU time of all of them
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
