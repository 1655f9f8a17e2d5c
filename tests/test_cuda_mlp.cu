// cuda::MlpModel against cpu::MlpModel for every structure of small models: the loss,
// the logits and every gradient element. The CPU side runs in double on the same
// (float-rounded) parameters and inputs, so the difference is the GPU's fp32 (or TF32)
// arithmetic alone; tolerances in docs/cuda.md. Skips without a device.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "additive/cpu/mlp_model.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/mlp_model.cuh"

#include "cuda_support.cuh"
#include "test_support.hpp"

using namespace additive;

namespace {

/// Relative tolerances (to the largest reference element) of the GPU model against the
/// CPU float64 model, per GEMM precision.
struct Tolerance {
  double loss = 0;
  double logits = 0;
  double grads = 0;
};
// fp32: the logits carry ~1e-6 relative error (sums of d = 16 and h = 24 products through
// two blocks), the loss inherits it on logits of a few units; the golden float32 test
// uses 1e-5 on the loss for the same reason.
constexpr Tolerance fp32_tolerance{1e-5, 1e-5, 1e-4};
constexpr Tolerance tf32_tolerance{2e-3, 5e-3, 2e-2};

template <class F>
void check_every_structure(const MlpConfig& config, std::uint64_t seed, bool tf32) {
  const Tolerance tol = tf32 ? tf32_tolerance : fp32_tolerance;
  constexpr Index batch = 9;
  cpu::MlpModel<F, double> reference(config, 1);
  cuda::MlpModel<F, float> model(config);
  model.backend().blas().set_tf32(tf32);

  // Float-rounded parameters and inputs, seen by both sides.
  const auto p64 = test::random_params<double>(reference.layout(), seed);
  const std::vector<float> p32(p64.begin(), p64.end());
  const std::vector<double> params(p32.begin(), p32.end());
  const auto x64 = test::random_inputs<double>(config.in_dim, batch, seed + 1);
  const std::vector<float> x32(x64.begin(), x64.end());
  const std::vector<double> x(x32.begin(), x32.end());
  const auto y = test::random_labels(batch, config.classes, seed + 2);

  auto gparams = cuda::to_device(p32);
  auto gx = cuda::to_device(x32);
  cuda::DeviceBuffer<float> ggrads(p32.size());
  std::vector<double> grads(params.size());
  const MatView<const double> xv(x.data(), config.in_dim, batch);
  const MatView<const float> gxv(gx.data(), config.in_dim, batch);

  double worst_grads = 0;
  for (std::uint64_t bits = 0; bits < F::mask_type::count; ++bits) {
    const auto m = typename F::mask_type(bits);
    CAPTURE(F::to_string(m));
    const double loss = reference.forward(m, params, xv, y);
    reference.backward(params, grads);
    const float gloss = model.forward(m, std::as_const(gparams).span(), gxv, y);
    model.backward(std::as_const(gparams).span(), ggrads.span());
    model.backend().synchronize();

    CHECK(std::abs(double(gloss) - loss) <= tol.loss * std::abs(loss));
    const auto logits = test::to_vector(reference.logits());
    std::vector<float> glogits(logits.size());
    ADDITIVE_CUDA_CHECK(cudaMemcpy(glogits.data(), model.logits().data, glogits.size() * sizeof(float),
                                   cudaMemcpyDeviceToHost));
    CHECK(test::relative_error(std::vector<double>(glogits.begin(), glogits.end()), logits) <= tol.logits);

    const auto g32 = ggrads.to_host();
    const std::vector<double> g(g32.begin(), g32.end());
    REQUIRE(test::max_abs<double>(grads) > 1e-3);  // the comparison is not vacuous
    const double err = test::relative_error(g, grads);
    worst_grads = std::max(worst_grads, err);
    CHECK(err <= tol.grads);
    // Skipped blocks: the CPU writes exact zeros, so must the GPU.
    for (std::size_t i = 0; i < grads.size(); ++i)
      if (grads[i] == 0.0) CHECK(g[i] == 0.0);
  }
  MESSAGE(F::describe() << (tf32 ? " TF32" : " fp32")
                        << ": worst gradient error / max |gradient| = " << worst_grads);
}

}  // namespace

TEST_CASE("cuda::MlpModel matches the CPU model, every structure, S = 3, L = 2 (n = 6), fp32") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<MlpFamily<3, 2>>({.in_dim = 12, .d = 16, .h = 24, .classes = 5}, 41, false);
}

TEST_CASE("cuda::MlpModel matches the CPU model, every structure, S = 4, L = 2, merge_only, fp32") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<MlpFamily<4, 2, GateLayout::merge_only>>(
      {.in_dim = 10, .d = 8, .h = 16, .classes = 4}, 43, false);
}

TEST_CASE("cuda::MlpModel with TF32 GEMMs stays within the TF32 tolerance, S = 3, L = 2") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<MlpFamily<3, 2>>({.in_dim = 12, .d = 16, .h = 24, .classes = 5}, 47, true);
}

TEST_CASE("cuda::MlpModel rejects bad inputs with the CPU model's errors") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const MlpConfig config{.in_dim = 6, .d = 8, .h = 12, .classes = 3};
  cuda::MlpModel<MlpFamily<3, 2>, float> model(config);
  cuda::DeviceBuffer<float> params(model.layout().total()), grads(model.layout().total());
  params.zero();
  cuda::DeviceBuffer<float> x(static_cast<std::size_t>(6 * 2));
  x.zero();
  ADDITIVE_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<std::int32_t> bad_label{0, 3};
  using Mask = MlpFamily<3, 2>::mask_type;
  CHECK_THROWS_AS(model.backward(std::as_const(params).span(), grads.span()), RuntimeError);
  CHECK_THROWS_AS(
      model.forward(Mask(0), std::as_const(params).span(), std::as_const(x).view(6, 2), bad_label),
      InputError);
  CHECK_THROWS_AS(model.forward(Mask(0), std::as_const(params).span(), std::as_const(x).view(3, 4),
                                std::vector<std::int32_t>{0, 1, 2, 0}),
                  InputError);
}

TEST_CASE("cuda::MlpModel: a rerun and a second model give the same bits (deterministic mode)") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  using F = MlpFamily<3, 2>;
  const MlpConfig config{.in_dim = 12, .d = 16, .h = 24, .classes = 5};
  constexpr Index batch = 33;
  cuda::MlpModel<F, float> a(config), b(config);
  REQUIRE(a.backend().blas().deterministic());
  const auto params = cuda::to_device(test::random_params<float>(a.layout(), 51));
  const auto x = cuda::to_device(test::random_inputs<float>(config.in_dim, batch, 52));
  const auto y = test::random_labels(batch, config.classes, 53);
  auto run = [&](cuda::MlpModel<F, float>& model) {
    cuda::DeviceBuffer<float> grads(params.size());
    const float loss =
        model.forward(F::mask_type::parse("0x2d"), params.span(), x.view(config.in_dim, batch), y);
    model.backward(params.span(), grads.span());
    model.backend().synchronize();
    auto g = grads.to_host();
    g.push_back(loss);
    return g;
  };
  const auto first = run(a);
  REQUIRE(test::max_abs<float>(first) > 1e-3);
  for (auto* model : {&a, &b}) {
    const auto again = run(*model);
    CHECK(std::memcmp(again.data(), first.data(), first.size() * sizeof(float)) == 0);
  }
}
