// The golden fixture of tests/golden/ on the GPU: 10 float32 AdamW steps of the four
// recorded structures with cuda::MlpModel (fp32 GEMMs, no TF32) and cuda::AdamW, against
// the PyTorch trajectories, with test_golden.cpp's float32 tolerances (argued in
// tests/golden/README.md). Skips without a device.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/cuda/adamw.cuh"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/mlp_model.cuh"
#include "additive/io/safetensors.hpp"

#include "cuda_support.cuh"

using namespace additive;

namespace {

using F = MlpFamily<4, 2>;
const MlpConfig config{.in_dim = 48, .d = 32, .h = 64, .classes = 10};
constexpr Index batch = 16;
constexpr int batches = 4;

const std::string fixture_dir = std::string(ADDITIVE_SOURCE_DIR) + "/tests/golden/";

double norm(const std::vector<float>& v) {
  double s = 0;
  for (const float e : v) s += double(e) * double(e);
  return std::sqrt(s);
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

}  // namespace

TEST_CASE("golden on the GPU: 10 float32 AdamW steps of four structures follow the PyTorch trajectories") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const SafetensorsFile file(fixture_dir + "mlp_golden.safetensors");
  const auto meta = nlohmann::json::parse(std::ifstream(fixture_dir + "mlp_golden.json"));
  const auto& opt = meta.at("optimizer");
  REQUIRE(opt.at("steps") == 10);
  std::vector<cuda::DeviceBuffer<float>> xs;
  std::vector<std::vector<std::int32_t>> ys;
  for (int i = 0; i < batches; ++i) {
    // (batch, in) row-major == (in, batch) column-major
    xs.push_back(cuda::to_device(file.read<float>("batch." + std::to_string(i) + ".x")));
    const auto y64 = file.read<std::int64_t>("batch." + std::to_string(i) + ".y");
    ys.emplace_back(y64.begin(), y64.end());
  }
  for (const auto& s : meta.at("structures")) {
    const auto mask = F::mask_type(s.at("mask").get<std::uint64_t>());
    CAPTURE(s.at("name").get<std::string>());
    cuda::MlpModel<F, float> model(config);
    std::vector<float> host_params(model.layout().total());
    for (const auto& t : model.layout().tensors())
      file.read_into<float>(t.name, std::span<float>(host_params.data() + t.offset, t.size));
    auto p = cuda::to_device(host_params);
    cuda::DeviceBuffer<float> grads(p.size());
    cuda::AdamW<float> adamw(model.layout(), AdamWConfig{.beta1 = opt.at("betas")[0],
                                                         .beta2 = opt.at("betas")[1],
                                                         .eps = opt.at("eps"),
                                                         .weight_decay = opt.at("weight_decay")});
    auto x = [&](int t) { return std::as_const(xs[std::size_t(t % batches)]).view(config.in_dim, batch); };
    for (int t = 0; t < 10; ++t) {
      const float loss = model.forward(mask, std::as_const(p).span(), x(t), ys[std::size_t(t % batches)]);
      model.backward(std::as_const(p).span(), grads.span());
      model.backend().synchronize();
      CHECK_MESSAGE(rel(loss, s.at("loss")[std::size_t(t)]) < 1e-5, "loss at step " << t);
      CHECK_MESSAGE(rel(norm(grads.to_host()), s.at("grad_norm")[std::size_t(t)]) < 1e-4,
                    "grad norm at step " << t);
      adamw.step(p.span(), std::as_const(grads).span(), float(opt.at("lr").get<double>()),
                 model.backend().stream());
    }
    const float final_loss = model.forward(mask, std::as_const(p).span(), x(0), ys[0]);
    model.backend().synchronize();
    CHECK(rel(final_loss, s.at("final_loss")) < 1e-5);
    CHECK(rel(norm(p.to_host()), s.at("final_param_norm")) < 1e-5);
  }
}
