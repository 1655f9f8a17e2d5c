// Stochastic gating (docs/stochastic-gating.md): time of one forward + backward at the
// driver's default widths (784 -> d = 128, h = 512, S = 4, L = 2, batch 128, float) with
// masks drawn at keep-probability p = 0.5 exactly as the trainer draws them: one per batch
// (the structured MlpModel step) or one per sample (PerSampleMlp), against the dense step.
// Each iteration draws the masks of the next step (seed 0, steps 0, 1, 2, ...).
//
//   bench_stochastic [--benchmark_filter=merge_only] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "additive/cpu/per_sample.hpp"
#include "additive/exp/train.hpp"

namespace {

using namespace additive;
using T = float;
constexpr Index batch = 128;
constexpr double p = 0.5;

enum class Mode { dense, per_batch, per_sample };

template <class F>
void step(benchmark::State& state, Mode mode) {
  const MlpConfig config{.in_dim = 784, .d = 128, .h = 512, .classes = 10};
  cpu::MlpModel<F, T> model(config, 1);
  cpu::PerSampleMlp<F, T> per_sample(config, 1);
  std::vector<T> params(model.layout().total()), grads(params.size());
  init_mlp_params<T>(config, F::blocks, 1, params);
  std::mt19937_64 rng(2);
  std::vector<T> x(static_cast<std::size_t>(784 * batch));
  for (auto& v : x) v = T(rng() % 256) / T(255);
  std::vector<std::int32_t> y(static_cast<std::size_t>(batch));
  for (auto& v : y) v = static_cast<std::int32_t>(rng() % 10);
  const MatView<const T> xv(x.data(), 784, batch);
  std::vector<typename F::mask_type> masks(static_cast<std::size_t>(batch));
  std::int64_t s = 0;
  for (auto _ : state) {
    std::mt19937_64 gen(gate_seed(0, s++));
    if (mode == Mode::per_sample) {
      for (auto& m : masks) m = draw_mask<typename F::mask_type>(gen, p);
      benchmark::DoNotOptimize(per_sample.forward(masks, params, xv, y));
      per_sample.backward(params, grads);
    } else {
      const auto m = mode == Mode::dense ? F::mask_type::all() : draw_mask<typename F::mask_type>(gen, p);
      benchmark::DoNotOptimize(model.forward(m, params, xv, y));
      model.backward(params, grads);
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

using MergeOnly = MlpFamily<4, 2, GateLayout::merge_only>;
using Branch = MlpFamily<4, 2>;
void merge_only(benchmark::State& state, Mode mode) { step<MergeOnly>(state, mode); }
void branch(benchmark::State& state, Mode mode) { step<Branch>(state, mode); }

}  // namespace

BENCHMARK_CAPTURE(merge_only, dense, Mode::dense)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(merge_only, per_batch, Mode::per_batch)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(merge_only, per_sample, Mode::per_sample)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(branch, dense, Mode::dense)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(branch, per_batch, Mode::per_batch)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(branch, per_sample, Mode::per_sample)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
