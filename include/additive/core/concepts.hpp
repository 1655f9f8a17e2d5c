// Concepts for the pieces a model is built from, each with the reason for every
// requirement. (Dataset lives in data/dataset.hpp, Optimizer in optim/optimizer.hpp.)
#pragma once

#include <concepts>
#include <cstdint>

#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"

namespace additive {

/// The gates of one block: a plan is generated per value, so the type must say how many
/// shards and gates it has, which segments its merge gates make and whether its branch runs.
template <class B>
concept Block = requires(const B b) {
  { B::shards } -> std::convertible_to<int>;  // segments are runs of shards
  { B::gates } -> std::convertible_to<int>;   // the dispatch table has 2^gates entries
  { b.bits } -> std::convertible_to<std::uint64_t>;
  { b.cuts() } -> std::same_as<std::uint64_t>;          // where the streams split
  { b.residual() } -> std::same_as<bool>;               // false: compute nothing
  { b.segments().size() } -> std::convertible_to<int>;  // one down-projection GEMM each
};

/// A compute backend: the model code is written against these primitives, so the plan of
/// a structure is the same on every backend; only the kernels differ. Counters let tests
/// prove that skipped work is not executed.
template <class B>
concept Backend = requires(B b, MatView<typename B::scalar_type> c, MatView<const typename B::scalar_type> a,
                           typename B::scalar_type s) {
  typename B::scalar_type;
  { b.threads() } -> std::convertible_to<int>;
  { b.counters().gemms } -> std::convertible_to<std::uint64_t>;
  b.gemm_tn(c, a, a, s, s);  // forward products:         C = alpha A^T B + beta C
  b.gemm_nn(c, a, a, s, s);  // input gradients:          C = alpha A B + beta C
  b.gemm_nt(c, a, a, s, s);  // weight gradients (K = batch): C = alpha A B^T + beta C
};

}  // namespace additive
