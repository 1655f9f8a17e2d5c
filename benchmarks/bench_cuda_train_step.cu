// GPU training-step throughput (samples/s) of the default MLP model (784 -> d 256, h 1024,
// S = 4, L = 2), the GPU counterpart of bench_train_step: one step = batch gather on the
// device + forward + backward + AdamW, through cuda::Trainer (cuda/train.cuh), for batch
// 256 and 4096, GEMM precision fp32 / TF32 / bf16, CUDA graph replay vs plain launches.
//
//   bench_cuda_train_step [--steps 200] [--json results.jsonl]
#include <cstdio>
#include <memory>
#include <string>

#include "cuda_bench.cuh"

using namespace additive;
using Fam = MlpFamily<4, 2>;

int main(int argc, char** argv) {
  bench::require_device("bench_cuda_train_step");
  const int steps = std::stoi(bench::flag(argc, argv, "--steps", "200"));
  const std::string json = bench::flag(argc, argv, "--json", "");
  const MlpConfig config{.in_dim = 784, .d = 256, .h = 1024, .classes = 10};
  std::printf("%-10s %-6s %-6s %-7s %14s %12s\n", "structure", "batch", "prec", "graphs", "samples/s",
              "ms/step");
  for (const std::int64_t batch : {256, 4096}) {
    // One epoch longer than the warmup and the timed steps: no evaluation inside.
    const auto images = bench::random_images(batch * (steps + 20), 1);
    const auto val_images = bench::random_images(16, 2);
    const DatasetView train_view(images), val_view(val_images);
    auto train = std::make_shared<const cuda::DeviceDataset>(train_view);
    auto val = std::make_shared<const cuda::DeviceDataset>(val_view);
    for (const std::uint64_t bits : {0xffULL, 0x88ULL}) {
      for (const auto precision : {cuda::Precision::fp32, cuda::Precision::tf32, cuda::Precision::bf16}) {
        for (const bool graphs : {false, true}) {
          const TrainOptions o{.epochs = 1, .batch = batch, .lr = 1e-3, .seed = 1};
          cuda::Trainer<Fam> t(config, Fam::mask_type(bits), o,
                               RunOptions{.eval_batch = 16, .progress = false},
                               cuda::DeviceOptions{.graphs = graphs, .precision = precision});
          t.start(train, val);
          for (int i = 0; i < 10; ++i) t.advance();  // warmup: captures, cuBLASLt heuristics
          t.synchronize();
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < steps; ++i) t.advance();
          t.synchronize();
          const double s = bench::seconds_since(t0);
          const double rate = double(steps) * double(batch) / s;
          const std::string name = bits == 0xff ? "dense" : "all_split";
          std::printf("%-10s %-6lld %-6s %-7s %14.0f %12.3f\n", name.c_str(), static_cast<long long>(batch),
                      cuda::to_string(precision), graphs ? "yes" : "no", rate, 1e3 * s / steps);
          std::fflush(stdout);
          bench::json_line(json, "{\"bench\": \"cuda_train_step\", \"structure\": \"" + name +
                                     "\", \"batch\": " + std::to_string(batch) + ", \"precision\": \"" +
                                     cuda::to_string(precision) +
                                     "\", \"graphs\": " + (graphs ? "true" : "false") +
                                     ", \"samples_per_second\": " + std::to_string(rate) + "}");
        }
      }
    }
  }
  return 0;
}
