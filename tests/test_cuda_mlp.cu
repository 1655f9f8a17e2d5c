// cuda::MlpModel against cpu::MlpModel for every structure of small models, per GEMM
// precision (fp32, TF32, bf16 mixed): the loss, the logits and every gradient element. The
// CPU side runs in double on the same (float-rounded) parameters and inputs, so the
// difference is the GPU's arithmetic alone; tolerances argued in docs/cuda.md. Then the
// asynchronous / graph-captured forward against the synchronous one, several models on
// several streams at once, the ready ranges of backward, and the workspace errors.
// Skips without a device.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "additive/cpu/mlp_model.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/mlp_model.cuh"
#include "additive/cuda/stream.cuh"

#include "cuda_support.cuh"
#include "test_support.hpp"

using namespace additive;

namespace {

/// Relative tolerances (to the largest reference element) of the GPU model against the
/// CPU float64 model, per GEMM precision (docs/cuda.md, "Tolerances", has the argument:
/// unit roundoff u of the GEMM operands, K <= 24 terms per dot product, about four GEMMs
/// chained in the forward pass and six in a gradient).
struct Tolerance {
  double loss = 0;
  double logits = 0;
  double grads = 0;
};
// fp32 (u = 2^-24 = 6e-8): ~1e-6 on the logits; the golden float32 test uses 1e-5 on the
// loss for the same reason.
constexpr Tolerance fp32_tolerance{1e-5, 1e-5, 1e-4};
// TF32 (u = 2^-11 = 4.9e-4 per operand): a few u through the chain.
constexpr Tolerance tf32_tolerance{2e-3, 5e-3, 2e-2};
// bf16 operands (u = 2^-8 = 3.9e-3 per operand, 2u per product): ~2u per GEMM relative to
// the scale of its output, about sqrt(4) and sqrt(6) of that through the chains.
constexpr Tolerance bf16_tolerance{1e-2, 2e-2, 3e-2};

Tolerance tolerance(cuda::Precision p) {
  switch (p) {
    case cuda::Precision::fp32:
      return fp32_tolerance;
    case cuda::Precision::tf32:
      return tf32_tolerance;
    case cuda::Precision::bf16:
      return bf16_tolerance;
  }
  return {};
}

template <class T>
std::vector<T> download(const T* device, std::size_t n) {
  std::vector<T> host(n);
  ADDITIVE_CUDA_CHECK(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

template <class F>
void check_every_structure(const MlpConfig& config, std::uint64_t seed, cuda::Precision precision) {
  const Tolerance tol = tolerance(precision);
  constexpr Index batch = 9;
  cpu::MlpModel<F, double> reference(config, 1);
  cuda::MlpModel<F, float> model(config);
  model.backend().set_precision(precision);

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

  double worst_loss = 0, worst_logits = 0, worst_grads = 0;
  for (std::uint64_t bits = 0; bits < F::mask_type::count; ++bits) {
    const auto m = typename F::mask_type(bits);
    CAPTURE(F::to_string(m));
    const double loss = reference.forward(m, params, xv, y);
    reference.backward(params, grads);
    const float gloss = model.forward(m, std::as_const(gparams).span(), gxv, y);
    model.backward(std::as_const(gparams).span(), ggrads.span());
    model.backend().synchronize();

    const double loss_err = std::abs(double(gloss) - loss) / std::abs(loss);
    worst_loss = std::max(worst_loss, loss_err);
    CHECK(loss_err <= tol.loss);
    const auto logits = test::to_vector(reference.logits());
    const auto glogits = download(model.logits().data, logits.size());
    const double logits_err =
        test::relative_error(std::vector<double>(glogits.begin(), glogits.end()), logits);
    worst_logits = std::max(worst_logits, logits_err);
    CHECK(logits_err <= tol.logits);

    const auto g32 = ggrads.to_host();
    const std::vector<double> g(g32.begin(), g32.end());
    REQUIRE(test::max_abs<double>(grads) > 1e-3);  // the comparison is not vacuous
    // Every tensor on its own scale, so that a small tensor (a bias) cannot hide; a
    // tensor far smaller than the largest gradient (1e-3 of it) is measured against that
    // floor instead, so that rounding noise on a near-zero tensor cannot fail the test.
    const double floor = 1e-3 * test::max_abs<double>(grads);
    for (const auto& t : reference.layout().tensors()) {
      CAPTURE(t.name);
      const std::span<const double> ref(grads.data() + t.offset, t.size);
      const double scale = test::max_abs<double>(ref);
      if (scale == 0.0) {  // skipped block: exact zeros on both sides
        for (std::size_t i = t.offset; i < t.offset + t.size; ++i) CHECK(g[i] == 0.0);
        continue;
      }
      double diff = 0;
      for (std::size_t i = t.offset; i < t.offset + t.size; ++i)
        diff = std::max(diff, std::abs(g[i] - grads[i]));
      const double err = diff / std::max(scale, floor);
      worst_grads = std::max(worst_grads, err);
      CHECK(err <= tol.grads);
    }
  }
  MESSAGE(F::describe() << " " << cuda::to_string(precision) << ": worst relative error: loss " << worst_loss
                        << ", logits " << worst_logits << ", gradient tensors " << worst_grads);
}

using F32 = MlpFamily<3, 2>;
const MlpConfig config32{.in_dim = 12, .d = 16, .h = 24, .classes = 5};

/// A model's outputs for one step: loss, logits, gradients (bits).
struct Step {
  float loss = 0;
  std::vector<float> logits;
  std::vector<float> grads;
};

bool same_bits(const Step& a, const Step& b) {
  return std::memcmp(&a.loss, &b.loss, sizeof(float)) == 0 && a.logits.size() == b.logits.size() &&
         std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)) == 0 &&
         a.grads.size() == b.grads.size() &&
         std::memcmp(a.grads.data(), b.grads.data(), a.grads.size() * sizeof(float)) == 0;
}

struct Data {
  cuda::DeviceBuffer<float> params, x;
  std::vector<std::int32_t> labels;
  cuda::DeviceBuffer<std::int32_t> labels_device;
  Index batch = 0;
  Data(const ParamLayout& layout, Index b, std::uint64_t seed)
      : params(cuda::to_device(test::random_params<float>(layout, seed))),
        x(cuda::to_device(test::random_inputs<float>(config32.in_dim, b, seed + 1))),
        labels(test::random_labels(b, config32.classes, seed + 2)),
        labels_device(cuda::to_device(labels)),
        batch(b) {}
  [[nodiscard]] MatView<const float> xv() const { return x.view(config32.in_dim, batch); }
};

Step sync_step(cuda::MlpModel<F32, float>& model, const Data& data, F32::mask_type m) {
  Step s;
  cuda::DeviceBuffer<float> grads(data.params.size());
  s.loss = model.forward(m, data.params.span(), data.xv(), data.labels);
  model.backward(data.params.span(), grads.span());
  model.backend().synchronize();
  s.logits = download(model.logits().data, static_cast<std::size_t>(config32.classes * data.batch));
  s.grads = grads.to_host();
  return s;
}

}  // namespace

TEST_CASE("cuda::MlpModel matches the CPU model, every structure, S = 3, L = 2 (n = 6), fp32") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<F32>(config32, 41, cuda::Precision::fp32);
}

TEST_CASE("cuda::MlpModel matches the CPU model, every structure, S = 4, L = 2, merge_only, fp32") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<MlpFamily<4, 2, GateLayout::merge_only>>(
      {.in_dim = 10, .d = 8, .h = 16, .classes = 4}, 43, cuda::Precision::fp32);
}

TEST_CASE("cuda::MlpModel with TF32 GEMMs stays within the TF32 tolerance, S = 3, L = 2") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<F32>(config32, 47, cuda::Precision::tf32);
}

TEST_CASE("cuda::MlpModel in bf16 mixed precision stays within the bf16 tolerance, S = 3, L = 2") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  check_every_structure<F32>(config32, 49, cuda::Precision::bf16);
  check_every_structure<MlpFamily<2, 2, GateLayout::merge_and_branch, FinalNorm::none>>(
      {.in_dim = 10, .d = 8, .h = 16, .classes = 4}, 50, cuda::Precision::bf16);
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

TEST_CASE(
    "cuda::MlpModel: a rerun and a second model give the same bits (deterministic mode), per precision") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  for (const auto precision : {cuda::Precision::fp32, cuda::Precision::tf32, cuda::Precision::bf16}) {
    CAPTURE(cuda::to_string(precision));
    cuda::MlpModel<F32, float> a(config32), b(config32);
    REQUIRE(a.backend().deterministic());
    a.backend().set_precision(precision);
    b.backend().set_precision(precision);
    const Data data(a.layout(), 33, 51);
    const auto m = F32::mask_type::parse("0x2d");
    const Step first = sync_step(a, data, m);
    REQUIRE(test::max_abs<float>(first.grads) > 1e-3);
    CHECK(same_bits(sync_step(a, data, m), first));
    CHECK(same_bits(sync_step(b, data, m), first));
  }
}

TEST_CASE(
    "forward_async, the compile-time forward and a CUDA graph of forward_async + backward give forward's "
    "bits") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  for (const auto precision : {cuda::Precision::fp32, cuda::Precision::bf16}) {
    CAPTURE(cuda::to_string(precision));
    constexpr std::uint64_t bits = 0x2d;
    const auto m = F32::mask_type(bits);
    cuda::MlpModel<F32, float> model(config32);
    model.backend().set_precision(precision);
    const Data data(model.layout(), 17, 61);
    const Step expected = sync_step(model, data, m);

    // Without reserve() the asynchronous forward refuses (it never allocates).
    cuda::MlpModel<F32, float> fresh(config32);
    cuda::DeviceBuffer<float> loss(1);
    CHECK_THROWS_AS(
        fresh.forward_async(m, data.params.span(), data.xv(), data.labels_device.data(), loss.data()),
        InputError);

    auto async_step = [&](auto&& enqueue) {
      Step s;
      cuda::DeviceBuffer<float> grads(data.params.size());
      enqueue(grads);
      model.backend().synchronize();
      s.loss = loss.to_host()[0];
      s.logits = download(model.logits().data, static_cast<std::size_t>(config32.classes * data.batch));
      s.grads = grads.to_host();
      return s;
    };
    model.reserve(data.batch);
    CHECK(same_bits(async_step([&](cuda::DeviceBuffer<float>& grads) {
                      model.forward_async(m, data.params.span(), data.xv(), data.labels_device.data(),
                                          loss.data());
                      model.backward(data.params.span(), grads.span());
                    }),
                    expected));
    CHECK(same_bits(async_step([&](cuda::DeviceBuffer<float>& grads) {
                      model.forward_async<Structure<F32, bits>>(data.params.span(), data.xv(),
                                                                data.labels_device.data(), loss.data());
                      model.backward(data.params.span(), grads.span());
                    }),
                    expected));
    CHECK(model.forward<Structure<F32, bits>>(data.params.span(), data.xv(), data.labels) == expected.loss);
    CHECK(model.forward_whole_model(m, data.params.span(), data.xv(), data.labels) == expected.loss);

    // Captured into a graph (which fails on any synchronisation, host copy or allocation
    // inside), replayed twice.
    CHECK(same_bits(async_step([&](cuda::DeviceBuffer<float>& grads) {
                      const cudaStream_t stream = model.backend().stream();
                      cudaGraph_t graph = nullptr;
                      ADDITIVE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                      model.forward_async(m, data.params.span(), data.xv(), data.labels_device.data(),
                                          loss.data());
                      model.backward(data.params.span(), grads.span());
                      ADDITIVE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
                      cudaGraphExec_t exec = nullptr;
                      ADDITIVE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
                      grads.zero(stream);
                      ADDITIVE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
                      ADDITIVE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
                      ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream));
                      ADDITIVE_CUDA_CHECK(cudaGraphExecDestroy(exec));
                      ADDITIVE_CUDA_CHECK(cudaGraphDestroy(graph));
                    }),
                    expected));
  }
}

TEST_CASE("several models run concurrently on their own streams and give their sequential bits") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  constexpr int models = 4;
  const Data data(cuda::MlpModel<F32, float>(config32).layout(), 64, 71);
  const std::uint64_t masks[models] = {0x00, 0x2d, 0x3f, 0x12};
  std::vector<Step> sequential;
  {
    cuda::MlpModel<F32, float> one(config32);
    for (const auto bits : masks) sequential.push_back(sync_step(one, data, F32::mask_type(bits)));
  }
  // Two on owned streams, two on caller streams; every model enqueued before any waits.
  cuda::Stream s2, s3;
  std::vector<cuda::MlpModel<F32, float>> all;
  all.reserve(models);
  all.emplace_back(config32);
  all.emplace_back(config32);
  all.emplace_back(config32, s2.get());
  all.emplace_back(config32, s3.get());
  CHECK(all[2].backend().stream() == s2.get());
  std::vector<cuda::DeviceBuffer<float>> grads, losses;
  for (int i = 0; i < models; ++i) {
    grads.emplace_back(data.params.size());
    losses.emplace_back(1);
    all[std::size_t(i)].reserve(data.batch);
  }
  for (int i = 0; i < models; ++i) {
    auto& model = all[std::size_t(i)];
    model.forward_async(F32::mask_type(masks[i]), data.params.span(), data.xv(), data.labels_device.data(),
                        losses[std::size_t(i)].data());
    model.backward(data.params.span(), grads[std::size_t(i)].span());
  }
  for (int i = 0; i < models; ++i) {
    CAPTURE(i);
    all[std::size_t(i)].backend().synchronize();
    Step s;
    s.loss = losses[std::size_t(i)].to_host()[0];
    s.logits =
        download(all[std::size_t(i)].logits().data, static_cast<std::size_t>(config32.classes * data.batch));
    s.grads = grads[std::size_t(i)].to_host();
    CHECK(same_bits(s, sequential[std::size_t(i)]));
  }
}

TEST_CASE("cuda backward reports the same ready ranges as the CPU model, after enqueueing them") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  cuda::MlpModel<F32, float> model(config32);
  cpu::MlpModel<F32, float> cpu_model(config32);
  const Data data(model.layout(), 8, 81);
  const auto host_params = data.params.to_host();
  const auto host_x = data.x.to_host();
  cuda::DeviceBuffer<float> grads(data.params.size());
  std::vector<float> cpu_grads(host_params.size());
  const auto m = F32::mask_type(0x2d);
  using Ranges = std::vector<std::pair<std::size_t, std::size_t>>;
  Ranges gpu_ranges, cpu_ranges;
  model.forward(m, data.params.span(), data.xv(), data.labels);
  model.backward(data.params.span(), grads.span(), [&](std::size_t b, std::size_t e) {
    gpu_ranges.emplace_back(b, e);
    // Ordered after the range's kernels on the model's stream: its values are final.
    model.backend().synchronize();
  });
  cpu_model.forward(m, host_params, MatView<const float>(host_x.data(), config32.in_dim, data.batch),
                    data.labels);
  cpu_model.backward(host_params, cpu_grads,
                     [&](std::size_t b, std::size_t e) { cpu_ranges.emplace_back(b, e); });
  CHECK(gpu_ranges == cpu_ranges);
  CHECK(gpu_ranges.size() == std::size_t(F32::blocks + 2));
}

TEST_CASE("fused bias epilogues agree with the separate bias kernels") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  cuda::MlpModel<F32, float> fused(config32), separate(config32);
  separate.backend().set_fused_bias(false);
  const Data data(fused.layout(), 16, 91);
  const auto a = sync_step(fused, data, F32::mask_type(0x3f));
  const auto b = sync_step(separate, data, F32::mask_type(0x3f));
  CHECK(test::relative_error(a.logits, b.logits) <= 1e-6);
  CHECK(test::relative_error(a.grads, b.grads) <= 1e-6);
}

TEST_CASE("a model whose workspace does not fit names the bytes and stays usable") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  cuda::MlpModel<F32, float> model(config32);
  const Index huge = Index{1} << 40;
  try {
    model.reserve(huge);
    FAIL("a workspace for 2^40 samples was allocated");
  } catch (const cuda::DeviceOutOfMemory& e) {
    CHECK(e.bytes() >= std::size_t(huge) * sizeof(float));
    CHECK(std::string(e.what()).find(std::to_string(e.bytes()) + " bytes") != std::string::npos);
  }
  CHECK(model.capacity() < huge);
  const Data data(model.layout(), 8, 95);
  CHECK(std::isfinite(sync_step(model, data, F32::mask_type(0x3f)).loss));
}
