// The CUDA counterparts of the CPU backend's elementwise and per-sample primitives
// (cpu/backend.hpp), on column-major (features, batch) MatViews in device memory, plus a
// fused AdamW step. The formulas and their operation order follow the CPU backend: exact
// erf GELU, two-pass LayerNorm per sample (one column), softmax cross-entropy with the
// max subtracted. Every reduction has a fixed order (warp butterflies, serial loops over
// the batch, no atomics), so a kernel gives the same bits run to run.
//
// Templates over T = float or double (double serves the exactness tests). Every call is
// asynchronous on `stream` unless it says otherwise. The fused AdamW is in adamw.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/view.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"

namespace additive::cuda {

namespace detail {

inline constexpr int threads_per_block = 256;

/// An input view: not used for deducing T, so MatView<T> arguments convert.
template <class T>
using In = std::type_identity_t<MatView<const T>>;
inline constexpr int warp = 32;
inline constexpr int warps_per_block = threads_per_block / warp;
inline constexpr unsigned full_mask = 0xffffffffu;

/// Blocks for n elements with a grid-stride loop (capped: the loop covers the rest).
inline unsigned blocks_for(Index n) {
  const Index b = (n + threads_per_block - 1) / threads_per_block;
  return static_cast<unsigned>(std::clamp<Index>(b, 1, Index{1} << 16));
}
/// Blocks for one warp per column.
inline unsigned blocks_for_columns(Index cols) {
  return static_cast<unsigned>(std::max<Index>(1, (cols + warps_per_block - 1) / warps_per_block));
}

template <class T>
__device__ inline T erf_(T x) {
  if constexpr (std::is_same_v<T, float>)
    return erff(x);
  else
    return erf(x);
}
template <class T>
__device__ inline T exp_(T x) {
  if constexpr (std::is_same_v<T, float>)
    return expf(x);
  else
    return exp(x);
}
template <class T>
__device__ inline T log_(T x) {
  if constexpr (std::is_same_v<T, float>)
    return logf(x);
  else
    return log(x);
}
template <class T>
__device__ inline T sqrt_(T x) {  // IEEE round-to-nearest (not -use_fast_math)
  if constexpr (std::is_same_v<T, float>)
    return __fsqrt_rn(x);
  else
    return __dsqrt_rn(x);
}
// Round-to-nearest operations the compiler may not contract into FMAs: the AdamW step
// uses them to give the CPU optimizer's bits (GCC's ISO mode does not contract either).
template <class T>
__device__ inline T mul_rn(T a, T b) {
  if constexpr (std::is_same_v<T, float>)
    return __fmul_rn(a, b);
  else
    return __dmul_rn(a, b);
}
template <class T>
__device__ inline T add_rn(T a, T b) {
  if constexpr (std::is_same_v<T, float>)
    return __fadd_rn(a, b);
  else
    return __dadd_rn(a, b);
}
template <class T>
__device__ inline T sub_rn(T a, T b) {
  if constexpr (std::is_same_v<T, float>)
    return __fsub_rn(a, b);
  else
    return __dsub_rn(a, b);
}
template <class T>
__device__ inline T div_rn(T a, T b) {
  if constexpr (std::is_same_v<T, float>)
    return __fdiv_rn(a, b);
  else
    return __ddiv_rn(a, b);
}

/// T whose operators are the round-to-nearest operations above: no FMA contraction, so the
/// device evaluates an expression as the host does (the AdamW element update,
/// optim/adamw_math.hpp). On nvcc's host pass the operators are the plain ones.
template <class T>
struct Rn {
  T x;
  __host__ __device__ explicit Rn(T v) : x(v) {}
  __host__ __device__ explicit operator T() const { return x; }
#ifdef __CUDA_ARCH__
  __device__ friend Rn operator+(Rn a, Rn b) { return Rn(add_rn(a.x, b.x)); }
  __device__ friend Rn operator-(Rn a, Rn b) { return Rn(sub_rn(a.x, b.x)); }
  __device__ friend Rn operator*(Rn a, Rn b) { return Rn(mul_rn(a.x, b.x)); }
  __device__ friend Rn operator/(Rn a, Rn b) { return Rn(div_rn(a.x, b.x)); }
  __device__ friend Rn sqrt(Rn a) { return Rn(sqrt_(a.x)); }
#else
  friend Rn operator+(Rn a, Rn b) { return Rn(a.x + b.x); }
  friend Rn operator-(Rn a, Rn b) { return Rn(a.x - b.x); }
  friend Rn operator*(Rn a, Rn b) { return Rn(a.x * b.x); }
  friend Rn operator/(Rn a, Rn b) { return Rn(a.x / b.x); }
  friend Rn sqrt(Rn a) { return Rn(std::sqrt(a.x)); }
#endif
};

/// Sum over the 32 lanes of a warp, the same butterfly order on every lane and every run.
template <class T>
__device__ inline T warp_sum(T x) {
  for (int offset = warp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(full_mask, x, offset);
  return x;
}
template <class T>
__device__ inline T warp_max(T x) {
  for (int offset = warp / 2; offset > 0; offset /= 2) x = max(x, __shfl_xor_sync(full_mask, x, offset));
  return x;
}

/// fn(i, j) for every element of a (rows, cols) matrix, grid-stride.
template <class Fn>
__global__ void for_each_element_kernel(Index rows, Index cols, Fn fn) {
  const Index n = rows * cols;
  for (Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<Index>(gridDim.x) * blockDim.x)
    fn(e % rows, e / rows);
}
template <class Fn>
void for_each_element(Index rows, Index cols, cudaStream_t stream, Fn fn) {
  if (rows <= 0 || cols <= 0) return;
  for_each_element_kernel<<<blocks_for(rows * cols), threads_per_block, 0, stream>>>(rows, cols, fn);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

template <class T>
__global__ void layernorm_kernel(MatView<const T> x, const T* w, const T* b, MatView<T> y, T* mean, T* rstd,
                                 T eps) {
  const Index j = static_cast<Index>(blockIdx.x) * warps_per_block + threadIdx.x / warp;
  const int lane = static_cast<int>(threadIdx.x % warp);
  if (j >= x.cols) return;  // a whole warp leaves together
  const Index d = x.rows;
  const T* xc = x.data + j * x.ld;
  T s = 0;
  for (Index i = lane; i < d; i += warp) s += xc[i];
  const T mu = warp_sum(s) / T(d);
  T q = 0;
  for (Index i = lane; i < d; i += warp) q += (xc[i] - mu) * (xc[i] - mu);
  const T var = warp_sum(q) / T(d);
  const T rs = T(1) / sqrt_(var + eps);
  T* yc = y.data + j * y.ld;
  for (Index i = lane; i < d; i += warp) yc[i] = (xc[i] - mu) * rs * w[i] + b[i];
  if (lane == 0) {
    mean[j] = mu;
    rstd[j] = rs;
  }
}

template <class T>
__global__ void layernorm_backward_dx_kernel(MatView<const T> x, const T* w, const T* mean, const T* rstd,
                                             MatView<const T> dy, MatView<T> dx) {
  const Index j = static_cast<Index>(blockIdx.x) * warps_per_block + threadIdx.x / warp;
  const int lane = static_cast<int>(threadIdx.x % warp);
  if (j >= x.cols) return;
  const Index d = x.rows;
  const T* xc = x.data + j * x.ld;
  const T* gy = dy.data + j * dy.ld;
  const T mu = mean[j];
  const T rs = rstd[j];
  T sg = 0, sgx = 0;
  for (Index i = lane; i < d; i += warp) {
    const T g = gy[i] * w[i];
    sg += g;
    sgx += g * ((xc[i] - mu) * rs);
  }
  const T g_mean = warp_sum(sg) / T(d);
  const T gx_mean = warp_sum(sgx) / T(d);
  T* out = dx.data + j * dx.ld;
  for (Index i = lane; i < d; i += warp) {
    const T xhat = (xc[i] - mu) * rs;
    out[i] += rs * (gy[i] * w[i] - g_mean - xhat * gx_mean);
  }
}

/// dw[i] += sum_j dy(i,j) xhat(i,j), db[i] += sum_j dy(i,j): one thread per feature, the
/// batch in order (coalesced across the threads of a column).
template <class T>
__global__ void layernorm_backward_dwdb_kernel(MatView<const T> x, const T* mean, const T* rstd,
                                               MatView<const T> dy, T* dw, T* db) {
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < x.rows;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    T sw = 0, sb = 0;
    for (Index j = 0; j < x.cols; ++j) {
      const T g = dy.data[i + j * dy.ld];
      sw += g * ((x.data[i + j * x.ld] - mean[j]) * rstd[j]);
      sb += g;
    }
    dw[i] += sw;
    db[i] += sb;
  }
}

template <class T>
__global__ void add_row_sums_kernel(MatView<const T> m, T* out) {
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < m.rows;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    T s = 0;
    for (Index j = 0; j < m.cols; ++j) s += m.data[i + j * m.ld];
    out[i] += s;
  }
}

template <class T>
__global__ void softmax_xent_kernel(MatView<const T> logits, const std::int32_t* labels, MatView<T> dlogits,
                                    T* losses) {
  const Index j = static_cast<Index>(blockIdx.x) * warps_per_block + threadIdx.x / warp;
  const int lane = static_cast<int>(threadIdx.x % warp);
  const Index n = logits.cols;
  if (j >= n) return;
  const Index c = logits.rows;
  const T* z = logits.data + j * logits.ld;
  T* g = dlogits.data + j * dlogits.ld;
  T zmax = z[0];
  for (Index i = lane; i < c; i += warp) zmax = max(zmax, z[i]);
  zmax = warp_max(zmax);
  T s = 0;
  for (Index i = lane; i < c; i += warp) {
    const T e = exp_(z[i] - zmax);
    g[i] = e;
    s += e;
  }
  s = warp_sum(s);
  const auto y = static_cast<Index>(labels[j]);
  if (y < 0 || y >= c) {  // not checked on the host (device labels): poison, never read out of bounds
    const T nan = T(0) / T(0);
    for (Index i = lane; i < c; i += warp) g[i] = nan;
    if (lane == 0) losses[j] = nan;
    return;
  }
  for (Index i = lane; i < c; i += warp) g[i] = g[i] / (s * T(n)) - (i == y ? T(1) / T(n) : T(0));
  if (lane == 0) losses[j] = log_(s) - (z[y] - zmax);
}

/// out[0] = sum of v[0..n) / n, by one warp in a fixed order.
template <class T>
__global__ void mean_kernel(const T* v, Index n, T* out) {
  T s = 0;
  for (Index i = threadIdx.x; i < n; i += warp) s += v[i];
  s = warp_sum(s);
  if (threadIdx.x == 0) out[0] = s / T(n);
}

template <class T>
__global__ void to_bf16_kernel(const T* in, __nv_bfloat16* out, Index n) {
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(static_cast<float>(in[i]));
}

template <class T>
void check_same_shape(MatView<T> a, Index rows, Index cols, const char* what) {
  if (a.rows != rows || a.cols != cols)
    throw RuntimeError(std::string("cuda ") + what + ": shapes do not agree (" + std::to_string(a.rows) +
                       "x" + std::to_string(a.cols) + " against " + std::to_string(rows) + "x" +
                       std::to_string(cols) + ")");
}

}  // namespace detail

// ---- elementwise ----

/// u += bias (per row), then h = gelu(u) (exact erf form). u, h: (rows, batch); bias: (rows).
template <class T>
void bias_gelu(MatView<T> u, const T* bias, MatView<T> h, cudaStream_t stream) {
  detail::check_same_shape(h, u.rows, u.cols, "bias_gelu");
  detail::for_each_element(u.rows, u.cols, stream, [=] __device__(Index i, Index j) {
    const T x = u.data[i + j * u.ld] + bias[i];
    u.data[i + j * u.ld] = x;
    h.data[i + j * h.ld] = x * (T(0.5) * (T(1) + detail::erf_(x * T(std::numbers::sqrt2_v<T> / 2))));
  });
}

/// du = dh * gelu'(u); du may alias dh.  (rows, batch) each.
template <class T>
void gelu_backward(detail::In<T> u, detail::In<T> dh, MatView<T> du, cudaStream_t stream) {
  detail::check_same_shape(dh, u.rows, u.cols, "gelu_backward");
  detail::check_same_shape(du, u.rows, u.cols, "gelu_backward");
  detail::for_each_element(u.rows, u.cols, stream, [=] __device__(Index i, Index j) {
    constexpr T inv_sqrt2 = std::numbers::sqrt2_v<T> / 2;
    constexpr T inv_sqrt2pi = std::numbers::inv_sqrtpi_v<T> * inv_sqrt2;
    const T x = u.data[i + j * u.ld];
    const T g = dh.data[i + j * dh.ld];
    du.data[i + j * du.ld] = g * (T(0.5) * (T(1) + detail::erf_(x * inv_sqrt2)) +
                                  x * inv_sqrt2pi * detail::exp_(T(-0.5) * (x * x)));
  });
}

/// y = x + z + bias (per row), or y = x + bias when z.data is null.  (d, batch) each.
template <class T>
void residual_add(detail::In<T> x, detail::In<T> z, const T* bias, MatView<T> y, cudaStream_t stream) {
  detail::check_same_shape(y, x.rows, x.cols, "residual_add");
  if (z.data != nullptr) detail::check_same_shape(z, x.rows, x.cols, "residual_add");
  detail::for_each_element(x.rows, x.cols, stream, [=] __device__(Index i, Index j) {
    const T zz = z.data != nullptr ? z.data[i + j * z.ld] : T(0);
    y.data[i + j * y.ld] = (x.data[i + j * x.ld] + zz) + bias[i];
  });
}

/// y += bias (per row).  (rows, batch).
template <class T>
void add_bias(MatView<T> y, const T* bias, cudaStream_t stream) {
  detail::for_each_element(y.rows, y.cols, stream,
                           [=] __device__(Index i, Index j) { y.data[i + j * y.ld] += bias[i]; });
}

/// y = alpha * x (+ y when accumulate).  Same shape; with alpha = S/|G| this is the
/// segment scaling.
template <class T>
void axpby(detail::In<T> x, T alpha, MatView<T> y, bool accumulate, cudaStream_t stream) {
  detail::check_same_shape(y, x.rows, x.cols, "axpby");
  detail::for_each_element(x.rows, x.cols, stream, [=] __device__(Index i, Index j) {
    const T ax = alpha * x.data[i + j * x.ld];
    T& out = y.data[i + j * y.ld];
    out = accumulate ? out + ax : ax;
  });
}

template <class T>
void fill(MatView<T> y, T value, cudaStream_t stream) {
  detail::for_each_element(y.rows, y.cols, stream,
                           [=] __device__(Index i, Index j) { y.data[i + j * y.ld] = value; });
}

/// out = bf16(in), n elements (the bf16 copy of fp32 master weights).
template <class T>
void to_bf16(const T* in, __nv_bfloat16* out, Index n, cudaStream_t stream) {
  if (n <= 0) return;
  detail::to_bf16_kernel<<<detail::blocks_for(n), detail::threads_per_block, 0, stream>>>(in, out, n);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

/// out = bf16(in) (round to nearest even), element by element of two (rows, cols) views
/// with their own leading dimensions: the bf16 copy of a GEMM operand.
template <class T>
void to_bf16(detail::In<T> in, MatView<__nv_bfloat16> out, cudaStream_t stream) {
  detail::check_same_shape(out, in.rows, in.cols, "to_bf16");
  detail::for_each_element(in.rows, in.cols, stream, [=] __device__(Index i, Index j) {
    out.data[i + j * out.ld] = __float2bfloat16_rn(static_cast<float>(in.data[i + j * in.ld]));
  });
}

// ---- per-sample (one column per sample) ----

/// Per-sample LayerNorm over the rows: y = (x - mean) * rstd * w + b.
/// x, y: (d, batch); mean, rstd: (batch), written for the backward pass.
template <class T>
void layernorm(detail::In<T> x, const T* w, const T* b, MatView<T> y, T* mean, T* rstd, T eps,
               cudaStream_t stream) {
  detail::check_same_shape(y, x.rows, x.cols, "layernorm");
  if (x.cols == 0) return;
  detail::layernorm_kernel<<<detail::blocks_for_columns(x.cols), detail::threads_per_block, 0, stream>>>(
      x, w, b, y, mean, rstd, eps);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

/// LayerNorm backward. Contract: dx += ..., dw += ..., db += ... (all accumulate).
/// x, dy, dx: (d, batch); mean, rstd: (batch) from the forward pass.
template <class T>
void layernorm_backward(detail::In<T> x, const T* w, const T* mean, const T* rstd, detail::In<T> dy,
                        MatView<T> dx, T* dw, T* db, cudaStream_t stream) {
  detail::check_same_shape(dy, x.rows, x.cols, "layernorm_backward");
  detail::check_same_shape(dx, x.rows, x.cols, "layernorm_backward");
  if (x.cols == 0 || x.rows == 0) return;
  detail::layernorm_backward_dx_kernel<<<detail::blocks_for_columns(x.cols), detail::threads_per_block, 0,
                                         stream>>>(x, w, mean, rstd, dy, dx);
  ADDITIVE_CUDA_CHECK_LAUNCH();
  detail::
      layernorm_backward_dwdb_kernel<<<detail::blocks_for(x.rows), detail::threads_per_block, 0, stream>>>(
          x, mean, rstd, dy, dw, db);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

/// out += sum over the columns of m (bias gradients).  m: (rows, batch); out: (rows).
template <class T>
void add_row_sums(detail::In<T> m, T* out, cudaStream_t stream) {
  if (m.rows == 0) return;
  detail::add_row_sums_kernel<<<detail::blocks_for(m.rows), detail::threads_per_block, 0, stream>>>(m, out);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

/// Softmax cross-entropy: writes dlogits = (softmax - onehot) / batch, the per-sample
/// losses (batch) and their mean into loss[0]; asynchronous. logits, dlogits:
/// (classes, batch); labels: (batch) in device memory, in [0, classes): a label outside
/// makes its sample's loss and dlogits column NaN (so the mean loss is NaN).
template <class T>
void softmax_xent(detail::In<T> logits, const std::int32_t* labels, MatView<T> dlogits, T* losses, T* loss,
                  cudaStream_t stream) {
  detail::check_same_shape(dlogits, logits.rows, logits.cols, "softmax_xent");
  if (logits.cols == 0) throw RuntimeError("cuda softmax_xent: empty batch");
  detail::
      softmax_xent_kernel<<<detail::blocks_for_columns(logits.cols), detail::threads_per_block, 0, stream>>>(
          logits, labels, dlogits, losses);
  ADDITIVE_CUDA_CHECK_LAUNCH();
  detail::mean_kernel<<<1, detail::warp, 0, stream>>>(losses, logits.cols, loss);
  ADDITIVE_CUDA_CHECK_LAUNCH();
}

}  // namespace additive::cuda
