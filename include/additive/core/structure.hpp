// Structures as types. A family fixes the number of shards S, blocks L and the gate
// layout; `Structure<Family, Bits>` is one of its 2^n structures, with constexpr
// segment lists and predicates so that specialised code is a straight-line plan.
// The same constexpr functions serve run time (`BlockGates`), so the two can't disagree.
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
#include <string>

#include "additive/core/mask.hpp"

namespace additive {

/// Which `+` of a sharded block are gates. See docs/design-notes.md ("Gate layouts").
enum class GateLayout {
  merge_and_branch,  ///< S-1 merge gates and the residual branch gate (DESIGN section 2)
  merge_only,        ///< S-1 merge gates; the residual is always active
};

/// A maximal run of shards joined by active merge gates: shards [first, first + size).
struct Segment {
  int first = 0;
  int size = 0;
  [[nodiscard]] constexpr int last() const noexcept { return first + size; }
  friend constexpr bool operator==(Segment, Segment) = default;
};

/// At most S segments, in shard order.
template <int S>
struct SegmentList {
  std::array<Segment, S> items{};
  int count = 0;
  [[nodiscard]] constexpr const Segment* begin() const noexcept { return items.data(); }
  [[nodiscard]] constexpr const Segment* end() const noexcept { return items.data() + count; }
  [[nodiscard]] constexpr int size() const noexcept { return count; }
  [[nodiscard]] constexpr const Segment& operator[](int i) const noexcept {
    return items[static_cast<std::size_t>(i)];
  }
};

/// A partition of S shards into contiguous intervals is its set of cuts: bit i set means
/// shards i and i+1 are in different intervals (S-1 bits). Streams and segments both use it.
template <int S>
constexpr SegmentList<S> intervals_from_cuts(std::uint64_t cuts) noexcept {
  SegmentList<S> list;
  int first = 0;
  for (int i = 0; i < S; ++i) {
    const bool cut_after = (i == S - 1) || ((cuts >> i) & 1U);
    if (cut_after) {
      list.items[static_cast<std::size_t>(list.count++)] = Segment{first, i + 1 - first};
      first = i + 1;
    }
  }
  return list;
}

/// The gates of one block as a value: what both the compile-time and the run-time paths read.
template <int S, GateLayout Layout>
struct BlockGates {
  static_assert(S >= 1 && S <= 16, "a sharded block has between 1 and 16 shards");
  static constexpr int shards = S;
  static constexpr GateLayout layout = Layout;
  static constexpr int merge_gates = S - 1;
  static constexpr int gates = Layout == GateLayout::merge_and_branch ? S : S - 1;
  static constexpr std::uint64_t merge_field = (std::uint64_t{1} << merge_gates) - 1;

  std::uint64_t bits = 0;

  /// Cuts where merge gates are inactive.
  [[nodiscard]] constexpr std::uint64_t cuts() const noexcept { return ~bits & merge_field; }
  [[nodiscard]] constexpr SegmentList<S> segments() const noexcept { return intervals_from_cuts<S>(cuts()); }
  /// Whether the residual branch is computed (always, in the merge_only layout).
  [[nodiscard]] constexpr bool residual() const noexcept {
    return Layout == GateLayout::merge_only || ((bits >> merge_gates) & 1U);
  }
  [[nodiscard]] constexpr bool is_dense() const noexcept { return residual() && cuts() == 0; }
  /// The same function with the gates that cannot matter cleared: a skipped block's merge gates.
  [[nodiscard]] constexpr std::uint64_t canonical() const noexcept { return residual() ? bits : 0; }

  /// "[12|34] res=1" (shards numbered from 1; "res" only where the residual is a gate).
  [[nodiscard]] std::string to_string() const {
    std::string s = "[";
    for (int i = 0; i < S; ++i) {
      if (i > 0 && ((cuts() >> (i - 1)) & 1U)) s += '|';
      s += (i < 9) ? static_cast<char>('1' + i) : static_cast<char>('a' + i - 9);
    }
    s += ']';
    if constexpr (Layout == GateLayout::merge_and_branch) s += residual() ? " res=1" : " res=0";
    return s;
  }
};

/// What a family of gated models must say about its gates. Blocks, shards and layout
/// are compile-time so that every structure can be a type; widths stay run-time values.
template <class F>
concept Family = requires {
  { F::shards } -> std::convertible_to<int>;
  { F::blocks } -> std::convertible_to<int>;
  { F::layout } -> std::convertible_to<GateLayout>;
  { F::gates_per_block } -> std::convertible_to<int>;
  { F::gates } -> std::convertible_to<int>;
  requires F::gates == F::blocks* F::gates_per_block;
  requires F::gates >= 1 && F::gates <= 63;
};

/// Shared gate bookkeeping of the sharded families (MLP, attention): L blocks of
/// BlockGates<S, Layout>, block l owning bits [l*k, (l+1)*k).
template <int S, int L, GateLayout Layout>
struct ShardedGates {
  static_assert(L >= 1, "a model has at least one block");
  using block_gates = BlockGates<S, Layout>;
  static constexpr int shards = S;
  static constexpr int blocks = L;
  static constexpr GateLayout layout = Layout;
  static constexpr int gates_per_block = block_gates::gates;
  static constexpr int gates = L * gates_per_block;
  using mask_type = Mask<gates>;

  static constexpr block_gates block(mask_type m, int l) noexcept {
    return block_gates{m.field(l * gates_per_block, gates_per_block)};
  }

  /// Stream partition (as cuts) entering block l, for l in [0, L]; entry L is the
  /// partition the final norm and head see. The embedded input is one stream.
  static constexpr std::array<std::uint64_t, L + 1> stream_cuts(mask_type m) noexcept {
    std::array<std::uint64_t, L + 1> cuts{};
    for (int l = 0; l < L; ++l) {
      const auto b = block(m, l);
      cuts[static_cast<std::size_t>(l + 1)] =
          b.residual() ? (cuts[static_cast<std::size_t>(l)] | b.cuts()) : cuts[static_cast<std::size_t>(l)];
    }
    return cuts;
  }

  /// The mask with every gate that cannot change the function cleared (see design notes).
  static constexpr mask_type canonical(mask_type m) noexcept {
    std::uint64_t bits = 0;
    for (int l = 0; l < L; ++l) bits |= block(m, l).canonical() << (l * gates_per_block);
    return mask_type(bits);
  }

  /// What gate g (bit g of a mask) joins: "b1 2+3" (block 1 merges shards 2 and 3) or
  /// "b2 res" (block 2's residual branch); blocks and shards count from 1, as in to_string.
  static std::string gate_name(int g) {
    if (g < 0 || g >= gates) return "gate " + std::to_string(g);
    const int l = g / gates_per_block, i = g % gates_per_block;
    const std::string block_name = "b" + std::to_string(l + 1) + " ";
    if (i >= block_gates::merge_gates) return block_name + "res";
    return block_name + std::to_string(i + 1) + "+" + std::to_string(i + 2);
  }

  /// One group per block: "[12|34] res=1 . [1234] res=0".
  static std::string to_string(mask_type m) {
    std::string s;
    for (int l = 0; l < L; ++l) {
      if (l > 0) s += " . ";
      s += block(m, l).to_string();
    }
    return s;
  }
};

/// A mask value valid for family F, checked where a structure is named at compile time.
template <class F, std::uint64_t Bits>
concept MaskOf = Family<F> &&((Bits >> F::gates) == 0);

/// One structure of a family as a type: everything about it is a constant expression.
template <Family F, std::uint64_t Bits>
requires MaskOf<F, Bits>
struct Structure {
  using family = F;
  using mask_type = Mask<F::gates>;
  static constexpr std::uint64_t bits = Bits;
  static constexpr mask_type mask{Bits};

  /// The gates of block l, as a constant.
  template <int l>
  static constexpr auto block = F::block(mask, l);

  static constexpr auto stream_cuts = F::stream_cuts(mask);
  static constexpr bool is_dense() noexcept { return Bits == mask_type::full_bits; }
  static constexpr bool is_canonical() noexcept { return F::canonical(mask) == mask; }
  static std::string to_string() { return F::to_string(mask); }
};

}  // namespace additive
