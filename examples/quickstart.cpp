// quickstart: the README's library example. One structure chosen at compile time, another
// at run time through the dispatch tables, one training step, and the structure printed.
#include <cstdio>
#include <vector>

#include "additive/additive.hpp"

int main() {
  using namespace additive;
  using Family = MlpFamily<4, 2>;  // S = 4 shards, L = 2 blocks: n = 8 gates, 256 structures
  const MlpConfig config{.in_dim = 784, .d = 64, .h = 256, .classes = 10};

  cpu::MlpModel<Family, float> model(config, /*threads=*/2);
  std::vector<float> params(model.layout().total()), grads(params.size());
  init_mlp_params<float>(config, Family::blocks, /*seed=*/1, params);

  std::vector<float> x(784 * 32, 0.5f);  // (in_dim, batch) column-major
  std::vector<std::int32_t> y(32, 3);
  const MatView<const float> batch(x.data(), 784, 32);

  // Compile time: the structure is a type, its plan straight-line code.
  using Mixed = Structure<Family, 0xAD>;  // [12|34] res=1 . [1|23|4] res=1
  static_assert(Mixed::block<0>.segments().size() == 2);
  const float loss_a = model.forward<Mixed>(params, batch, y);

  // Run time: a mask from anywhere (a flag, a search) goes through the per-block tables.
  const auto mask = Family::mask_type::parse("0x88");  // every shard its own network
  const float loss_b = model.forward(mask, params, batch, y);
  model.backward(params, grads);

  AdamW<float> adamw(model.layout());
  adamw.step(params, grads, 1e-3f);

  std::printf("%s: loss %.4f\n%s: loss %.4f\n", Mixed::to_string().c_str(), loss_a,
              Family::to_string(mask).c_str(), loss_b);
}
