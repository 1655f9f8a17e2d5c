// Structure costs agree with what the backend executes and with DESIGN section 5.
#include <doctest/doctest.h>

#include "additive/cpu/mlp_model.hpp"
#include "additive/nn/cost.hpp"

#include "test_support.hpp"

using namespace additive;

TEST_CASE("FLOPs per sample and active parameters match the executed plan of every structure") {
  using F = MlpFamily<4, 2>;
  const MlpConfig c{.in_dim = 7, .d = 6, .h = 8, .classes = 5};
  constexpr Index batch = 3;
  cpu::MlpModel<F, double> model(c, 1);
  const auto p = test::random_params<double>(model.layout(), 1);
  const auto x = test::random_inputs<double>(c.in_dim, batch, 2);
  const auto y = test::random_labels(batch, c.classes, 3);
  std::vector<double> g(p.size());
  for (std::uint64_t b = 0; b < F::mask_type::count; ++b) {
    const auto m = F::mask_type(b);
    model.backend().reset_counters();
    model.forward(m, p, MatView<const double>(x.data(), c.in_dim, batch), y);
    const auto cost = mlp_cost<F>(c, m, batch);
    CHECK(cost.flops_per_sample * batch == doctest::Approx(model.backend().counters().gemm_flops));
    model.backward(p, g);
    std::int64_t nonzero_tensors_params = 0;
    for (const auto& t : model.layout().tensors()) {
      bool used = false;
      for (std::size_t i = 0; i < t.size; ++i) used = used || g[t.offset + i] != 0.0;
      if (used) nonzero_tensors_params += static_cast<std::int64_t>(t.size);
    }
    CHECK(cost.active_params == nonzero_tensors_params);
  }
}

TEST_CASE("communication: dense pays S-way all-reduces, all-split and skipped blocks pay nothing") {
  using F = MlpFamily<4, 2>;
  const MlpConfig c{.in_dim = 784, .d = 256, .h = 1024, .classes = 10};
  const double act = 256.0 * 128 * 4;  // one (d, batch) float tensor
  const LinkModel link{.bandwidth = 1e9, .latency = 1e-6};
  const auto dense = mlp_cost<F>(c, F::mask_type(0xFF), 128, 4, link);
  // Per block: one forward all-reduce of the segment's Z and one backward of its dZ.
  CHECK(dense.allreduces == 4);
  CHECK(dense.comm_bytes == doctest::Approx(4 * 2.0 * 3 / 4 * act));
  CHECK(dense.comm_seconds == doctest::Approx(4 * (2.0 * 3 / 4 * act / 1e9 + 6e-6)));
  // Every shard its own network: one-shard segments need no all-reduce, in either pass.
  const auto split = mlp_cost<F>(c, F::mask_type(0x88), 128, 4, link);
  CHECK(split.allreduces == 0);
  CHECK(split.comm_bytes == 0.0);
  CHECK(mlp_cost<F>(c, F::mask_type(0x00), 128, 4, link).allreduces == 0);
  // [12|34] then [1234]: segments of 2, 2 and 4 devices, each all-reduced forward and
  // backward: 2 * (2 * 1.0 + 1.5) activations.
  const auto mixed = mlp_cost<F>(c, F::mask_type(0xFD), 128, 4, link);
  CHECK(mixed.allreduces == 2 * (2 + 1));
  CHECK(mixed.comm_bytes == doctest::Approx(2 * (2 * 1.0 + 1.5) * act));
  // Only the block's first merge gate: [12|3|4] costs one 2-way all-reduce each way.
  const auto one = mlp_cost<F>(c, F::mask_type(0x09), 128, 4, link);
  CHECK(one.allreduces == 2);
  CHECK(one.comm_bytes == doctest::Approx(2 * 1.0 * act));
}
