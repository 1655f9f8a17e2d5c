// The CUDA backend: the primitives of the CPU backend (cpu/backend.hpp) under the same
// names and shape conventions, on device memory, in order on one stream (owned, or the
// caller's). GEMMs go through cuBLASLt (blas.cuh), the rest through kernels.cuh.
//
// Precisions (set_precision): fp32; TF32 (fp32 operands, TF32 tensor-core products,
// fp32 accumulation); bf16 mixed precision: GEMM operands in bf16 (the fp32 master
// weights are cast once per forward by cast_weights() into a bf16 copy that backward
// reuses; activations and gradients by a cast kernel into a scratch buffer just before
// the GEMM that reads them), fp32 accumulation and fp32 outputs; every other kernel
// (LayerNorm, GELU, softmax, reductions, AdamW) computes in fp32 from fp32 tensors.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "additive/core/concepts.hpp"
#include "additive/core/error.hpp"
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

/// How the GEMMs compute (everything else is fp32 in every mode).
enum class Precision {
  fp32,  ///< fp32 operands and products (CUBLAS_COMPUTE_32F)
  tf32,  ///< fp32 operands rounded to TF32 (10-bit mantissa) inside the tensor cores
  bf16,  ///< operands cast to bf16 (8-bit mantissa), fp32 accumulation and output
};

[[nodiscard]] inline const char* to_string(Precision p) noexcept {
  switch (p) {
    case Precision::fp32:
      return "fp32";
    case Precision::tf32:
      return "tf32";
    case Precision::bf16:
      return "bf16";
  }
  return "?";
}

template <class T>
class Backend {
  static_assert(std::is_same_v<T, float>, "cuda::Backend<T>: the GPU path computes in fp32 (T = float)");

 public:
  using scalar_type = T;

  /// Owns a new non-blocking stream.
  Backend() : owned_(std::in_place), stream_(owned_->get()), blas_(stream_) {}
  /// Runs on the caller's stream (not owned: it must outlive the backend).
  explicit Backend(cudaStream_t stream) : stream_(stream), blas_(stream_) {}
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
  Backend(Backend&&) noexcept = default;  // the stream handle and the cuBLASLt handle move along
  Backend& operator=(Backend&&) = delete;

  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  [[nodiscard]] Blas& blas() noexcept { return blas_; }
  [[nodiscard]] const Counters& counters() const noexcept { return counters_; }
  void reset_counters() noexcept { counters_.reset(); }
  void synchronize() const { ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  /// GEMM precision. Switching to bf16 needs buffers: the next reserve() (every
  /// synchronous forward calls it) allocates them; forward_async does not.
  void set_precision(Precision p) noexcept {
    precision_ = p;
    blas_.set_tf32(p == Precision::tf32);
  }
  [[nodiscard]] Precision precision() const noexcept { return precision_; }
  /// Deterministic mode (default on): see Blas::set_deterministic and docs/cuda.md.
  void set_deterministic(bool on) noexcept { blas_.set_deterministic(on); }
  [[nodiscard]] bool deterministic() const noexcept { return blas_.deterministic(); }
  /// Bias epilogues fused into cuBLASLt GEMMs (default on; off: separate add_bias kernels).
  void set_fused_bias(bool on) noexcept { fused_bias_ = on; }
  [[nodiscard]] bool fused_bias() const noexcept { return fused_bias_; }

  /// Sizes the per-batch buffers: the loss buffers for `batch` samples and, in bf16 mode,
  /// the bf16 weight copy (`params` elements) and two operand scratch buffers of
  /// `scratch` bf16 elements each (enough for the largest GEMM operand, its leading
  /// dimension padded with padded_ld()). Grows, never shrinks; allocates only what is
  /// missing.
  void reserve(Index batch, std::size_t scratch, std::size_t params) {
    const auto b = static_cast<std::size_t>(batch);
    if (losses_.size() < b) losses_ = DeviceBuffer<T>(b);
    if (labels_.size() < b) labels_ = DeviceBuffer<std::int32_t>(b);
    if (loss_.empty()) loss_ = DeviceBuffer<T>(1);
    if (precision_ != Precision::bf16) return;
    if (weights16_.size() < params) weights16_ = DeviceBuffer<__nv_bfloat16>(params);
    for (auto* s : {&scratch_a_, &scratch_b_})
      if (s->size() < scratch) *s = DeviceBuffer<__nv_bfloat16>(scratch);
  }
  /// The leading dimension of a bf16 scratch operand of `rows` rows: a multiple of 8
  /// elements (16 bytes, what the tensor-core kernels load at once).
  [[nodiscard]] static Index padded_ld(Index rows) noexcept { return (std::max<Index>(rows, 1) + 7) / 8 * 8; }

  /// bf16 mode: casts the fp32 master weights into the bf16 copy the GEMMs read while
  /// the same `params` buffer is in use (once per forward; backward reuses it). No-op in
  /// the other modes. Asynchronous.
  void cast_weights(std::span<const T> params) {
    if (precision_ != Precision::bf16) {
      master_ = {};
      return;
    }
    if (weights16_.size() < params.size())
      throw RuntimeError("cuda::Backend: bf16 mode needs reserve() for " + std::to_string(params.size()) +
                         " weights first (the bf16 weight copy is not allocated)");
    to_bf16(params.data(), weights16_.data(), static_cast<Index>(params.size()), stream_);
    master_ = params;
  }

  // ---- GEMM, three shapes (see CpuBackend). beta is 0 (write) or 1 (accumulate). ----
  void gemm_tn(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta) {
    count(c.rows, c.cols, a.rows);
    gemm([&](auto aa, auto bb) { blas_.gemm_tn(c, aa, bb, alpha, beta); }, a, b);
  }
  void gemm_nn(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta) {
    count(c.rows, c.cols, a.cols);
    gemm([&](auto aa, auto bb) { blas_.gemm_nn(c, aa, bb, alpha, beta); }, a, b);
  }
  void gemm_nt(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta) {
    count(c.rows, c.cols, a.cols);
    gemm([&](auto aa, auto bb) { blas_.gemm_nt(c, aa, bb, alpha, beta); }, a, b);
  }
  /// gemm_tn, then c += bias per row: one cuBLASLt call with the bias epilogue when the
  /// bias pointer is 16-byte aligned and fused_bias() is on, else a GEMM and add_bias.
  void gemm_tn_bias(MatView<T> c, detail::In<T> a, detail::In<T> b, T alpha, T beta, const T* bias) {
    if (!fused_bias_ || detail::alignment(bias) < 16 || a.rows == 0) {
      gemm_tn(c, a, b, alpha, beta);
      add_bias(c, bias);
      return;
    }
    count(c.rows, c.cols, a.rows);
    const EpilogueArgs epilogue{.kind = Epilogue::bias, .bias = bias};
    gemm([&](auto aa, auto bb) { blas_.gemm_tn(c, aa, bb, alpha, beta, epilogue); }, a, b);
  }

  // ---- elementwise and per-sample kernels (contracts as in CpuBackend) ----
  void bias_gelu(MatView<T> u, const T* bias, MatView<T> h) { cuda::bias_gelu(u, bias, h, stream_); }
  void gelu_backward(detail::In<T> u, detail::In<T> dh, MatView<T> du) {
    cuda::gelu_backward(u, dh, du, stream_);
  }
  void layernorm(detail::In<T> x, const T* w, const T* b, MatView<T> y, T* mean, T* rstd, T eps) {
    cuda::layernorm(x, w, b, y, mean, rstd, eps, stream_);
  }
  /// Contract: dx += ..., dw += ..., db += ... (all accumulate).
  void layernorm_backward(detail::In<T> x, const T* w, const T* mean, const T* rstd, detail::In<T> dy,
                          MatView<T> dx, T* dw, T* db) {
    cuda::layernorm_backward(x, w, mean, rstd, dy, dx, dw, db, stream_);
  }
  /// Contract: out += row sums.
  void add_row_sums(detail::In<T> m, T* out) { cuda::add_row_sums(m, out, stream_); }
  void residual_add(detail::In<T> x, detail::In<T> z, const T* bias, MatView<T> y) {
    cuda::residual_add(x, z, bias, y, stream_);
  }
  void add_bias(MatView<T> y, const T* bias) { cuda::add_bias(y, bias, stream_); }
  void axpby(detail::In<T> x, T alpha, MatView<T> y, bool accumulate) {
    cuda::axpby(x, alpha, y, accumulate, stream_);
  }
  void fill(MatView<T> y, T value) { cuda::fill(y, value, stream_); }
  /// Zero bits into n elements of device memory, on the stream.
  void zero(std::span<T> v) {
    if (!v.empty()) ADDITIVE_CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.size_bytes(), stream_));
  }

  /// Mean softmax cross-entropy of host labels (checked by the caller): stages them to
  /// the device, writes dlogits, returns the loss (waits for the stream). Needs reserve().
  T softmax_xent(detail::In<T> logits, std::span<const std::int32_t> labels, MatView<T> dlogits) {
    check_reserved(logits.cols);
    ADDITIVE_CUDA_CHECK(
        cudaMemcpyAsync(labels_.data(), labels.data(), labels.size_bytes(), cudaMemcpyHostToDevice, stream_));
    softmax_xent_async(logits, labels_.data(), dlogits, loss_.data());
    T loss{};
    ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(&loss, loss_.data(), sizeof(T), cudaMemcpyDeviceToHost, stream_));
    ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return loss;
  }
  /// The same with device labels, the mean loss left in loss_device[0]: no host sync,
  /// no copy, no allocation (capturable). Needs reserve().
  void softmax_xent_async(detail::In<T> logits, const std::int32_t* labels_device, MatView<T> dlogits,
                          T* loss_device) {
    check_reserved(logits.cols);
    cuda::softmax_xent(logits, labels_device, dlogits, losses_.data(), loss_device, stream_);
  }

 private:
  void check_reserved(Index batch) const {
    if (losses_.size() < static_cast<std::size_t>(batch))
      throw RuntimeError("cuda::Backend: the loss buffers hold " + std::to_string(losses_.size()) +
                         " samples, the batch has " + std::to_string(batch) + ": call reserve() first");
  }

  /// fp32 / TF32: run on the views. bf16: run on bf16 views of the operands, the weight
  /// copy where an operand lies inside the cast master weights, else the operand cast
  /// into a scratch buffer (leading dimension padded to 8 elements, 16 bytes).
  template <class Run>
  void gemm(Run&& run, MatView<const T> a, MatView<const T> b) {
    if (precision_ != Precision::bf16) {
      run(a, b);
      return;
    }
    run(operand16(a, scratch_a_), operand16(b, scratch_b_));
  }
  /// A weight slice is read from the bf16 weight copy when it is 16-byte aligned there
  /// (address and leading dimension), else it is cast into the scratch like an activation:
  /// every bf16 operand cuBLASLt sees is then 16-byte aligned (a layout with d, h and
  /// in_dim multiples of 8 takes every weight from the copy).
  MatView<const __nv_bfloat16> operand16(MatView<const T> v, DeviceBuffer<__nv_bfloat16>& scratch) {
    const T* base = master_.data();
    if (base != nullptr && v.data >= base && v.data < base + master_.size()) {
      const MatView<const __nv_bfloat16> w(weights16_.data() + (v.data - base), v.rows, v.cols, v.ld);
      if (detail::alignment(w.data) >= 16 && (std::max<Index>(w.ld, 1) * 2) % 16 == 0) return w;
    }
    const Index ld = padded_ld(v.rows);
    if (scratch.size() < static_cast<std::size_t>(ld * v.cols))
      throw RuntimeError("cuda::Backend: bf16 operand of " + std::to_string(v.rows) + "x" +
                         std::to_string(v.cols) + " does not fit the scratch buffer: call reserve() first");
    const MatView<__nv_bfloat16> out(scratch.data(), v.rows, v.cols, ld);
    to_bf16<T>(v, out, stream_);
    return out;
  }

  void count(Index m, Index n, Index k) noexcept {
    ++counters_.gemms;
    counters_.gemm_flops += 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  }

  std::optional<Stream> owned_;
  cudaStream_t stream_ = nullptr;
  Blas blas_;
  Counters counters_;
  Precision precision_ = Precision::fp32;
  bool fused_bias_ = true;
  DeviceBuffer<T> losses_;                             // (batch) per-sample losses
  DeviceBuffer<T> loss_;                               // their mean, for the synchronous softmax_xent
  DeviceBuffer<std::int32_t> labels_;                  // (batch) staged host labels
  DeviceBuffer<__nv_bfloat16> weights16_;              // bf16 copy of the master weights
  DeviceBuffer<__nv_bfloat16> scratch_a_, scratch_b_;  // bf16 GEMM operands
  std::span<const T> master_;                          // the weights weights16_ was cast from
};

static_assert(additive::Backend<Backend<float>>,
              "cuda::Backend must offer every primitive of the Backend concept");

}  // namespace additive::cuda
