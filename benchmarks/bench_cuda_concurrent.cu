// Search throughput on one GPU (structure-epochs/min): the 64 structures of the search's
// default family (S = 4, L = 2, merge gates) trained concurrently by cuda::
// ConcurrentTrainer vs one after another by cuda::Trainer, with the search driver's
// default sizes (784 -> d 128, h 512, batch 128, 12000 training samples, 1 epoch).
// Also checks that both give the same results.
//
//   bench_cuda_concurrent [--structures 64] [--epochs 1] [--samples 12000] [--d 128] [--h 512]
//                         [--batch 128] [--max-active 0] [--json results.jsonl]
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cuda_bench.cuh"

using namespace additive;
using Fam = MlpFamily<4, 2, GateLayout::merge_only>;

int main(int argc, char** argv) {
  bench::require_device("bench_cuda_concurrent");
  auto num = [&](const char* name, const char* fallback) {
    return std::stoll(bench::flag(argc, argv, name, fallback));
  };
  const auto structures = std::min<long long>(num("--structures", "64"), Fam::mask_type::count);
  const auto epochs = num("--epochs", "1");
  const auto samples = num("--samples", "12000");
  const int max_active = static_cast<int>(num("--max-active", "0"));
  const std::string json = bench::flag(argc, argv, "--json", "");
  const MlpConfig config{.in_dim = 784, .d = num("--d", "128"), .h = num("--h", "512"), .classes = 10};
  const TrainOptions o{.epochs = epochs, .batch = num("--batch", "128"), .lr = 2e-3, .seed = 0};
  const RunOptions run{.progress = false};

  const auto images = bench::random_images(samples, 1);
  const auto val_images = bench::random_images(1000, 2);
  const DatasetView train_view(images), val_view(val_images);
  auto train = std::make_shared<const cuda::DeviceDataset>(train_view);
  auto val = std::make_shared<const cuda::DeviceDataset>(val_view);
  std::vector<cuda::ConcurrentJob> jobs;
  for (long long m = 0; m < structures; ++m) jobs.push_back({static_cast<std::uint64_t>(m), o});

  // Warmup (context, cuBLASLt, module load) outside the timings.
  cuda::Trainer<Fam>(config, Fam::mask_type(0), TrainOptions{.epochs = 1, .batch = o.batch}, run)
      .fit(train, val);

  auto t0 = std::chrono::steady_clock::now();
  std::vector<TrainResult> alone;
  for (const auto& j : jobs)
    alone.push_back(cuda::Trainer<Fam>(config, Fam::mask_type(j.mask), o, run).fit(train, val));
  const double sequential = bench::seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  cuda::ConcurrentTrainer<Fam> many(config, run, {}, max_active);
  const auto together = many.fit(jobs, train, val);
  const double concurrent = bench::seconds_since(t0);

  bool same = true;
  for (std::size_t i = 0; i < jobs.size(); ++i)
    same = same && alone[i].epochs.back().val.loss == together[i].epochs.back().val.loss &&
           alone[i].epochs.back().train_loss == together[i].epochs.back().train_loss;
  const double se = double(structures * epochs);
  std::printf("%lld structures x %lld epochs, %lld samples, d %lld h %lld batch %lld, max_active %d\n",
              structures, epochs, samples, static_cast<long long>(config.d), static_cast<long long>(config.h),
              static_cast<long long>(o.batch), max_active);
  std::printf("one after another: %8.2f s  %10.1f structure-epochs/min\n", sequential, 60 * se / sequential);
  std::printf("concurrent:        %8.2f s  %10.1f structure-epochs/min  (x%.2f)\n", concurrent,
              60 * se / concurrent, sequential / concurrent);
  std::printf("results identical: %s\n", same ? "yes" : "NO");
  bench::json_line(json, "{\"bench\": \"cuda_concurrent\", \"structures\": " + std::to_string(structures) +
                             ", \"epochs\": " + std::to_string(epochs) +
                             ", \"max_active\": " + std::to_string(max_active) +
                             ", \"sequential_se_per_min\": " + std::to_string(60 * se / sequential) +
                             ", \"concurrent_se_per_min\": " + std::to_string(60 * se / concurrent) +
                             ", \"identical\": " + (same ? "true" : "false") + "}");
  return same ? 0 : 1;
}
