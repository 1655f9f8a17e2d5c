// The GPU's plain GEMM rate vs our model's training step at large shapes. (1) cuBLASLt
// through cuda::Blas (the model's own GEMM path): C (h, batch) = A^T B with bf16 operands
// and fp32 accumulation/output (also TF32 and fp32 for reference), h = 4096, batch 4096,
// K = d in {1024, 4096}; (2) a training step of the dense MLP (784 -> d 1024, h 4096,
// S = 4, L = 2, batch 4096, bf16, CUDA graph) counted as 3x the forward GEMM FLOPs
// (nn/cost.hpp), and its rate as a fraction of the plain bf16 GEMM rate.
//
//   bench_cuda_gemm [--reps 50] [--json results.jsonl]
#include <cuda_bf16.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "additive/cuda/blas.cuh"
#include "additive/nn/cost.hpp"

#include "cuda_bench.cuh"

using namespace additive;
using Fam = MlpFamily<4, 2>;

namespace {

/// TFLOP/s of C (m, n) = A^T (k, m) B (k, n) in the given operand type.
template <class In>
double gemm_rate(Index m, Index n, Index k, bool tf32, int reps) {
  cuda::Stream stream;
  cuda::Blas blas(stream.get());
  blas.set_tf32(tf32);
  cuda::DeviceBuffer<float> a32(static_cast<std::size_t>(k * m)), b32(static_cast<std::size_t>(k * n));
  cuda::DeviceBuffer<float> c(static_cast<std::size_t>(m * n));
  cuda::fill(a32.view(k, m), 0.01f, stream.get());
  cuda::fill(b32.view(k, n), 0.02f, stream.get());
  cuda::DeviceBuffer<In> a(a32.size()), b(b32.size());
  if constexpr (std::is_same_v<In, __nv_bfloat16>) {
    cuda::to_bf16(a32.data(), a.data(), static_cast<Index>(a32.size()), stream.get());
    cuda::to_bf16(b32.data(), b.data(), static_cast<Index>(b32.size()), stream.get());
  } else {
    a = std::move(a32);
    b = std::move(b32);
  }
  const MatView<const In> av(a.data(), k, m), bv(b.data(), k, n);
  const MatView<float> cv(c.data(), m, n);
  for (int i = 0; i < 3; ++i) blas.gemm_tn(cv, av, bv, 1.0f, 0.0f);
  cuda::Event start(true), stop(true);
  start.record(stream.get());
  for (int i = 0; i < reps; ++i) blas.gemm_tn(cv, av, bv, 1.0f, 0.0f);
  stop.record(stream.get());
  stop.synchronize();
  const double s = stop.elapsed_ms_since(start) / 1e3;
  return 2.0 * double(m) * double(n) * double(k) * reps / s / 1e12;
}

}  // namespace

int main(int argc, char** argv) {
  bench::require_device("bench_cuda_gemm");
  const int reps = std::stoi(bench::flag(argc, argv, "--reps", "50"));
  const std::string json = bench::flag(argc, argv, "--json", "");
  constexpr Index h = 4096, batch = 4096;
  double bf16_at_d = 0;
  constexpr Index d = 1024;
  for (const Index k : {d, Index{4096}}) {
    const double bf16 = gemm_rate<__nv_bfloat16>(h, batch, k, false, reps);
    const double tf32 = gemm_rate<float>(h, batch, k, true, reps);
    const double fp32 = gemm_rate<float>(h, batch, k, false, reps / 5 + 1);
    if (k == d) bf16_at_d = bf16;
    std::printf("GEMM %lldx%lldx%lld: bf16 %7.1f  tf32 %7.1f  fp32 %6.1f TFLOP/s\n",
                static_cast<long long>(h), static_cast<long long>(batch), static_cast<long long>(k), bf16,
                tf32, fp32);
    bench::json_line(json, "{\"bench\": \"cuda_gemm\", \"m\": " + std::to_string(h) +
                               ", \"n\": " + std::to_string(batch) + ", \"k\": " + std::to_string(k) +
                               ", \"bf16_tflops\": " + std::to_string(bf16) + ", \"tf32_tflops\": " +
                               std::to_string(tf32) + ", \"fp32_tflops\": " + std::to_string(fp32) + "}");
  }

  // The model's step at the same shapes.
  const MlpConfig config{.in_dim = 784, .d = d, .h = h, .classes = 10};
  const auto mask = Fam::mask_type(0xff);
  const int steps = 20;
  const auto images = bench::random_images(batch * (steps + 5), 1);
  const auto val_images = bench::random_images(16, 2);
  const DatasetView train_view(images), val_view(val_images);
  for (const auto precision : {cuda::Precision::bf16, cuda::Precision::tf32}) {
    cuda::Trainer<Fam> t(config, mask, TrainOptions{.epochs = 1, .batch = batch, .lr = 1e-4, .seed = 1},
                         RunOptions{.eval_batch = 16, .progress = false},
                         cuda::DeviceOptions{.graphs = true, .precision = precision});
    t.start(std::make_shared<const cuda::DeviceDataset>(train_view),
            std::make_shared<const cuda::DeviceDataset>(val_view));
    for (int i = 0; i < 3; ++i) t.advance();
    t.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) t.advance();
    t.synchronize();
    const double s = bench::seconds_since(t0) / steps;
    const double flops = 3.0 * mlp_cost<Fam>(config, mask, batch).flops_per_sample * double(batch);
    const double rate = flops / s / 1e12;
    std::printf("model step (784 -> %lld, h %lld, S 4, L 2, batch %lld, %s, graph): %.2f ms, %.1f TFLOP/s",
                static_cast<long long>(d), static_cast<long long>(h), static_cast<long long>(batch),
                cuda::to_string(precision), 1e3 * s, rate);
    if (precision == cuda::Precision::bf16)
      std::printf(" = %.0f%% of the plain bf16 GEMM rate", 100 * rate / bf16_at_d);
    std::printf("\n");
    bench::json_line(json, std::string("{\"bench\": \"cuda_model_step\", \"precision\": \"") +
                               cuda::to_string(precision) + "\", \"ms\": " + std::to_string(1e3 * s) +
                               ", \"tflops\": " + std::to_string(rate) +
                               ", \"fraction_of_bf16_gemm\": " + std::to_string(rate / bf16_at_d) + "}");
  }
  return 0;
}
