// MlpModel::backward(params, grads, on_ready): the ranges it reports (for overlapping the
// co-training all-reduce with the rest of the backward) are, for every structure, the
// final norm + head first, then blocks L-1..0, then the embedding; contiguous, disjoint,
// covering the gradient buffer exactly once; and each range already holds its final
// values when it is reported. The plain backward gives the same bits.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "additive/cpu/mlp_model.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

template <class F>
void check_every_structure(const MlpConfig& config, std::uint64_t seed) {
  constexpr Index batch = 5;
  cpu::MlpModel<F, double> model(config, 2);
  const auto params = test::random_params<double>(model.layout(), seed);
  const auto x = test::random_inputs<double>(config.in_dim, batch, seed + 1);
  const auto y = test::random_labels(batch, config.classes, seed + 2);
  const MatView<const double> xv(x.data(), config.in_dim, batch);
  const std::size_t n = params.size();

  // Where each piece starts in the flat buffer, from the layout's tensor names.
  const auto offset_of = [&](const std::string& name) {
    for (const auto& t : model.layout().tensors())
      if (t.name == name) return t.offset;
    FAIL("no tensor " << name);
    return std::size_t{0};
  };
  std::vector<std::pair<std::size_t, std::size_t>> expected;
  expected.emplace_back(offset_of("final_norm.weight"), n);
  for (int l = F::blocks - 1; l >= 0; --l) {
    const std::size_t end =
        l + 1 < F::blocks ? offset_of("blocks." + std::to_string(l + 1) + ".norm.weight") : expected[0].first;
    expected.emplace_back(offset_of("blocks." + std::to_string(l) + ".norm.weight"), end);
  }
  expected.emplace_back(0, offset_of("blocks.0.norm.weight"));

  std::vector<double> plain(n), grads(n);
  for (std::uint64_t bits = 0; bits < F::mask_type::count; ++bits) {
    const auto m = typename F::mask_type(bits);
    CAPTURE(F::to_string(m));
    model.forward(m, params, xv, y);
    model.backward(params, plain);
    model.forward(m, params, xv, y);
    std::fill(grads.begin(), grads.end(), 123.0);  // stale values must not survive
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    std::vector<std::vector<double>> at_callback;
    model.backward(params, grads, [&](std::size_t begin, std::size_t end) {
      ranges.emplace_back(begin, end);
      at_callback.emplace_back(grads.begin() + std::ptrdiff_t(begin), grads.begin() + std::ptrdiff_t(end));
    });
    REQUIRE(test::max_abs<double>(grads) > 1e-3);
    // Same bits as the plain backward.
    CHECK(std::memcmp(grads.data(), plain.data(), n * sizeof(double)) == 0);
    // Order and exact, once-only cover.
    REQUIRE(ranges == expected);
    std::vector<int> covered(n, 0);
    for (const auto& [b, e] : ranges)
      for (std::size_t i = b; i < e; ++i) ++covered[i];
    CHECK(std::all_of(covered.begin(), covered.end(), [](int c) { return c == 1; }));
    // Final at callback time.
    for (std::size_t r = 0; r < ranges.size(); ++r) {
      const auto [b, e] = ranges[r];
      CAPTURE(r);
      CHECK(std::memcmp(at_callback[r].data(), grads.data() + b, (e - b) * sizeof(double)) == 0);
    }
  }
}

}  // namespace

TEST_CASE("backward's ready ranges: order, exact cover, final values; S = 3, L = 2, every structure") {
  check_every_structure<MlpFamily<3, 2>>({.in_dim = 7, .d = 6, .h = 9, .classes = 4}, 71);
}

TEST_CASE("backward's ready ranges: S = 2, L = 3, merge_only and no final norm") {
  check_every_structure<MlpFamily<2, 3, GateLayout::merge_only>>({.in_dim = 5, .d = 4, .h = 6, .classes = 3},
                                                                 73);
  check_every_structure<MlpFamily<2, 2, GateLayout::merge_and_branch, FinalNorm::none>>(
      {.in_dim = 5, .d = 4, .h = 6, .classes = 3}, 75);
}

TEST_CASE("the model template checks its backend adapter and callback") {
  static_assert(MlpModelOps<cpu::CpuMlpOps<double>, double>);
  static_assert(!MlpModelOps<int, double>);
  static_assert(GradientReadyCallback<void (*)(std::size_t, std::size_t)>);
  static_assert(!GradientReadyCallback<void (*)(const char*)>);
  // reserve() sizes the workspace once; smaller batches reuse it.
  using F = MlpFamily<2, 1>;
  const MlpConfig config{.in_dim = 3, .d = 4, .h = 4, .classes = 2};
  cpu::MlpModel<F, double> model(config);
  CHECK(model.capacity() == 0);
  model.reserve(8);
  CHECK(model.capacity() == 8);
  const auto params = test::random_params<double>(model.layout(), 5);
  const auto x = test::random_inputs<double>(config.in_dim, 8, 6);
  const auto y = test::random_labels(8, config.classes, 7);
  const double full = model.forward(F::mask_type(3), params, MatView<const double>(x.data(), 3, 8), y);
  const double part = model.forward(F::mask_type(3), params, MatView<const double>(x.data(), 3, 4),
                                    std::span<const std::int32_t>(y.data(), 4));
  CHECK(model.capacity() == 8);
  CHECK(model.logits().cols == 4);
  cpu::MlpModel<F, double> fresh(config);
  CHECK(fresh.forward(F::mask_type(3), params, MatView<const double>(x.data(), 3, 4),
                      std::span<const std::int32_t>(y.data(), 4)) == part);
  CHECK(full != part);
  CHECK_THROWS_AS(model.reserve(0), InputError);
}
