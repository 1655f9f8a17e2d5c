// Masks, structure types, segment lists, canonical forms, concepts and their rejections.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "additive/core/concepts.hpp"
#include "additive/core/dispatch.hpp"
#include "additive/core/mask.hpp"
#include "additive/core/structure.hpp"
#include "additive/cpu/backend.hpp"
#include "additive/nn/mlp.hpp"

using namespace additive;

using F42 = MlpFamily<4, 2>;                          // n = 8: 3 merge + 1 branch per block
using F52 = MlpFamily<5, 2, GateLayout::merge_only>;  // n = 8: 4 merge gates per block

// ---- concepts accept what they should and reject what they should not ----
static_assert(Family<F42> && Family<F52>);
static_assert(!Family<int>);
static_assert(!Family<Mask<4>>);
static_assert(GateBlock<BlockGates<4, GateLayout::merge_and_branch>>);
static_assert(!GateBlock<int>);
static_assert(!GateBlock<Segment>);
static_assert(Backend<cpu::CpuBackend<float>> && Backend<cpu::CpuBackend<double>>);
static_assert(!Backend<int>);
static_assert(!Backend<F42>);
namespace {
/// The GEMMs of a backend but none of its other primitives: not a Backend.
struct GemmsOnly {
  using scalar_type = float;
  struct Counters {
    std::uint64_t gemms = 0;
  };
  Counters counters() const { return {}; }
  void gemm_tn(MatView<float>, MatView<const float>, MatView<const float>, float, float) {}
  void gemm_nn(MatView<float>, MatView<const float>, MatView<const float>, float, float) {}
  void gemm_nt(MatView<float>, MatView<const float>, MatView<const float>, float, float) {}
};
}  // namespace
static_assert(!Backend<GemmsOnly>);
static_assert(MaskOf<F42, 0xFF> && !MaskOf<F42, 0x100>);
static_assert(MaskOf<F52, 0xFF> && !MaskOf<F52, 0x1FF>);

// ---- compile-time structure facts ----
static_assert(F42::gates == 8 && F42::gates_per_block == 4);
static_assert(F52::gates == 8 && F52::gates_per_block == 4);
using Mixed = Structure<F42, 0x6D>;  // [12|34] res=1 . [1|234] res=0
static_assert(Mixed::block<0>.segments().size() == 2);
static_assert(Mixed::block<0>.segments()[0] == Segment{0, 2});
static_assert(Mixed::block<0>.segments()[1] == Segment{2, 2});
static_assert(Mixed::block<0>.residual() && !Mixed::block<1>.residual());
static_assert(!Mixed::is_canonical());
static_assert(Structure<F42, 0xFF>::is_dense() && !Mixed::is_dense());
static_assert(Structure<F52, 0xFF>::is_dense());
// A skipped block leaves the streams alone: block 1 of Mixed does not cut stream 0..1.
static_assert(Mixed::stream_cuts[1] == 0b010 && Mixed::stream_cuts[2] == 0b010);
static_assert(
    std::tuple_size_v<decltype(make_table(block_variants<F42>{}, []<std::size_t I>() { return I; }))> == 16);

TEST_CASE("segments of every block pattern tile the shards in order") {
  int patterns = 0;
  for_each_variant(block_variants<F42>{}, [&]<std::size_t B>() {
    constexpr BlockGates<4, GateLayout::merge_and_branch> g{B};
    int next = 0;
    for (const Segment s : g.segments()) {
      CHECK(s.first == next);
      CHECK(s.size >= 1);
      next = s.last();
    }
    CHECK(next == 4);
    // One segment per inactive merge gate, plus one.
    CHECK(g.segments().size() == 1 + std::popcount(g.cuts()));
    ++patterns;
  });
  CHECK(patterns == 16);
}

TEST_CASE("structures print as segments per block") {
  CHECK(Mixed::to_string() == "[12|34] res=1 . [1|234] res=0");
  CHECK(Structure<F42, 0xFF>::to_string() == "[1234] res=1 . [1234] res=1");
  CHECK(Structure<F52, 0x00>::to_string() == "[1|2|3|4|5] . [1|2|3|4|5]");
}

TEST_CASE("canonical form clears exactly the merge gates of skipped blocks") {
  std::set<std::uint64_t> canon;
  for (std::uint64_t b = 0; b < F42::mask_type::count; ++b)
    canon.insert(F42::canonical(F42::mask_type(b)).bits());
  CHECK(canon.size() == 9 * 9);  // (2^(S-1) + 1)^L
  CHECK(F42::canonical(F42::mask_type(0x6D)).bits() == 0x0D);
  for (std::uint64_t b = 0; b < F52::mask_type::count; ++b)
    CHECK(F52::canonical(F52::mask_type(b)).bits() == b);
}

TEST_CASE("mask parsing accepts decimal, hex and binary and names bad input") {
  CHECK(Mask<8>::parse("109").bits() == 109);
  CHECK(Mask<8>::parse("0x6d").bits() == 0x6d);
  CHECK(Mask<8>::parse("0b1101").bits() == 13);
  CHECK_THROWS_WITH_AS(Mask<8>::parse("0x100"), doctest::Contains("bits beyond the model's 8 gates"),
                       InputError);
  CHECK_THROWS_WITH_AS(Mask<8>::parse("12x"), doctest::Contains("'12x' is not a number"), InputError);
  CHECK_THROWS_AS(Mask<8>::parse(""), InputError);
  CHECK_THROWS_AS(Mask<8>(256), InputError);
  CHECK(to_hex(Mask<8>(0x6d)) == "0x6d");
}
