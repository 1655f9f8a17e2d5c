// DESIGN property 4: for every structure of small models (n = 6 and n = 8), the analytic
// gradient of every parameter matches a float64 central finite difference of the loss.
// Unoptimised under the sanitizers this takes minutes:
// ADDITIVE_TEST_TIMEOUT: 900
#include <doctest/doctest.h>

#include <vector>

#include "additive/cpu/mlp_model.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

template <class F>
void check_every_structure(const MlpConfig& config, std::uint64_t seed) {
  constexpr Index batch = 3;
  cpu::MlpModel<F, double> model(config, 1);
  auto params = test::random_params<double>(model.layout(), seed);
  const auto x = test::random_inputs<double>(config.in_dim, batch, seed + 1);
  const auto y = test::random_labels(batch, config.classes, seed + 2);
  const MatView<const double> xv(x.data(), config.in_dim, batch);
  std::vector<double> grads(params.size());
  constexpr double step = 1e-6;
  std::size_t compared = 0;
  double worst = 0;

  for (std::uint64_t bits = 0; bits < F::mask_type::count; ++bits) {
    const auto m = typename F::mask_type(bits);
    model.forward(m, params, xv, y);
    model.backward(params, grads);
    REQUIRE(test::max_abs<double>(grads) > 1e-3);  // the check is not vacuous
    for (std::size_t i = 0; i < params.size(); ++i) {
      const double saved = params[i];
      params[i] = saved + step;
      const double up = model.forward(m, params, xv, y);
      params[i] = saved - step;
      const double down = model.forward(m, params, xv, y);
      params[i] = saved;
      const double fd = (up - down) / (2 * step);
      const double err = std::abs(fd - grads[i]);
      worst = std::max(worst, err / (1e-7 + 1e-6 * std::abs(grads[i])));
      if (err > 1e-7 + 1e-6 * std::abs(grads[i])) {
        FAIL_CHECK("mask " << F::to_string(m) << ": d loss / d param " << i << " analytic " << grads[i]
                           << " finite difference " << fd);
      }
      ++compared;
    }
  }
  MESSAGE(compared << " partial derivatives compared; worst error / tolerance = " << worst);
  CHECK(compared == F::mask_type::count * params.size());
}

}  // namespace

TEST_CASE("property 4: gradients of every parameter, every structure, S = 3, L = 2 (n = 6)") {
  check_every_structure<MlpFamily<3, 2>>({.in_dim = 4, .d = 4, .h = 6, .classes = 3}, 21);
}

TEST_CASE("property 4: gradients of every parameter, every structure, S = 4, L = 2 (n = 8)") {
  check_every_structure<MlpFamily<4, 2>>({.in_dim = 3, .d = 4, .h = 8, .classes = 3}, 31);
}

TEST_CASE("property 4: gradients of every parameter, every structure, merge-only S = 3, L = 3 (n = 6)") {
  check_every_structure<MlpFamily<3, 3, GateLayout::merge_only>>({.in_dim = 3, .d = 4, .h = 6, .classes = 3},
                                                                 41);
}

TEST_CASE("property 4: gradients of every structure of the family without a final norm (n = 6)") {
  check_every_structure<MlpFamily<3, 3, GateLayout::merge_only, FinalNorm::none>>(
      {.in_dim = 3, .d = 4, .h = 6, .classes = 3}, 51);
}
