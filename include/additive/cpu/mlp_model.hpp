// The sharded MLP family on the Eigen CPU backend: nn/mlp_model.hpp's model over
// CpuBackend. `CpuMlpOps` adapts the backend to the model (host workspace, std::fill for
// the zero fill, the backend's own gemm_tn then add_bias for GEMM + bias), so the CPU
// model makes the same backend calls in the same order as before the model was shared.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "additive/core/view.hpp"
#include "additive/cpu/backend.hpp"
#include "additive/nn/mlp.hpp"
#include "additive/nn/mlp_model.hpp"

namespace additive::cpu {

/// BasicMlpModel's adapter for CpuBackend<T> (see additive::MlpModelOps).
template <class T>
struct CpuMlpOps {
  using backend_type = CpuBackend<T>;
  template <class U>
  using rebind = CpuMlpOps<U>;
  using matrix = EigenMat<T>;  // (rows, capacity), column-major
  using vector = std::vector<T>;
  static constexpr bool asynchronous = false;

  static matrix make_matrix(Index rows, Index cols) { return matrix(rows, cols); }
  static vector make_vector(Index n) { return vector(static_cast<std::size_t>(n)); }
  static T* data(matrix& m) noexcept { return m.data(); }
  static T* data(vector& v) noexcept { return v.data(); }
  static void zero(backend_type&, std::span<T> g) { std::fill(g.begin(), g.end(), T(0)); }
  static void reserve(backend_type&, const MlpConfig&, Index, std::size_t) noexcept {}
  static void prepare(backend_type&, std::span<const T>) noexcept {}
  static void gemm_tn_bias(backend_type& be, MatView<T> c, MatView<const T> a, MatView<const T> b, T alpha,
                           T beta, const T* bias) {
    be.gemm_tn(c, a, b, alpha, beta);
    be.add_bias(c, bias);
  }
};

/// The MLP model on the CPU: MlpModel<F, T> model(config, threads = 1).
template <Family F, class T>
using MlpModel = BasicMlpModel<F, T, CpuMlpOps<T>>;

}  // namespace additive::cpu
