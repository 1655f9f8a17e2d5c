// Dispatch tables generated once from an index_sequence. The same sequences are the
// "list of variants" that tests iterate over, so no variant is dispatched but untested.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "additive/core/structure.hpp"

namespace additive {

/// Every gate pattern of one block of family F: 2^k variants.
template <Family F>
using block_variants = std::make_index_sequence<std::size_t{1} << F::gates_per_block>;

/// Whole-model tables hold 2^n entries; beyond this many gates use per-block dispatch.
inline constexpr int max_whole_model_gates = 10;

/// Every structure of family F (only for small n).
template <Family F>
requires(F::gates <= max_whole_model_gates) using structure_variants =
    std::make_index_sequence<std::size_t{1} << F::gates>;

/// Calls fn.template operator()<I>() for every I of the sequence, in order.
template <std::size_t... I, class Fn>
constexpr void for_each_variant(std::index_sequence<I...>, Fn&& fn) {
  (fn.template operator()<I>(), ...);
}

/// A table whose entry I is fn.template operator()<I>(): one instantiation per variant.
template <std::size_t... I, class Fn>
constexpr auto make_table(std::index_sequence<I...>, Fn fn) {
  using Entry = decltype(fn.template operator()<0>());
  return std::array<Entry, sizeof...(I)>{fn.template operator()<I>()...};
}

}  // namespace additive
