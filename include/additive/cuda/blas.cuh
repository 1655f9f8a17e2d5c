// cuBLASLt behind the three GEMM shapes of the CPU backend (gemm_tn, gemm_nn, gemm_nt on
// column-major MatViews in device memory), with an optional fused epilogue. fp32 inputs
// compute in fp32 or, when allowed, TF32; bf16 inputs always accumulate in fp32 and write
// fp32 or bf16. Deterministic mode forbids split-K reductions.
//
// cuBLASLt's GELU epilogues use the tanh approximation of GELU, not the exact erf form of
// the CPU backend: the MLP model applies its own exact kernel (kernels.cuh) and offers the
// fused GELU epilogues only as an explicit choice.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "additive/core/error.hpp"
#include "additive/core/view.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"

namespace additive::cuda {

/// What cuBLASLt applies to alpha * op(A) op(B) + beta * C before writing D (= C).
enum class Epilogue {
  none,           ///< D = alpha AB + beta C
  bias,           ///< D = alpha AB + beta C + bias (per row)
  gelu_aux_bias,  ///< aux = alpha AB + beta C + bias; D = gelu_tanh(aux)
  dgelu,          ///< D = (alpha AB + beta C) * gelu_tanh'(aux)
};

/// Epilogue and its operands. bias: (M) of D's type; aux: (M, N) of D's type, leading
/// dimension aux_ld (cuBLASLt wants a multiple of 8).
struct EpilogueArgs {
  Epilogue kind = Epilogue::none;
  const void* bias = nullptr;
  void* aux = nullptr;
  Index aux_ld = 0;
};

namespace detail {

template <class T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>)
    return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return CUDA_R_16BF;
  else
    static_assert(sizeof(T) == 0, "cuda::Blas supports float and __nv_bfloat16 matrices");
}

struct MatmulDescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const noexcept {
    ADDITIVE_CUDA_LOG(cublasLtMatmulDescDestroy(d));
  }
};
struct LayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* d) const noexcept {
    ADDITIVE_CUDA_LOG(cublasLtMatrixLayoutDestroy(d));
  }
};
struct PreferenceDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* d) const noexcept {
    ADDITIVE_CUDA_LOG(cublasLtMatmulPreferenceDestroy(d));
  }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, MatmulDescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LayoutDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, PreferenceDeleter>;

/// The stored (rows, cols, ld) of a view, as cuBLASLt's column-major layout.
template <class T>
Layout layout(MatView<T> v) {
  cublasLtMatrixLayout_t raw = nullptr;
  const auto ld = static_cast<std::int64_t>(std::max<Index>({v.ld, v.rows, Index(1)}));
  ADDITIVE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&raw, data_type<std::remove_const_t<T>>(),
                                                   static_cast<std::uint64_t>(v.rows),
                                                   static_cast<std::uint64_t>(v.cols), ld));
  return Layout(raw);
}

/// The largest power of two (at most 256) that divides the address.
inline std::uint32_t alignment(const void* p) noexcept {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t bytes = 256;
  while (bytes > 1 && address % bytes != 0) bytes /= 2;
  return bytes;
}

template <class V>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  ADDITIVE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

}  // namespace detail

/// One cuBLASLt handle, its workspace and the stream its GEMMs run on. Not thread-safe:
/// one per host thread / stream.
class Blas {
 public:
  explicit Blas(cudaStream_t stream = nullptr, std::size_t workspace_bytes = std::size_t{32} << 20)
      : workspace_(workspace_bytes), stream_(stream) {
    ADDITIVE_CUBLAS_CHECK(cublasLtCreate(&handle_));
  }
  ~Blas() {
    if (handle_ != nullptr) ADDITIVE_CUDA_LOG(cublasLtDestroy(handle_));
  }
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  Blas(Blas&& other) noexcept
      : handle_(std::exchange(other.handle_, nullptr)),
        workspace_(std::move(other.workspace_)),
        stream_(other.stream_),
        tf32_(other.tf32_),
        deterministic_(other.deterministic_) {}
  Blas& operator=(Blas&&) = delete;

  [[nodiscard]] cublasLtHandle_t handle() const noexcept { return handle_; }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  void set_stream(cudaStream_t stream) noexcept { stream_ = stream; }
  /// fp32 GEMMs may use TF32 tensor cores (10-bit mantissa products, fp32 accumulate).
  void set_tf32(bool on) noexcept { tf32_ = on; }
  [[nodiscard]] bool tf32() const noexcept { return tf32_; }
  /// No split-K: each element of D is one reduction in a fixed order, run to run.
  void set_deterministic(bool on) noexcept { deterministic_ = on; }
  [[nodiscard]] bool deterministic() const noexcept { return deterministic_; }

  /// C = alpha * A^T * B + beta * C.  A: (K, M), B: (K, N), C: (M, N).
  template <class TC, class A, class B>
  void gemm_tn(MatView<TC> c, MatView<A> a, MatView<B> b, float alpha, float beta,
               const EpilogueArgs& epilogue = {}) {
    check_shapes(c, a.cols, b.cols, a.rows, b.rows);
    matmul(CUBLAS_OP_T, CUBLAS_OP_N, c, in(a), in(b), a.rows, alpha, beta, epilogue);
  }
  /// C = alpha * A * B + beta * C.  A: (M, K), B: (K, N), C: (M, N).
  template <class TC, class A, class B>
  void gemm_nn(MatView<TC> c, MatView<A> a, MatView<B> b, float alpha, float beta,
               const EpilogueArgs& epilogue = {}) {
    check_shapes(c, a.rows, b.cols, a.cols, b.rows);
    matmul(CUBLAS_OP_N, CUBLAS_OP_N, c, in(a), in(b), a.cols, alpha, beta, epilogue);
  }
  /// C = alpha * A * B^T + beta * C.  A: (M, K), B: (N, K), C: (M, N).
  template <class TC, class A, class B>
  void gemm_nt(MatView<TC> c, MatView<A> a, MatView<B> b, float alpha, float beta,
               const EpilogueArgs& epilogue = {}) {
    check_shapes(c, a.rows, b.rows, a.cols, b.cols);
    matmul(CUBLAS_OP_N, CUBLAS_OP_T, c, in(a), in(b), a.cols, alpha, beta, epilogue);
  }

 private:
  /// A and B: mutable or const views of one element type.
  template <class A>
  static MatView<const std::remove_const_t<A>> in(MatView<A> v) {
    return v;
  }

  template <class TC>
  static void check_shapes(MatView<TC> c, Index m, Index n, Index k, Index k2) {
    if (c.rows != m || c.cols != n || k != k2)
      throw RuntimeError("cuda gemm: shapes do not agree (C " + std::to_string(c.rows) + "x" +
                         std::to_string(c.cols) + ", op(A) " + std::to_string(m) + "x" + std::to_string(k) +
                         ", op(B) " + std::to_string(k2) + "x" + std::to_string(n) + ")");
  }

  template <class TA, class TC>
  void matmul(cublasOperation_t opa, cublasOperation_t opb, MatView<TC> c, MatView<const TA> a,
              MatView<const TA> b, Index k, float alpha, float beta, const EpilogueArgs& epilogue) {
    static_assert(std::is_same_v<TC, float> || std::is_same_v<TC, __nv_bfloat16>,
                  "cuda::Blas: C is float or __nv_bfloat16");
    if (c.rows == 0 || c.cols == 0) return;
    if (k == 0) {  // an empty sum: cuBLASLt does not take K = 0
      if (epilogue.kind != Epilogue::none)
        throw RuntimeError("cuda gemm: an epilogue on an empty (K = 0) product is not supported");
      if (beta == 0.0f)
        ADDITIVE_CUDA_CHECK(cudaMemset2DAsync(
            c.data, static_cast<std::size_t>(std::max(c.ld, c.rows)) * sizeof(TC), 0,
            static_cast<std::size_t>(c.rows) * sizeof(TC), static_cast<std::size_t>(c.cols), stream_));
      else if (beta != 1.0f)
        throw RuntimeError("cuda gemm: K = 0 with beta other than 0 or 1 is not supported");
      return;
    }

    const cublasComputeType_t compute =
        std::is_same_v<TA, float> && tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasLtMatmulDesc_t raw_desc = nullptr;
    ADDITIVE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&raw_desc, compute, CUDA_R_32F));
    const detail::MatmulDesc desc(raw_desc);
    detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSA, opa);
    detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_TRANSB, opb);

    cublasLtEpilogue_t kind = CUBLASLT_EPILOGUE_DEFAULT;
    switch (epilogue.kind) {
      case Epilogue::none:
        break;
      case Epilogue::bias:
        kind = CUBLASLT_EPILOGUE_BIAS;
        break;
      case Epilogue::gelu_aux_bias:
        kind = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
        break;
      case Epilogue::dgelu:
        kind = CUBLASLT_EPILOGUE_DGELU;
        break;
    }
    detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, kind);
    if (epilogue.kind == Epilogue::bias || epilogue.kind == Epilogue::gelu_aux_bias) {
      if (epilogue.bias == nullptr) throw RuntimeError("cuda gemm: the bias epilogue needs a bias pointer");
      detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, epilogue.bias);
      detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, detail::data_type<TC>());
    }
    if (epilogue.kind == Epilogue::gelu_aux_bias || epilogue.kind == Epilogue::dgelu) {
      if (epilogue.aux == nullptr || epilogue.aux_ld < c.rows || epilogue.aux_ld % 8 != 0)
        throw RuntimeError("cuda gemm: the GELU epilogues need an aux matrix with a leading dimension >= " +
                           std::to_string(c.rows) + " and divisible by 8 (got " +
                           std::to_string(epilogue.aux_ld) + ")");
      detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, epilogue.aux);
      detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                            static_cast<std::int64_t>(epilogue.aux_ld));
      detail::set_attribute(raw_desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, detail::data_type<TC>());
    }

    const auto la = detail::layout(a);
    const auto lb = detail::layout(b);
    const auto lc = detail::layout(MatView<const TC>(c));

    cublasLtMatmulPreference_t raw_pref = nullptr;
    ADDITIVE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&raw_pref));
    const detail::Preference pref(raw_pref);
    const std::size_t workspace = workspace_.bytes();
    ADDITIVE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        raw_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
    // The heuristic assumes 256-byte aligned operands unless told otherwise; shard slices
    // of the flat parameter buffer are not, so pass each pointer's real alignment.
    const auto set_alignment = [&](cublasLtMatmulPreferenceAttributes_t attr, const void* ptr) {
      const std::uint32_t bytes = detail::alignment(ptr);
      ADDITIVE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(raw_pref, attr, &bytes, sizeof(bytes)));
    };
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a.data);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b.data);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c.data);
    set_alignment(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c.data);
    if (deterministic_) {
      const std::uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE;
      ADDITIVE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          raw_pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)));
    }
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    ADDITIVE_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, raw_desc, la.get(), lb.get(), lc.get(),
                                                         lc.get(), raw_pref, 1, &heuristic, &found));
    if (found == 0)
      throw CublasError(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic (no algorithm)",
                        __FILE__, __LINE__);
    ADDITIVE_CUBLAS_CHECK(cublasLtMatmul(handle_, raw_desc, &alpha, a.data, la.get(), b.data, lb.get(), &beta,
                                         c.data, lc.get(), c.data, lc.get(), &heuristic.algo,
                                         workspace_.data(), workspace, stream_));
  }

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<std::byte> workspace_;
  cudaStream_t stream_ = nullptr;
  bool tf32_ = false;
  bool deterministic_ = true;
};

}  // namespace additive::cuda
