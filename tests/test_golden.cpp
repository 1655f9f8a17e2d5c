// The golden fixture of tests/golden/: an independent PyTorch implementation of the MLP
// family (reference.py) recorded float64 logits of every mask and 10 float32 AdamW steps
// of four structures. This test loads the same weights and batches and must agree
// within the tolerances argued in tests/golden/README.md.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/cpu/mlp_model.hpp"
#include "additive/io/safetensors.hpp"
#include "additive/optim/adamw.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

using F = MlpFamily<4, 2>;
const MlpConfig config{.in_dim = 48, .d = 32, .h = 64, .classes = 10};
constexpr Index batch = 16;
constexpr int batches = 4;

const std::string fixture_dir = std::string(ADDITIVE_SOURCE_DIR) + "/tests/golden/";

struct Golden {
  SafetensorsFile file{fixture_dir + "mlp_golden.safetensors"};
  nlohmann::json meta = nlohmann::json::parse(std::ifstream(fixture_dir + "mlp_golden.json"));

  /// Parameters under `prefix` (e.g. "" or "perturbed.") as a flat buffer of T.
  template <class T>
  std::vector<T> params(const ParamLayout& layout, const std::string& prefix = "") const {
    std::vector<T> p(layout.total());
    for (const auto& t : layout.tensors())
      file.read_into<T>(prefix + t.name, std::span<T>(p.data() + t.offset, t.size));
    return p;
  }
  template <class T>
  std::vector<T> x(int i) const {
    return file.read<T>("batch." + std::to_string(i) +
                        ".x");  // (batch, in) row-major == (in, batch) col-major
  }
  std::vector<std::int32_t> y(int i) const {
    const auto y64 = file.read<std::int64_t>("batch." + std::to_string(i) + ".y");
    return {y64.begin(), y64.end()};
  }
};

double norm(std::span<const float> v) {
  double s = 0;
  for (const float e : v) s += double(e) * double(e);
  return std::sqrt(s);
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

}  // namespace

TEST_CASE("golden: float64 forward of every mask matches the PyTorch reference to 1e-12") {
  const Golden g;
  REQUIRE(g.meta.at("config").at("d") == config.d);
  cpu::MlpModel<F, double> model(config, 2);
  const auto x = g.x<double>(0);
  const auto y = g.y(0);
  const MatView<const double> xv(x.data(), config.in_dim, batch);
  for (const std::string prefix : {"", "perturbed."}) {
    CAPTURE(prefix);
    const auto p = g.params<double>(model.layout(), prefix);
    const auto losses = g.file.read<double>(prefix + "loss64.all_masks");
    REQUIRE(losses.size() == 256);
    for (std::uint64_t m = 0; m < 256; ++m) {
      const double loss = model.forward(F::mask_type(m), p, xv, y);
      CHECK_MESSAGE(std::abs(loss - losses[m]) < 1e-12, "mask " << m);
    }
    for (const char* hex : {"0xff", "0x88", "0x6d", "0xad"}) {
      const auto want = g.file.read<double>(prefix + "logits64." + hex);  // (batch, classes) row-major
      model.forward(F::mask_type::parse(hex), p, xv, y);
      const auto got = test::to_vector(model.logits());  // (classes, batch) column-major: same order
      REQUIRE(test::max_abs<double>(want) > 0.1);
      CHECK_MESSAGE(test::max_abs_diff<double>(got, want) < 1e-12, hex);
    }
  }
}

TEST_CASE("golden: 10 float32 AdamW steps of four structures follow the PyTorch trajectories") {
  const Golden g;
  const auto& opt = g.meta.at("optimizer");
  REQUIRE(opt.at("steps") == 10);
  for (const auto& s : g.meta.at("structures")) {
    const auto mask = F::mask_type(s.at("mask").get<std::uint64_t>());
    CAPTURE(s.at("name").get<std::string>());
    cpu::MlpModel<F, float> model(config, 2);
    auto p = g.params<float>(model.layout());
    std::vector<float> grads(p.size());
    AdamW<float> adamw(model.layout(), AdamWConfig{.beta1 = opt.at("betas")[0],
                                                   .beta2 = opt.at("betas")[1],
                                                   .eps = opt.at("eps"),
                                                   .weight_decay = opt.at("weight_decay")});
    std::vector<std::vector<float>> xs;
    for (int i = 0; i < batches; ++i) xs.push_back(g.x<float>(i));
    for (int t = 0; t < 10; ++t) {
      const auto y = g.y(t % batches);
      const float loss = model.forward(
          mask, p, MatView<const float>(xs[std::size_t(t % batches)].data(), config.in_dim, batch), y);
      model.backward(p, grads);
      CHECK_MESSAGE(rel(loss, s.at("loss")[std::size_t(t)]) < 1e-5, "loss at step " << t);
      CHECK_MESSAGE(rel(norm(grads), s.at("grad_norm")[std::size_t(t)]) < 1e-4, "grad norm at step " << t);
      adamw.step(p, grads, float(opt.at("lr").get<double>()));
    }
    const float final_loss =
        model.forward(mask, p, MatView<const float>(xs[0].data(), config.in_dim, batch), g.y(0));
    CHECK(rel(final_loss, s.at("final_loss")) < 1e-5);
    CHECK(rel(norm(p), s.at("final_param_norm")) < 1e-5);
  }
}
