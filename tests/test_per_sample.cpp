// Per-sample gating (cpu/per_sample.hpp), float64: the loss and logits equal the
// run-time-gated reference path with each sample's own mask; the gradients equal the
// average over samples of the structured model run on each sample alone; a float64
// finite-difference check; one shared mask takes the structured path bit for bit; a
// block whose branch is off for a sample does no work for it (GEMM FLOP count).
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "additive/cpu/per_sample.hpp"
#include "additive/nn/reference.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

/// Random masks, with sample 0 dense and sample 1 all-off, so the batch always mixes.
template <class F>
std::vector<typename F::mask_type> random_masks(Index batch, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<typename F::mask_type> m;
  for (Index n = 0; n < batch; ++n)
    m.push_back(typename F::mask_type(n == 0   ? F::mask_type::full_bits
                                      : n == 1 ? 0
                                               : rng() & F::mask_type::full_bits));
  return m;
}

template <class F>
void check_against_oracles(const MlpConfig& config, std::uint64_t seed) {
  constexpr Index batch = 9;
  cpu::PerSampleMlp<F, double> model(config, 2);
  cpu::MlpModel<F, double> alone(config, 1);
  const auto params = test::random_params<double>(model.layout(), seed);
  const auto x = test::random_inputs<double>(config.in_dim, batch, seed + 1);
  const auto y = test::random_labels(batch, config.classes, seed + 2);
  const auto masks = random_masks<F>(batch, seed + 3);
  const MatView<const double> xv(x.data(), config.in_dim, batch);

  const double loss = model.forward(masks, params, xv, y);
  REQUIRE_FALSE(model.last_uniform());
  const auto logits = test::to_vector(model.logits());
  std::vector<double> grads(params.size());
  model.backward(params, grads);
  REQUIRE(test::max_abs<double>(grads) > 1e-3);

  // (a) reference path, sample by sample; (b) structured model on each sample alone.
  double ref_loss = 0, alone_loss = 0;
  std::vector<double> ref_logits, avg_grads(params.size(), 0.0), g1(params.size());
  for (Index n = 0; n < batch; ++n) {
    const std::span<const double> xn(x.data() + n * config.in_dim, static_cast<std::size_t>(config.in_dim));
    const std::span<const std::int32_t> yn(y.data() + n, 1);
    const auto l = reference::logits<F, double>(config, masks[static_cast<std::size_t>(n)], params, xn, 1);
    ref_logits.insert(ref_logits.end(), l.begin(), l.end());
    ref_loss += reference::cross_entropy<double>(l, yn, config.classes) / double(batch);
    alone_loss += alone.forward(masks[static_cast<std::size_t>(n)], params,
                                MatView<const double>(xn.data(), config.in_dim, 1), yn) /
                  double(batch);
    alone.backward(params, g1);
    for (std::size_t i = 0; i < g1.size(); ++i) avg_grads[i] += g1[i] / double(batch);
  }
  CHECK(loss == doctest::Approx(ref_loss).epsilon(1e-12));
  CHECK(loss == doctest::Approx(alone_loss).epsilon(1e-12));
  CHECK(test::max_abs_diff<double>(logits, ref_logits) < 1e-12 * (1 + test::max_abs<double>(ref_logits)));
  CHECK(test::max_abs_diff<double>(grads, avg_grads) < 1e-12 * (1 + test::max_abs<double>(avg_grads)));
}

}  // namespace

TEST_CASE("per-sample gating equals the reference path and the per-sample structured average") {
  check_against_oracles<MlpFamily<4, 2>>(MlpConfig{.in_dim = 7, .d = 6, .h = 8, .classes = 3}, 11);
  check_against_oracles<MlpFamily<4, 2, GateLayout::merge_only>>(
      MlpConfig{.in_dim = 7, .d = 6, .h = 8, .classes = 3}, 12);
  check_against_oracles<MlpFamily<3, 3>>(MlpConfig{.in_dim = 5, .d = 4, .h = 6, .classes = 4}, 13);
  check_against_oracles<MlpFamily<4, 2, GateLayout::merge_and_branch, FinalNorm::none>>(
      MlpConfig{.in_dim = 7, .d = 6, .h = 8, .classes = 3}, 14);
}

TEST_CASE("per-sample gradients match float64 finite differences") {
  using F = MlpFamily<2, 2>;
  const MlpConfig config{.in_dim = 3, .d = 4, .h = 4, .classes = 3};
  constexpr Index batch = 6;
  cpu::PerSampleMlp<F, double> model(config, 1);
  auto params = test::random_params<double>(model.layout(), 5);
  const auto x = test::random_inputs<double>(config.in_dim, batch, 6);
  const auto y = test::random_labels(batch, config.classes, 7);
  const auto masks = random_masks<F>(batch, 8);
  const MatView<const double> xv(x.data(), config.in_dim, batch);
  model.forward(masks, params, xv, y);
  REQUIRE_FALSE(model.last_uniform());
  std::vector<double> grads(params.size());
  model.backward(params, grads);
  REQUIRE(test::max_abs<double>(grads) > 1e-3);
  constexpr double step = 1e-6;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const double saved = params[i];
    params[i] = saved + step;
    const double up = model.forward(masks, params, xv, y);
    params[i] = saved - step;
    const double down = model.forward(masks, params, xv, y);
    params[i] = saved;
    const double fd = (up - down) / (2 * step);
    INFO("parameter " << i);
    CHECK(std::abs(fd - grads[i]) <= 1e-7 + 1e-6 * std::abs(grads[i]));
  }
}

TEST_CASE("one shared mask takes the structured path, bit for bit") {
  using F = MlpFamily<4, 2>;
  const MlpConfig config{.in_dim = 7, .d = 6, .h = 8, .classes = 3};
  constexpr Index batch = 5;
  cpu::PerSampleMlp<F, double> model(config, 1);
  cpu::MlpModel<F, double> structured(config, 1);
  const auto params = test::random_params<double>(model.layout(), 21);
  const auto x = test::random_inputs<double>(config.in_dim, batch, 22);
  const auto y = test::random_labels(batch, config.classes, 23);
  const MatView<const double> xv(x.data(), config.in_dim, batch);
  for (const std::uint64_t bits : {F::mask_type::full_bits, std::uint64_t{0x5a}}) {
    const std::vector<F::mask_type> masks(batch, F::mask_type(bits));
    std::vector<double> g1(params.size()), g2(params.size());
    const double l1 = model.forward(masks, params, xv, y);
    CHECK(model.last_uniform());
    model.backward(params, g1);
    const double l2 = structured.forward(F::mask_type(bits), params, xv, y);
    structured.backward(params, g2);
    CHECK(l1 == l2);
    CHECK(g1 == g2);
  }
}

TEST_CASE("a block whose branch is off for a sample does no work for it") {
  using F = MlpFamily<4, 2>;  // 8 gates: block l owns bits [4l, 4l+4), bit 4l+3 its branch
  const MlpConfig config{.in_dim = 7, .d = 6, .h = 8, .classes = 3};
  constexpr Index batch = 6;
  cpu::PerSampleMlp<F, double> model(config, 1);
  const auto params = test::random_params<double>(model.layout(), 31);
  const auto x = test::random_inputs<double>(config.in_dim, batch, 32);
  const auto y = test::random_labels(batch, config.classes, 33);
  // Block 0 branch on for samples 0, 2; block 1 branch on for sample 0 only.
  std::vector<F::mask_type> masks{F::mask_type(0xff), F::mask_type(0x07), F::mask_type(0x0b),
                                  F::mask_type(0x00), F::mask_type(0x77), F::mask_type(0x03)};
  model.backend().reset_counters();
  model.forward(masks, params, MatView<const double>(x.data(), config.in_dim, batch), y);
  REQUIRE_FALSE(model.last_uniform());
  CHECK(model.active_samples(0) == 2);
  CHECK(model.active_samples(1) == 1);
  const double d = double(config.d), h = double(config.h), in = double(config.in_dim),
               c = double(config.classes);
  const double expected = 2 * in * d * batch + 2 * (2 * h * d) * (2 + 1) + 4 * 2 * c * d * batch;
  CHECK(model.backend().counters().gemm_flops == expected);

  // No sample uses block 1's branch: its parameters get exact zeros.
  for (auto& m : masks) m = F::mask_type(m.bits() & 0x0f);
  model.forward(masks, params, MatView<const double>(x.data(), config.in_dim, batch), y);
  std::vector<double> grads(params.size(), 1.0);
  model.backward(params, grads);
  const auto& layout = model.layout();
  for (const auto& t : layout.tensors()) {
    double m = 0;
    for (std::size_t i = 0; i < t.size; ++i) m = std::max(m, std::abs(grads[t.offset + i]));
    if (t.name.starts_with("blocks.1."))
      CHECK_MESSAGE(m == 0.0, t.name);
    else
      CHECK_MESSAGE(m > 0.0, t.name);
  }
}

TEST_CASE("per-sample gating rejects a mask count that is not the batch") {
  using F = MlpFamily<4, 2>;
  const MlpConfig config{.in_dim = 7, .d = 6, .h = 8, .classes = 3};
  cpu::PerSampleMlp<F, double> model(config, 1);
  const auto params = test::random_params<double>(model.layout(), 41);
  const auto x = test::random_inputs<double>(config.in_dim, 3, 42);
  const auto y = test::random_labels(3, config.classes, 43);
  const std::vector<F::mask_type> masks(2, F::mask_type(0));
  CHECK_THROWS_AS(model.forward(masks, params, MatView<const double>(x.data(), config.in_dim, 3), y),
                  InputError);
}
