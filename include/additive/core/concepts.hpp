// Concepts for the pieces a model is built from, each with the reason for every
// requirement. (Dataset lives in data/dataset.hpp, Optimizer in optim/optimizer.hpp.)
#pragma once

#include <concepts>
#include <cstdint>
#include <span>

#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"

namespace additive {

/// The gates of one block (`BlockGates`): a plan is generated per value, so the type must
/// say how many shards and gates it has, which segments its merge gates make and whether
/// its branch runs. (Named for the gates: a "block" elsewhere is the compute block.)
template <class B>
concept GateBlock = requires(const B b) {
  { B::shards } -> std::convertible_to<int>;  // segments are runs of shards
  { B::gates } -> std::convertible_to<int>;   // the dispatch table has 2^gates entries
  { b.bits } -> std::convertible_to<std::uint64_t>;
  { b.cuts() } -> std::same_as<std::uint64_t>;          // where the streams split
  { b.residual() } -> std::same_as<bool>;               // false: compute nothing
  { b.segments().size() } -> std::convertible_to<int>;  // one down-projection GEMM each
};

/// A compute backend: every primitive the model code calls, so the plan of a structure is
/// the same on every backend and only the kernels differ (cpu::CpuBackend, cuda::Backend).
/// Matrices are column-major views, (rows, cols) with a leading dimension; vectors are raw
/// pointers where the backend computes (host or device memory).
///
/// - GEMMs, each `C = alpha op(A) op(B) + beta C`: `gemm_tn` the forward products,
///   `gemm_nn` input gradients, `gemm_nt` weight gradients (K = batch).
/// - `bias_gelu(u, bias, h)`: u += bias per row, h = gelu(u) (the up-projection's epilogue);
///   `gelu_backward(u, dh, du)`: du = gelu'(u) * dh.
/// - `layernorm(x, w, b, y, mean, rstd, eps)` per column, keeping mean and 1/std for the
///   backward; `layernorm_backward(x, w, mean, rstd, dy, dx, dw, db)` accumulates (+=) all
///   three, with the batch reductions in a fixed order (results independent of threads).
/// - `add_row_sums(m, out)`: out += the row sums of m (bias gradients, fixed order).
/// - `residual_add(x, z, bias, y)`: y = x + z + bias per row; `add_bias(y, bias)`;
///   `axpby(x, alpha, y, accumulate)`: y = alpha x (+ y); `fill(y, value)`.
/// - `softmax_xent(logits, labels, dlogits)`: the mean cross-entropy over the batch
///   (returned on the host), and dlogits = (softmax - onehot) / batch.
/// - `counters().gemms`: logical GEMM calls, so that tests prove skipped work is skipped.
template <class B>
concept Backend = std::floating_point<typename B::scalar_type> &&
    requires(B b, MatView<typename B::scalar_type> c, MatView<const typename B::scalar_type> a,
             typename B::scalar_type s, const typename B::scalar_type* in, typename B::scalar_type* out,
             std::span<const std::int32_t> labels, bool accumulate) {
  { b.counters().gemms } -> std::convertible_to<std::uint64_t>;
  b.gemm_tn(c, a, a, s, s);
  b.gemm_nn(c, a, a, s, s);
  b.gemm_nt(c, a, a, s, s);
  b.bias_gelu(c, in, c);
  b.gelu_backward(a, a, c);
  b.layernorm(a, in, in, c, out, out, s);
  b.layernorm_backward(a, in, in, in, a, c, out, out);
  b.add_row_sums(a, out);
  b.residual_add(a, a, in, c);
  b.add_bias(c, in);
  b.axpby(a, s, c, accumulate);
  b.fill(c, s);
  { b.softmax_xent(a, labels, c) } -> std::same_as<typename B::scalar_type>;
};

}  // namespace additive
