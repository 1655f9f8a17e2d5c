// Step time (forward + backward) of the tensor-parallel MLP (dist/tensor_parallel.hpp) on
// thread ranks, float: the dense structure (every segment all-reduces, both directions)
// against the all-split one (residuals on, merge gates off: no segment traffic, only the
// logits and replicated-gradient all-reduces). Width d = 256, h = 1024, in_dim = 784,
// 10 classes, batch 64, L = 2; S = 2 and S = 4 ranks, one thread each (one CPU backend
// thread per rank). Counters: segment_MB = ring-model bytes rank 0 sent per step in
// segment all-reduces; allreduces = collectives per step on rank 0.
//
//   bench_tensor_parallel [--benchmark_filter=S4] [Google Benchmark flags]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <span>
#include <thread>
#include <vector>

#include "additive/dist/tensor_parallel.hpp"
#include "additive/dist/thread_comm.hpp"

namespace {

using namespace additive;
using dist::ThreadComm;

const MlpConfig config{.in_dim = 784, .d = 256, .h = 1024, .classes = 10};
constexpr Index batch = 64;

/// Rank 0 is this thread; ranks 1..S-1 run the same number of steps on their own threads
/// (state.max_iterations is known before the loop), so every iteration is one step of all.
template <class F>
void step(benchmark::State& state) {
  constexpr int S = F::shards;
  const bool dense = state.range(0) == 1;
  // Dense: every gate on. All-split: only the residual (branch) gates on.
  std::uint64_t bits = 0;
  for (int l = 0; l < F::blocks; ++l)
    bits |=
        (dense ? F::block_gates::merge_field | (std::uint64_t{1} << (S - 1)) : (std::uint64_t{1} << (S - 1)))
        << (l * F::gates_per_block);
  const typename F::mask_type mask(bits);

  std::vector<float> full(mlp_layout(config, F::blocks).total());
  init_mlp_params<float>(config, F::blocks, 1, full);
  std::vector<float> x(static_cast<std::size_t>(config.in_dim * batch));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 255) / 255.0f;
  std::vector<std::int32_t> y(static_cast<std::size_t>(batch));
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = static_cast<std::int32_t>(i % 10);
  const MatView<const float> xv(x.data(), config.in_dim, batch);

  dist::ThreadGroup group(S);
  auto run_rank = [&](ThreadComm& comm, auto&& loop) {
    dist::TensorParallelMlp<F, float, ThreadComm> tp(config, comm);
    std::vector<float> local(tp.layout().total()), grads(local.size());
    dist::extract_shard<float>(config, F::blocks, S, comm.rank(), full, local);
    auto one_step = [&] {
      tp.forward(mask, local, xv, y);
      tp.backward(local, grads);
    };
    one_step();  // warm-up: workspaces and splits
    comm.barrier();
    loop(one_step, tp);
  };
  ThreadComm root = group.join(0);
  std::vector<std::jthread> others;
  for (int r = 1; r < S; ++r)
    others.emplace_back([&, r, iterations = state.max_iterations] {
      ThreadComm comm = group.join(r);
      run_rank(comm, [&](auto& one_step, auto&) {
        for (benchmark::IterationCount i = 0; i < iterations; ++i) one_step();
      });
    });
  run_rank(root, [&](auto& one_step, auto& tp) {
    for (auto _ : state) one_step();
    state.counters["segment_MB"] =
        (tp.bytes_sent(dist::TpPhase::forward) + tp.bytes_sent(dist::TpPhase::backward)) / 1e6;
    state.counters["allreduces"] = static_cast<double>(tp.collectives().size());
  });
  state.SetLabel(dense ? "dense" : "all-split");
}

BENCHMARK_TEMPLATE(step, MlpFamily<2, 2>)
    ->Name("S2/step")
    ->Arg(1)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_TEMPLATE(step, MlpFamily<4, 2>)
    ->Name("S4/step")
    ->Arg(1)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
