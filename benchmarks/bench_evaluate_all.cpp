// All-structure evaluation on shared weights (exp/evaluate_all.hpp): every structure of a
// family scored on the same random data, one MlpModel forward per structure ("naive")
// against the prefix-tree plan ("tree"). Float, chunks of 256 samples (both methods; the
// environment variable ADDITIVE_BENCH_CHUNK sets another size).
//
//   search:     MlpFamily<4, 2, merge_only> (64 structures), 784 -> d 128, h 512, 2048 samples
//   foundation: MlpFamily<4, 2> (256 masks), 784 -> d 256, h 1024, 512 samples
//
// Counters: structures/s (whole data set each), flop_ratio = naive GEMM FLOPs / tree GEMM
// FLOPs (the speedup bound if both ran at the same FLOP rate). After the runs a summary
// prints the measured speedup and its share of that bound per case and thread count.
//
//   bench_evaluate_all [--benchmark_filter=search] [Google Benchmark flags]
//   bench_evaluate_all --paired=N [--case=search|foundation] [--threads=T]
//
// --paired=N: on a shared machine the speed drifts between the minutes the runs above take,
// so this mode alternates the methods instead: N rounds of one naive run next to the median
// of five tree runs, in one process, and prints each round's CPU-time speedup and the
// median over rounds as a share of the FLOP-ratio bound. ADDITIVE_BENCH_TREE_BLOCK sets the
// tree's block (EvalAllOptions::tree_block; default 64 per thread).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "additive/exp/evaluate_all.hpp"

namespace {

using namespace additive;
using T = float;
using SearchFamily = MlpFamily<4, 2, GateLayout::merge_only>;
using FoundationFamily = MlpFamily<4, 2>;

const MlpConfig search_config{.in_dim = 784, .d = 128, .h = 512, .classes = 10};
const MlpConfig foundation_config{.in_dim = 784, .d = 256, .h = 1024, .classes = 10};

ImageDataset random_images(std::int64_t count, std::uint64_t seed) {
  ImageDataset ds;
  ds.count = count;
  ds.rows = 28;
  ds.cols = 28;
  ds.num_classes = 10;
  std::mt19937_64 rng(seed);
  ds.pixels.resize(static_cast<std::size_t>(count * 784));
  for (auto& p : ds.pixels) p = static_cast<std::uint8_t>(rng() % 256);
  ds.labels.resize(static_cast<std::size_t>(count));
  for (auto& l : ds.labels) l = static_cast<std::uint8_t>(rng() % 10);
  return ds;
}

/// Samples per chunk for both methods: 256, or the environment variable ADDITIVE_BENCH_CHUNK.
Index bench_chunk() {
  const char* env = std::getenv("ADDITIVE_BENCH_CHUNK");
  return env != nullptr ? Index(std::atol(env)) : Index(256);
}

// Seconds per evaluation of every run, for the summary: (case, threads, method).
std::map<std::tuple<std::string, int, int>, std::pair<double, double>> seconds;  // wall, CPU
std::map<std::string, double> flop_ratio;

/// Every structure of family F, its initial weights and `samples` random images.
template <class F>
struct Problem {
  DatasetView data;
  std::vector<T> params;
  std::vector<std::uint64_t> masks;

  Problem(const MlpConfig& config, std::int64_t samples)
      : data(limit(DatasetView(images()), samples)),
        params(mlp_layout(config, F::blocks).total()),
        masks(std::size_t{1} << F::gates) {
    init_mlp_params<T>(config, F::blocks, 1, params);
    for (std::size_t i = 0; i < masks.size(); ++i) masks[i] = i;
  }
  static const ImageDataset& images() {
    static const ImageDataset all = random_images(2048, 7);
    return all;
  }
};

template <class F>
void evaluate_all(benchmark::State& state, const std::string& name, const MlpConfig& config,
                  std::int64_t samples, EvalMethod method) {
  const int threads = static_cast<int>(state.range(0));
  const Problem<F> problem(config, samples);
  const auto& [data, params, masks] = problem;
  const EvalAllOptions options{.threads = threads, .chunk = bench_chunk(), .method = method};

  double mean_loss = 0;
  for (auto _ : state) {
    const auto results = evaluate_structures<cpu::MlpModel<F, T>>(config, params, data, masks, options);
    mean_loss = 0;
    for (const auto& r : results) mean_loss += r.loss / double(results.size());
    benchmark::DoNotOptimize(results.data());
  }
  const auto flops = evaluate_flops<F>(config, masks);
  const double ratio = flops.ratio();
  state.counters["structures/s"] =
      benchmark::Counter(double(masks.size()) * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter((method == EvalMethod::naive ? flops.naive : flops.tree) *
                                                     double(samples) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
  state.counters["flop_ratio"] = ratio;
  state.counters["mean_loss"] = mean_loss;
  flop_ratio[name] = ratio;
  state.SetLabel(std::to_string(masks.size()) + " structures x " + std::to_string(samples) + " samples");
}

/// Process CPU seconds of one evaluation of every structure.
template <class F>
double cpu_seconds(const MlpConfig& config, const DatasetView& data, const std::vector<T>& params,
                   const std::vector<std::uint64_t>& masks, const EvalAllOptions& options) {
  const std::clock_t start = std::clock();
  const auto results = evaluate_structures<cpu::MlpModel<F, T>>(config, params, data, masks, options);
  benchmark::DoNotOptimize(results.data());
  return double(std::clock() - start) / CLOCKS_PER_SEC;
}

/// The --paired mode (see the top of the file).
template <class F>
void paired(const std::string& name, const MlpConfig& config, std::int64_t samples, int threads, int rounds) {
  const Problem<F> problem(config, samples);
  const auto& [data, params, masks] = problem;
  const double bound = evaluate_flops<F>(config, masks).ratio();
  EvalAllOptions naive{.threads = threads, .chunk = bench_chunk(), .method = EvalMethod::naive};
  EvalAllOptions tree = naive;
  tree.method = EvalMethod::prefix_tree;
  if (const char* env = std::getenv("ADDITIVE_BENCH_TREE_BLOCK")) tree.tree_block = std::atoll(env);
  (void)cpu_seconds<F>(config, data, params, masks, tree);  // warm-up
  const Index block = tree.tree_block > 0 ? tree.tree_block : cpu::column_task * threads;
  std::printf("%s, %d thread(s), chunk %lld, tree block %lld, FLOP-ratio bound %.2f\n", name.c_str(), threads,
              static_cast<long long>(bench_chunk()), static_cast<long long>(block), bound);
  std::printf("%6s %13s %12s %8s %9s\n", "round", "naive cpu ms", "tree cpu ms", "speedup", "of bound");
  std::vector<double> speedups;
  for (int r = 0; r < rounds; ++r) {
    const double n = cpu_seconds<F>(config, data, params, masks, naive);
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) t.push_back(cpu_seconds<F>(config, data, params, masks, tree));
    std::nth_element(t.begin(), t.begin() + 2, t.end());
    speedups.push_back(n / t[2]);
    std::printf("%6d %13.1f %12.1f %8.2f %8.0f%%\n", r + 1, n * 1e3, t[2] * 1e3, n / t[2],
                100 * n / t[2] / bound);
    std::fflush(stdout);
  }
  std::sort(speedups.begin(), speedups.end());
  const double median = speedups[speedups.size() / 2];
  std::printf("median speedup %.2f = %.0f%% of the bound (range %.0f-%.0f%%)\n", median, 100 * median / bound,
              100 * speedups.front() / bound, 100 * speedups.back() / bound);
}

/// Wall seconds per iteration of every run, kept for the summary.
class Collector : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.run_type != Run::RT_Iteration || run.iterations == 0) continue;
      const std::string full = run.benchmark_name();  // evaluate_all/<case>/<method>/threads:N/...
      const auto a = full.find('/'), b = full.find('/', a + 1), c = full.find('/', b + 1);
      const std::string name = full.substr(a + 1, b - a - 1);
      const std::string method = full.substr(b + 1, c - b - 1);
      const int threads = std::stoi(full.substr(full.find("threads:") + 8));
      seconds[{name, threads, method == "naive" ? 0 : 1}] = {
          run.real_accumulated_time / double(run.iterations),
          run.cpu_accumulated_time / double(run.iterations)};
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  struct Case {
    std::string name;
    std::int64_t samples;
    void (*fn)(benchmark::State&, const std::string&, const MlpConfig&, std::int64_t, EvalMethod);
    const MlpConfig* config;
  };
  const std::vector<Case> cases = {
      {"search", 2048, &evaluate_all<SearchFamily>, &search_config},
      {"foundation", 512, &evaluate_all<FoundationFamily>, &foundation_config},
  };
  for (const auto& c : cases)
    for (const auto method : {EvalMethod::naive, EvalMethod::prefix_tree}) {
      const std::string mname = method == EvalMethod::naive ? "naive" : "tree";
      benchmark::RegisterBenchmark(
          ("evaluate_all/" + c.name + "/" + mname).c_str(),
          [c, method](benchmark::State& s) { c.fn(s, c.name, *c.config, c.samples, method); })
          ->ArgName("threads")
          ->ArgsProduct({{1, 2}})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MeasureProcessCPUTime()
          ->MinTime(method == EvalMethod::naive ? 0.5 : 1.0);
    }
  int rounds = 0, threads = 1;
  std::string only = "search";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--paired=", 0) == 0) rounds = std::atoi(arg.c_str() + 9);
    if (arg.rfind("--case=", 0) == 0) only = arg.substr(7);
    if (arg.rfind("--threads=", 0) == 0) threads = std::atoi(arg.c_str() + 10);
  }
  if (rounds > 0) {
    if (threads < 1 || (only != "search" && only != "foundation")) {
      std::fprintf(stderr,
                   "bench_evaluate_all: --paired needs --case=search|foundation and --threads >= 1\n");
      return 1;
    }
    if (only == "search")
      paired<SearchFamily>(only, search_config, 2048, threads, rounds);
    else
      paired<FoundationFamily>(only, foundation_config, 512, threads, rounds);
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  // Speedup by wall time, and by process CPU time (what counts on a shared machine).
  std::printf("\n%-12s %7s %10s %10s %8s %12s %12s %8s %10s %9s\n", "case", "threads", "naive ms", "tree ms",
              "speedup", "naive cpu ms", "tree cpu ms", "cpu x", "flop ratio", "of bound");
  for (const auto& [key, naive] : seconds) {
    const auto& [name, threads, method] = key;
    if (method != 0) continue;
    const auto it = seconds.find({name, threads, 1});
    if (it == seconds.end()) continue;
    const auto [tree_wall, tree_cpu] = it->second;
    const double bound = flop_ratio[name];
    std::printf("%-12s %7d %10.1f %10.1f %8.2f %12.1f %12.1f %8.2f %10.2f %4.0f/%3.0f%%\n", name.c_str(),
                threads, naive.first * 1e3, tree_wall * 1e3, naive.first / tree_wall, naive.second * 1e3,
                tree_cpu * 1e3, naive.second / tree_cpu, bound, 100 * naive.first / tree_wall / bound,
                100 * naive.second / tree_cpu / bound);
  }
  return 0;
}
