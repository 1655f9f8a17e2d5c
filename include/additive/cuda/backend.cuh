// The CUDA backend: the primitives of the CPU backend (cpu/backend.hpp) under the same
// names and shape conventions, on device memory, in order on one owned stream. GEMMs go
// through cuBLASLt (blas.cuh), the rest through kernels.cuh. fp32 only; TF32 optional.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <type_traits>

#include "additive/core/view.hpp"
#include "additive/cuda/blas.cuh"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/kernels.cuh"
#include "additive/cuda/stream.cuh"

namespace additive::cuda {

/// What the backend has launched (the CPU backend's Counters, for the same tests).
struct Counters {
  std::uint64_t gemms = 0;  ///< GEMM calls
  double gemm_flops = 0;    ///< 2*M*N*K summed over those calls
  void reset() noexcept { *this = Counters{}; }
};

template <class T>
class Backend {
  static_assert(std::is_same_v<T, float>, "cuda::Backend<T>: the GPU path computes in fp32 (T = float)");

 public:
  using scalar_type = T;

  Backend() : blas_(stream_.get()) {}

  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_.get(); }
  [[nodiscard]] Blas& blas() noexcept { return blas_; }
  [[nodiscard]] const Counters& counters() const noexcept { return counters_; }
  void reset_counters() noexcept { counters_.reset(); }
  void synchronize() const { stream_.synchronize(); }

  // ---- GEMM, three shapes (see CpuBackend). beta is 0 (write) or 1 (accumulate). ----
  void gemm_tn(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta) {
    count(c.rows, c.cols, a.rows);
    blas_.gemm_tn(c, a, b, alpha, beta);
  }
  void gemm_nn(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta) {
    count(c.rows, c.cols, a.cols);
    blas_.gemm_nn(c, a, b, alpha, beta);
  }
  void gemm_nt(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta) {
    count(c.rows, c.cols, a.cols);
    blas_.gemm_nt(c, a, b, alpha, beta);
  }

  // ---- elementwise and per-sample kernels (contracts as in CpuBackend) ----
  void bias_gelu(MatView<T> u, const T* bias, MatView<T> h) { cuda::bias_gelu(u, bias, h, stream()); }
  void gelu_backward(detail::In<T> u, detail::In<T> dh, MatView<T> du) {
    cuda::gelu_backward(u, dh, du, stream());
  }
  void layernorm(detail::In<T> x, const T* w, const T* b, MatView<T> y, T* mean, T* rstd, T eps) {
    cuda::layernorm(x, w, b, y, mean, rstd, eps, stream());
  }
  /// Contract: dx += ..., dw += ..., db += ... (all accumulate).
  void layernorm_backward(detail::In<T> x, const T* w, const T* mean, const T* rstd, detail::In<T> dy,
                          MatView<T> dx, T* dw, T* db) {
    cuda::layernorm_backward(x, w, mean, rstd, dy, dx, dw, db, stream());
  }
  /// Contract: out += row sums.
  void add_row_sums(detail::In<T> m, T* out) { cuda::add_row_sums(m, out, stream()); }
  void residual_add(detail::In<T> x, detail::In<T> z, const T* bias, MatView<T> y) {
    cuda::residual_add(x, z, bias, y, stream());
  }
  void add_bias(MatView<T> y, const T* bias) { cuda::add_bias(y, bias, stream()); }
  void axpby(detail::In<T> x, T alpha, MatView<T> y, bool accumulate) {
    cuda::axpby(x, alpha, y, accumulate, stream());
  }
  void fill(MatView<T> y, T value) { cuda::fill(y, value, stream()); }

  /// Mean softmax cross-entropy (returned: waits for the stream); writes dlogits.
  /// labels: device memory, (batch), checked by the caller.
  T softmax_xent(detail::In<T> logits, const std::int32_t* labels, MatView<T> dlogits) {
    if (losses_.size() < static_cast<std::size_t>(logits.cols))
      losses_ = DeviceBuffer<T>(static_cast<std::size_t>(logits.cols));
    cuda::softmax_xent(logits, labels, dlogits, losses_.data(), loss_.data(), stream());
    T loss{};
    ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(&loss, loss_.data(), sizeof(T), cudaMemcpyDeviceToHost, stream()));
    ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream()));
    return loss;
  }

 private:
  void count(Index m, Index n, Index k) noexcept {
    ++counters_.gemms;
    counters_.gemm_flops += 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  }

  Stream stream_;
  Blas blas_;
  Counters counters_;
  DeviceBuffer<T> losses_;   // (batch) per-sample losses
  DeviceBuffer<T> loss_{1};  // their mean
};

}  // namespace additive::cuda
