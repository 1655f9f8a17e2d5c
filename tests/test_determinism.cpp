// Bit-identical results for any thread count and for reruns with the same inputs, on
// shapes whose batch is not a multiple of the task size (so the last task is partial).
#include <doctest/doctest.h>

#include <vector>

#include "additive/cpu/mlp_model.hpp"

#include "test_support.hpp"

using namespace additive;

TEST_CASE_TEMPLATE("forward and backward are bit-identical on 1, 2 and 3 threads", T, float, double) {
  using F = MlpFamily<4, 2>;
  const MlpConfig config{.in_dim = 50, .d = 64, .h = 128, .classes = 10};
  constexpr Index batch = 200;
  const auto x = test::random_inputs<T>(config.in_dim, batch, 1);
  const auto y = test::random_labels(batch, config.classes, 2);
  const MatView<const T> xv(x.data(), config.in_dim, batch);

  for (const std::uint64_t bits : {0xFFULL, 0x88ULL, 0x6DULL, 0xADULL}) {
    const auto m = F::mask_type(bits);
    std::vector<std::vector<T>> logits, grads;
    std::vector<T> losses;
    for (const int threads : {1, 2, 3, 2}) {
      cpu::MlpModel<F, T> model(config, threads);
      std::vector<T> params(model.layout().total()), g(model.layout().total());
      init_mlp_params<T>(config, F::blocks, 7, params);
      losses.push_back(model.forward(m, params, xv, y));
      logits.push_back(test::to_vector(model.logits()));
      model.backward(params, g);
      grads.push_back(g);
    }
    REQUIRE(test::max_abs<T>(grads[0]) > 0);
    for (std::size_t r = 1; r < losses.size(); ++r) {
      CHECK(losses[r] == losses[0]);
      CHECK(logits[r] == logits[0]);
      CHECK(grads[r] == grads[0]);
    }
  }
}
