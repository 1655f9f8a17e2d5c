// Fused AdamW on device memory, with the semantics and the arithmetic of additive::AdamW
// (optim/adamw.hpp): one kernel per tensor of the layout, decay where the layout says so.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>

#include "additive/core/params.hpp"
#include "additive/core/view.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"
#include "additive/cuda/kernels.cuh"
#include "additive/optim/adamw.hpp"
#include "additive/optim/optimizer.hpp"

namespace additive::cuda {

namespace detail {
template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, Index n, T b1, T one_minus_b1, T b2,
                             T one_minus_b2, T step_size, T sqrt_bc2, T eps, T keep) {
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    const T gi = g[i];
    const T mi = add_rn(mul_rn(b1, m[i]), mul_rn(one_minus_b1, gi));
    const T vi = add_rn(mul_rn(b2, v[i]), mul_rn(mul_rn(one_minus_b2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    const T denom = add_rn(div_rn(sqrt_(vi), sqrt_bc2), eps);
    p[i] = sub_rn(mul_rn(p[i], keep), mul_rn(step_size, div_rn(mi, denom)));
  }
}

}  // namespace detail

/// AdamW on device memory with the semantics and the scalar arithmetic of additive::AdamW
/// (optim/adamw.hpp): the same per-step scalars (computed in double on the host, rounded
/// once to T) and the same element formula, evaluated without FMA contraction, so a step
/// gives the CPU optimizer's bits. Decay only on the tensors whose layout entry says so.
template <class T>
class AdamW {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "cuda::AdamW<T>: T is float or double");

 public:
  explicit AdamW(ParamLayout layout, AdamWConfig config = {})
      : layout_(std::move(layout)), config_(config), m_(layout_.total()), v_(layout_.total()) {
    validate(config_);
    m_.zero();
    v_.zero();
    ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  }

  /// One step on device buffers of layout().total() elements, asynchronous on `stream`.
  void step(std::span<T> params, std::span<const T> grads, T lr, cudaStream_t stream) {
    ::additive::detail::check_step_args("AdamW (cuda)", layout_, params, grads, lr);
    ++steps_;
    const double t = static_cast<double>(steps_);
    const double lr_d = static_cast<double>(lr);
    const double bc1 = 1.0 - std::pow(config_.beta1, t);
    const double bc2 = 1.0 - std::pow(config_.beta2, t);
    const T b1 = static_cast<T>(config_.beta1);
    const T one_minus_b1 = static_cast<T>(1.0 - config_.beta1);
    const T b2 = static_cast<T>(config_.beta2);
    const T one_minus_b2 = static_cast<T>(1.0 - config_.beta2);
    const T step_size = static_cast<T>(lr_d / bc1);
    const T sqrt_bc2 = static_cast<T>(std::sqrt(bc2));
    const T eps = static_cast<T>(config_.eps);
    const T decayed = static_cast<T>(1.0 - lr_d * config_.weight_decay);
    for (const TensorSpec& spec : layout_.tensors()) {
      if (spec.size == 0) continue;
      const T keep = spec.decay ? decayed : T(1);
      const auto n = static_cast<Index>(spec.size);
      detail::adamw_kernel<<<detail::blocks_for(n), detail::threads_per_block, 0, stream>>>(
          params.data() + spec.offset, grads.data() + spec.offset, m_.data() + spec.offset,
          v_.data() + spec.offset, n, b1, one_minus_b1, b2, one_minus_b2, step_size, sqrt_bc2, eps, keep);
      ADDITIVE_CUDA_CHECK_LAUNCH();
    }
  }

  [[nodiscard]] std::int64_t steps() const noexcept { return steps_; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const DeviceBuffer<T>& first_moment() const noexcept { return m_; }
  [[nodiscard]] const DeviceBuffer<T>& second_moment() const noexcept { return v_; }

 private:
  ParamLayout layout_;
  AdamWConfig config_;
  DeviceBuffer<T> m_;  // (layout.total())
  DeviceBuffer<T> v_;  // (layout.total())
  std::int64_t steps_ = 0;
};

}  // namespace additive::cuda
