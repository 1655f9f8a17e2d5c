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
#include "additive/optim/adamw_math.hpp"
#include "additive/optim/optimizer.hpp"

namespace additive::cuda {

namespace detail {
template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, Index n, AdamWScalars<T> s, T keep) {
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<Index>(gridDim.x) * blockDim.x)
    adamw_element<Rn<T>>(p[i], g[i], m[i], v[i], s, keep);
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
    const auto s = AdamWScalars<T>::make(config_, steps_, static_cast<double>(lr));
    for (const TensorSpec& spec : layout_.tensors()) {
      if (spec.size == 0) continue;
      const T keep = spec.decay ? s.decayed : T(1);
      const auto n = static_cast<Index>(spec.size);
      detail::adamw_kernel<<<detail::blocks_for(n), detail::threads_per_block, 0, stream>>>(
          params.data() + spec.offset, grads.data() + spec.offset, m_.data() + spec.offset,
          v_.data() + spec.offset, n, s, keep);
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
