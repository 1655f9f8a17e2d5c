// The AdamW arithmetic, in one place: the per-step scalars (computed in double, rounded
// once to T) and the element update. The CPU optimizer (optim/adamw.hpp), the CUDA
// optimizer (cuda/adamw.cuh) and the CUDA trainer's graph-captured step (cuda/train.cuh)
// all call these, so they cannot drift apart. The element update is one expression over
// an arithmetic type: the scalar itself on the host, or a wrapper whose operators are the
// CUDA round-to-nearest intrinsics (cuda/kernels.cuh), which give the host's bits.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ADDITIVE_HOST_DEVICE __host__ __device__
#else
#define ADDITIVE_HOST_DEVICE
#endif

namespace additive {

/// PyTorch's defaults except weight_decay, where PyTorch's AdamW also uses 0.01.
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

/// The scalars of step t (counted from 1) at learning rate lr, rounded to T.
template <class T>
struct AdamWScalars {
  T b1, one_minus_b1, b2, one_minus_b2;
  T step_size;  ///< lr / (1 - b1^t)
  T sqrt_bc2;   ///< sqrt(1 - b2^t)
  T eps;
  T decayed;  ///< 1 - lr * weight_decay: the factor of a decay tensor (others use exactly 1)

  /// `lr` is the rate the caller passes to the optimizer, already rounded to T.
  static AdamWScalars make(const AdamWConfig& c, std::int64_t t, double lr) {
    const double td = static_cast<double>(t);
    const double bc1 = 1.0 - std::pow(c.beta1, td);
    const double bc2 = 1.0 - std::pow(c.beta2, td);
    return {static_cast<T>(c.beta1),  static_cast<T>(1.0 - c.beta1),
            static_cast<T>(c.beta2),  static_cast<T>(1.0 - c.beta2),
            static_cast<T>(lr / bc1), static_cast<T>(std::sqrt(bc2)),
            static_cast<T>(c.eps),    static_cast<T>(1.0 - lr * c.weight_decay)};
  }
};

/// One element of an AdamW step (torch.optim.AdamW's order of operations):
///
///     m = b1*m + (1-b1)*g;   v = b2*v + (1-b2)*g*g
///     p = p*keep - step_size * (m / (sqrt(v) / sqrt_bc2 + eps))
///
/// keep is s.decayed for decay tensors and exactly 1 otherwise (which leaves p's bits).
/// V is the arithmetic: T itself on the host (the expression is the host's, operator for
/// operator), or a wrapper of T whose operators are the device's round-to-nearest
/// intrinsics (cuda::Rn<T>, cuda/kernels.cuh), so that the device gives the host's bits.
template <class V, class T>
ADDITIVE_HOST_DEVICE inline void adamw_element(T& p, T g, T& m, T& v, const AdamWScalars<T>& s, T keep) {
  using std::sqrt;  // V = T; cuda::Rn<T> brings its own through ADL
  const V gi(g);
  const V mi = V(s.b1) * V(m) + V(s.one_minus_b1) * gi;
  const V vi = V(s.b2) * V(v) + V(s.one_minus_b2) * gi * gi;
  m = static_cast<T>(mi);
  v = static_cast<T>(vi);
  p = static_cast<T>(V(p) * V(keep) - V(s.step_size) * (mi / (sqrt(vi) / V(s.sqrt_bc2) + V(s.eps))));
}

}  // namespace additive
