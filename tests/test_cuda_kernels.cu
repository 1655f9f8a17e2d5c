// The CUDA wrappers and kernels against the CPU backend (cpu/backend.hpp) and the CPU
// AdamW: every primitive on random inputs, in double (to rounding: the formulas are the
// same) and float (documented tolerance, docs/cuda.md). GPU cases skip without a device;
// the error-family cases run everywhere.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "additive/cpu/backend.hpp"
#include "additive/cuda/adamw.cuh"
#include "additive/cuda/blas.cuh"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"
#include "additive/cuda/kernels.cuh"
#include "additive/cuda/stream.cuh"
#include "additive/optim/adamw.hpp"

#include "cuda_support.cuh"

namespace {

namespace cu = additive::cuda;
using additive::Index;
using additive::MatView;
using additive::test::relative_error;

template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, double lo = -2.0, double hi = 2.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(u(rng));
  return v;
}

template <class T>
MatView<T> host_view(std::vector<T>& v, Index rows, Index cols) {
  return MatView<T>(v.data(), rows, cols);
}
template <class T>
MatView<const T> host_cview(const std::vector<T>& v, Index rows, Index cols) {
  return MatView<const T>(v.data(), rows, cols);
}

/// Tolerance of a GPU kernel against the CPU backend, relative to the largest reference
/// element: the same formula, different summation orders and libm.
template <class T>
constexpr double kernel_tolerance = std::is_same_v<T, double> ? 1e-12 : 2e-5;

}  // namespace

// ------------------------------------------------------------------ error family (no device)

TEST_CASE("CudaError carries the status name, the expression, the file and the line") {
  try {
    ADDITIVE_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL("no exception");
  } catch (const cu::CudaError& e) {
    const std::string what = e.what();
    CHECK(e.status() == cudaErrorInvalidValue);
    CHECK(what.find("cudaErrorInvalidValue") != std::string::npos);
    CHECK(what.find("ADDITIVE_CUDA_CHECK") == std::string::npos);  // the expression, not the macro
    CHECK(what.find("cudaErrorInvalidValue") < what.find(" in "));
    CHECK(what.find("test_cuda_kernels.cu:") != std::string::npos);
  }
  static_assert(std::is_base_of_v<additive::RuntimeError, cu::CudaError>);
  static_assert(std::is_base_of_v<additive::RuntimeError, cu::CublasError>);
  static_assert(std::is_base_of_v<cu::CudaError, cu::DeviceOutOfMemory>);
  static_assert(!std::is_copy_constructible_v<cu::DeviceBuffer<float>>);
  static_assert(std::is_nothrow_move_constructible_v<cu::DeviceBuffer<float>>);
}

TEST_CASE("CublasError names the cuBLAS status") {
  try {
    ADDITIVE_CUBLAS_CHECK(CUBLAS_STATUS_INVALID_VALUE);
    FAIL("no exception");
  } catch (const cu::CublasError& e) {
    CHECK(e.status() == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(std::string(e.what()).find("CUBLAS_STATUS_INVALID_VALUE") != std::string::npos);
  }
}

TEST_CASE("DeviceOutOfMemory names the size asked for") {
  const cu::DeviceOutOfMemory e(std::size_t{123456789}, 1000, 2000);
  CHECK(std::string(e.what()).find("123456789 bytes") != std::string::npos);
  CHECK(e.bytes() == 123456789);
}

// ------------------------------------------------------------------ buffers

TEST_CASE("DeviceBuffer: round trip, deep clone, move") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const auto host = random_vector<float>(1000, 1);
  auto a = cu::to_device(host);
  auto b = a.clone();
  CHECK(b.data() != a.data());
  a.zero();
  ADDITIVE_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(b.to_host() == host);
  CHECK(a.to_host() == std::vector<float>(1000, 0.0f));
  auto c = std::move(b);
  CHECK(b.empty());  // NOLINT(bugprone-use-after-move): a moved-from buffer is empty
  CHECK(c.to_host() == host);
  CHECK_THROWS_AS(c.upload(std::vector<float>(999)), additive::RuntimeError);
}

TEST_CASE("Running out of device memory is a clear error naming the bytes") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const std::size_t n = std::size_t{1} << 50;  // 4 PiB of floats
  try {
    cu::DeviceBuffer<float> huge(n);
    FAIL("a 4 PiB allocation succeeded");
  } catch (const cu::DeviceOutOfMemory& e) {
    CHECK(e.bytes() == n * sizeof(float));
    CHECK(std::string(e.what()).find(std::to_string(n * sizeof(float)) + " bytes") != std::string::npos);
  }
  cu::DeviceBuffer<float> fine(16);  // the failure left no error behind
  CHECK(fine.size() == 16);
}

// ------------------------------------------------------------------ kernels against the CPU backend

TEST_CASE_TEMPLATE("elementwise kernels match the CPU backend", T, double, float) {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Index rows = 37, cols = 53;
  const auto n = static_cast<std::size_t>(rows * cols);
  additive::cpu::CpuBackend<T> cpu;
  const auto u0 = random_vector<T>(n, 2, -4.0, 4.0);
  const auto bias = random_vector<T>(static_cast<std::size_t>(rows), 3);
  const auto z = random_vector<T>(n, 4);
  auto du_bias = cu::to_device(bias);

  SUBCASE("bias_gelu") {
    auto u = u0;
    std::vector<T> h(n);
    cpu.bias_gelu(host_view(u, rows, cols), bias.data(), host_view(h, rows, cols));
    auto du = cu::to_device(u0);
    cu::DeviceBuffer<T> dh(n);
    cu::bias_gelu(du.view(rows, cols), du_bias.data(), dh.view(rows, cols), nullptr);
    CHECK(relative_error(du.to_host(), u) <= kernel_tolerance<T>);
    CHECK(relative_error(dh.to_host(), h) <= kernel_tolerance<T>);
  }
  SUBCASE("gelu_backward") {
    std::vector<T> out(n);
    cpu.gelu_backward(host_cview(u0, rows, cols), host_cview(z, rows, cols), host_view(out, rows, cols));
    auto du = cu::to_device(u0);
    auto dz = cu::to_device(z);
    cu::DeviceBuffer<T> dout(n);
    cu::gelu_backward(du.view(rows, cols), dz.view(rows, cols), dout.view(rows, cols), nullptr);
    CHECK(relative_error(dout.to_host(), out) <= kernel_tolerance<T>);
  }
  SUBCASE("residual_add, with and without z") {
    std::vector<T> y(n), y0(n);
    cpu.residual_add(host_cview(u0, rows, cols), host_cview(z, rows, cols), bias.data(),
                     host_view(y, rows, cols));
    auto dx = cu::to_device(u0);
    auto dz = cu::to_device(z);
    cu::DeviceBuffer<T> dy(n);
    cu::residual_add(dx.view(rows, cols), dz.view(rows, cols), du_bias.data(), dy.view(rows, cols), nullptr);
    CHECK(relative_error(dy.to_host(), y) <= kernel_tolerance<T>);
    for (std::size_t e = 0; e < n; ++e) y0[e] = u0[e] + bias[e % static_cast<std::size_t>(rows)];
    cu::residual_add(dx.view(rows, cols), MatView<const T>{}, du_bias.data(), dy.view(rows, cols), nullptr);
    CHECK(relative_error(dy.to_host(), y0) <= kernel_tolerance<T>);
  }
  SUBCASE("axpby (segment scaling), add_bias, fill, add_row_sums") {
    std::vector<T> y = z;
    cpu.axpby(host_cview(u0, rows, cols), T(1.5), host_view(y, rows, cols), true);
    cpu.add_bias(host_view(y, rows, cols), bias.data());
    std::vector<T> sums = bias;
    cpu.add_row_sums(host_cview(y, rows, cols), sums.data());
    auto dx = cu::to_device(u0);
    auto dy = cu::to_device(z);
    auto dsums = cu::to_device(bias);
    cu::axpby(dx.view(rows, cols), T(1.5), dy.view(rows, cols), true, nullptr);
    cu::add_bias(dy.view(rows, cols), du_bias.data(), nullptr);
    cu::add_row_sums(dy.view(rows, cols), dsums.data(), nullptr);
    CHECK(relative_error(dy.to_host(), y) <= kernel_tolerance<T>);
    CHECK(relative_error(dsums.to_host(), sums) <= kernel_tolerance<T>);
    cu::fill(dy.view(rows, cols), T(0.25), nullptr);
    CHECK(dy.to_host() == std::vector<T>(n, T(0.25)));
  }
}

TEST_CASE_TEMPLATE("LayerNorm forward and backward match the CPU backend", T, double, float) {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  for (const Index d : {Index(7), Index(64), Index(100)}) {
    CAPTURE(d);
    const Index batch = 45;
    const auto n = static_cast<std::size_t>(d * batch);
    const auto nd = static_cast<std::size_t>(d);
    additive::cpu::CpuBackend<T> cpu;
    const auto x = random_vector<T>(n, 5, -3.0, 5.0);
    const auto w = random_vector<T>(nd, 6, 0.5, 1.5);
    const auto b = random_vector<T>(nd, 7);
    const auto gy = random_vector<T>(n, 8);
    const auto dx0 = random_vector<T>(n, 9);  // backward accumulates into dx, dw, db
    const auto dw0 = random_vector<T>(nd, 10);
    const auto db0 = random_vector<T>(nd, 11);
    const T eps = T(1e-5);

    std::vector<T> y(n), mean(static_cast<std::size_t>(batch)), rstd(static_cast<std::size_t>(batch));
    cpu.layernorm(host_cview(x, d, batch), w.data(), b.data(), host_view(y, d, batch), mean.data(),
                  rstd.data(), eps);
    auto dx = dx0, dw = dw0, db = db0;
    cpu.layernorm_backward(host_cview(x, d, batch), w.data(), mean.data(), rstd.data(),
                           host_cview(gy, d, batch), host_view(dx, d, batch), dw.data(), db.data());

    auto gx = cu::to_device(x), gw = cu::to_device(w), gb = cu::to_device(b), ggy = cu::to_device(gy);
    auto gdx = cu::to_device(dx0), gdw = cu::to_device(dw0), gdb = cu::to_device(db0);
    cu::DeviceBuffer<T> gyy(n), gmean(static_cast<std::size_t>(batch)),
        grstd(static_cast<std::size_t>(batch));
    cu::layernorm(gx.view(d, batch), gw.data(), gb.data(), gyy.view(d, batch), gmean.data(), grstd.data(),
                  eps, nullptr);
    cu::layernorm_backward(gx.view(d, batch), gw.data(), gmean.data(), grstd.data(), ggy.view(d, batch),
                           gdx.view(d, batch), gdw.data(), gdb.data(), nullptr);
    CHECK(relative_error(gyy.to_host(), y) <= kernel_tolerance<T>);
    CHECK(relative_error(gmean.to_host(), mean) <= kernel_tolerance<T>);
    CHECK(relative_error(grstd.to_host(), rstd) <= kernel_tolerance<T>);
    CHECK(relative_error(gdx.to_host(), dx) <= kernel_tolerance<T>);
    CHECK(relative_error(gdw.to_host(), dw) <= kernel_tolerance<T>);
    CHECK(relative_error(gdb.to_host(), db) <= kernel_tolerance<T>);

    // Fixed-order reductions: a second run gives the same bits.
    auto first = gdw.to_host();
    gdw.upload(dw0);
    gdb.upload(db0);
    cu::layernorm_backward(gx.view(d, batch), gw.data(), gmean.data(), grstd.data(), ggy.view(d, batch),
                           gdx.view(d, batch), gdw.data(), gdb.data(), nullptr);
    CHECK(std::memcmp(gdw.to_host().data(), first.data(), first.size() * sizeof(T)) == 0);
  }
}

TEST_CASE_TEMPLATE("softmax cross-entropy matches the CPU backend", T, double, float) {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  for (const Index classes : {Index(2), Index(10), Index(47)}) {
    CAPTURE(classes);
    const Index batch = 70;
    const auto n = static_cast<std::size_t>(classes * batch);
    additive::cpu::CpuBackend<T> cpu;
    const auto logits = random_vector<T>(n, 12, -6.0, 6.0);
    std::vector<std::int32_t> labels(static_cast<std::size_t>(batch));
    for (std::size_t j = 0; j < labels.size(); ++j) labels[j] = static_cast<std::int32_t>((j * 7) % classes);
    std::vector<T> dlogits(n);
    const T loss =
        cpu.softmax_xent(host_cview(logits, classes, batch), labels, host_view(dlogits, classes, batch));

    auto glogits = cu::to_device(logits);
    auto glabels = cu::to_device(labels);
    cu::DeviceBuffer<T> gdlogits(n), losses(static_cast<std::size_t>(batch)), gloss(1);
    cu::softmax_xent(glogits.view(classes, batch), glabels.data(), gdlogits.view(classes, batch),
                     losses.data(), gloss.data(), nullptr);
    CHECK(relative_error(gdlogits.to_host(), dlogits) <= kernel_tolerance<T>);
    CHECK(std::abs(double(gloss.to_host()[0]) - double(loss)) <=
          kernel_tolerance<T> * std::abs(double(loss)));
  }
}

TEST_CASE(
    "softmax cross-entropy poisons a sample whose device label is out of range (no out-of-bounds read)") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Index classes = 4, batch = 3;
  const auto logits = random_vector<float>(static_cast<std::size_t>(classes * batch), 21);
  for (const std::int32_t bad : {-1, 4, 1 << 30}) {
    CAPTURE(bad);
    const std::vector<std::int32_t> labels{1, bad, 3};
    auto glogits = cu::to_device(logits);
    auto glabels = cu::to_device(labels);
    cu::DeviceBuffer<float> gdlogits(logits.size()), losses(static_cast<std::size_t>(batch)), gloss(1);
    cu::softmax_xent(glogits.view(classes, batch), glabels.data(), gdlogits.view(classes, batch),
                     losses.data(), gloss.data(), nullptr);
    const auto l = losses.to_host();
    CHECK(std::isfinite(l[0]));
    CHECK(std::isnan(l[1]));
    CHECK(std::isfinite(l[2]));
    CHECK(std::isnan(gloss.to_host()[0]));
    const auto g = gdlogits.to_host();
    for (Index i = 0; i < classes; ++i) {
      CHECK(std::isfinite(g[static_cast<std::size_t>(i)]));
      CHECK(std::isnan(g[static_cast<std::size_t>(classes + i)]));
    }
  }
}

TEST_CASE("to_bf16 of a strided view rounds each element to nearest into a padded view") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Index rows = 5, cols = 3, ld_in = 7, ld_out = 8;
  auto host = random_vector<float>(static_cast<std::size_t>(ld_in * cols), 22);
  host[0] = 1.0f + 0x1.0p-8f;  // halfway between two bf16 values: ties to even (1.0)
  host[1] = 1.0f + 0x3.0p-8f;  // halfway: ties to even (1 + 2^-6)
  auto gin = cu::to_device(host);
  cu::DeviceBuffer<__nv_bfloat16> gout(static_cast<std::size_t>(ld_out * cols));
  gout.zero();
  cu::to_bf16<float>(MatView<const float>(gin.data(), rows, cols, ld_in),
                     MatView<__nv_bfloat16>(gout.data(), rows, cols, ld_out), nullptr);
  const auto out = gout.to_host();
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < ld_out; ++i) {
      const float got = __bfloat162float(out[static_cast<std::size_t>(i + j * ld_out)]);
      if (i >= rows) {
        CHECK(got == 0.0f);  // padding untouched
        continue;
      }
      const float x = host[static_cast<std::size_t>(i + j * ld_in)];
      CHECK(std::abs(got - x) <= std::abs(x) * 0x1.0p-8f);  // half an ulp of an 8-bit mantissa
    }
  CHECK(__bfloat162float(out[0]) == 1.0f);
  CHECK(__bfloat162float(out[1]) == 1.0f + 0x1.0p-6f);
}

// ------------------------------------------------------------------ GEMMs

TEST_CASE("cuBLASLt GEMMs match the CPU backend: fp32, TF32, bf16 inputs, bias epilogue") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Index m = 48, n = 40, k = 72;
  additive::cpu::CpuBackend<float> cpu;
  const auto a_tn = random_vector<float>(static_cast<std::size_t>(k * m), 13);  // (K, M)
  const auto a_nn = random_vector<float>(static_cast<std::size_t>(m * k), 14);  // (M, K)
  const auto b_n = random_vector<float>(static_cast<std::size_t>(k * n), 15);   // (K, N)
  const auto b_t = random_vector<float>(static_cast<std::size_t>(n * k), 16);   // (N, K)
  const auto c0 = random_vector<float>(static_cast<std::size_t>(m * n), 17);    // (M, N)
  const auto bias = random_vector<float>(static_cast<std::size_t>(m), 18);
  auto ga_tn = cu::to_device(a_tn), ga_nn = cu::to_device(a_nn), gb_n = cu::to_device(b_n),
       gb_t = cu::to_device(b_t);
  auto gbias = cu::to_device(bias);

  cu::Blas blas;
  // fp32: the products are exact in both, the sums differ in order (K = 72 terms of ~1).
  // TF32: 10-bit mantissa products. bf16 inputs: 8-bit mantissa inputs, fp32 accumulate.
  struct Mode {
    const char* name = "";
    bool tf32 = false;
    bool bf16 = false;
    double tolerance = 0;
  };
  for (const Mode mode :
       {Mode{"fp32", false, false, 1e-5}, Mode{"tf32", true, false, 5e-3}, Mode{"bf16", false, true, 2e-2}}) {
    CAPTURE(mode.name);
    blas.set_tf32(mode.tf32);
    auto run = [&](auto&& gemm_gpu, auto&& gemm_cpu, const std::vector<float>& a, const std::vector<float>& b,
                   Index ar, Index ac, Index br, Index bc, float beta, const cu::EpilogueArgs& epi) {
      std::vector<float> c = c0;
      gemm_cpu(host_view(c, m, n), host_cview(a, ar, ac), host_cview(b, br, bc), 0.75f, beta);
      if (epi.kind == cu::Epilogue::bias) cpu.add_bias(host_view(c, m, n), bias.data());
      auto gc = cu::to_device(c0);
      auto ga = cu::to_device(a), gb = cu::to_device(b);
      if (mode.bf16) {
        cu::DeviceBuffer<__nv_bfloat16> ha(a.size()), hb(b.size());
        cu::to_bf16(ga.data(), ha.data(), static_cast<Index>(a.size()), nullptr);
        cu::to_bf16(gb.data(), hb.data(), static_cast<Index>(b.size()), nullptr);
        gemm_gpu(gc.view(m, n), std::as_const(ha).view(ar, ac), std::as_const(hb).view(br, bc), 0.75f, beta,
                 epi);
      } else {
        gemm_gpu(gc.view(m, n), std::as_const(ga).view(ar, ac), std::as_const(gb).view(br, bc), 0.75f, beta,
                 epi);
      }
      CHECK(relative_error(gc.to_host(), c) <= mode.tolerance);
    };
    auto tn = [&](auto c, auto a, auto b, float alpha, float beta, const cu::EpilogueArgs& e) {
      blas.gemm_tn(c, a, b, alpha, beta, e);
    };
    auto nn = [&](auto c, auto a, auto b, float alpha, float beta, const cu::EpilogueArgs& e) {
      blas.gemm_nn(c, a, b, alpha, beta, e);
    };
    auto nt = [&](auto c, auto a, auto b, float alpha, float beta, const cu::EpilogueArgs& e) {
      blas.gemm_nt(c, a, b, alpha, beta, e);
    };
    auto cpu_tn = [&](auto c, auto a, auto b, float alpha, float beta) { cpu.gemm_tn(c, a, b, alpha, beta); };
    auto cpu_nn = [&](auto c, auto a, auto b, float alpha, float beta) { cpu.gemm_nn(c, a, b, alpha, beta); };
    auto cpu_nt = [&](auto c, auto a, auto b, float alpha, float beta) { cpu.gemm_nt(c, a, b, alpha, beta); };
    const cu::EpilogueArgs none{};
    const cu::EpilogueArgs with_bias{cu::Epilogue::bias, gbias.data(), nullptr, 0};
    run(tn, cpu_tn, a_tn, b_n, k, m, k, n, 0.0f, none);
    run(tn, cpu_tn, a_tn, b_n, k, m, k, n, 1.0f, with_bias);
    run(nn, cpu_nn, a_nn, b_n, m, k, k, n, 1.0f, none);
    run(nt, cpu_nt, a_nn, b_t, m, k, n, k, 1.0f, none);
  }
  (void)ga_tn;
  (void)ga_nn;
  (void)gb_n;
  (void)gb_t;
}

// ------------------------------------------------------------------ AdamW

TEST_CASE("cuda::AdamW gives the CPU AdamW's bits, decay tensors and others") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  additive::ParamLayout layout;
  layout.add("w", {13, 11}, true);
  layout.add("b", {13}, false);
  const additive::AdamWConfig config{0.9, 0.99, 1e-8, 0.1};
  additive::AdamW<float> cpu(layout, config);
  cu::AdamW<float> gpu(layout, config);
  auto p = random_vector<float>(layout.total(), 19);
  auto gp = cu::to_device(p);
  for (int step = 0; step < 4; ++step) {
    const auto g = random_vector<float>(layout.total(), 20 + static_cast<std::uint64_t>(step));
    auto gg = cu::to_device(g);
    cpu.step(p, g, 0.01f);
    gpu.step(gp.span(), std::as_const(gg).span(), 0.01f, nullptr);
  }
  const auto got = gp.to_host();
  CHECK(std::memcmp(got.data(), p.data(), p.size() * sizeof(float)) == 0);
  CHECK(gpu.steps() == 4);
}

TEST_CASE("cuBLASLt GEMMs on unaligned strided sub-views (shard slices) match the CPU backend") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  // A (K, M) slice at row 1, column 3 of a (K + 3, M + 5) matrix: address 4-byte aligned,
  // leading dimension K + 3 (odd). The model's shard slices look like this.
  const Index k = 21, m = 10, n = 7;
  const Index big_rows = k + 3, big_cols = m + 5;
  additive::cpu::CpuBackend<float> cpu;
  const auto big = random_vector<float>(static_cast<std::size_t>(big_rows * big_cols), 30);
  const auto b = random_vector<float>(static_cast<std::size_t>(k * n), 31);
  const auto a = host_cview(big, big_rows, big_cols).block(1, 3, k, m);
  std::vector<float> c(static_cast<std::size_t>(m * n));
  cpu.gemm_tn(host_view(c, m, n), a, host_cview(b, k, n), 1.0f, 0.0f);

  const auto gbig = cu::to_device(big);
  const auto gb = cu::to_device(b);
  cu::DeviceBuffer<float> gc(c.size());
  const auto ga = gbig.view(big_rows, big_cols).block(1, 3, k, m);
  cu::Blas blas;
  blas.gemm_tn(gc.view(m, n), ga, gb.view(k, n), 1.0f, 0.0f);
  CHECK(relative_error(gc.to_host(), c) <= 1e-5);
}

TEST_CASE("cuBLASLt bf16 GEMMs on unaligned strided sub-views, into an unaligned fp32 slice") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  // What the bf16 model mode may hand cuBLASLt: a bf16 operand at an odd offset with an
  // odd leading dimension (2-byte aligned) and an fp32 output slice of a larger matrix.
  // Inputs are bf16 values, so the fp32 products are exact: only the order of the sums
  // differs from the CPU (K = 21 terms of ~1: 1e-5 relative).
  const Index k = 21, m = 10, n = 7;
  const Index big_rows = k + 3, big_cols = m + 5;
  additive::cpu::CpuBackend<float> cpu;
  auto big = random_vector<float>(static_cast<std::size_t>(big_rows * big_cols), 32);
  auto b = random_vector<float>(static_cast<std::size_t>(k * n), 33);
  for (auto* v : {&big, &b})
    for (auto& x : *v) x = __bfloat162float(__float2bfloat16_rn(x));
  const Index c_rows = m + 1;  // C is rows [1, m + 1) of a (m + 1, n) matrix
  std::vector<float> c(static_cast<std::size_t>(c_rows * n), 0.0f);
  cpu.gemm_tn(host_view(c, c_rows, n).block(1, 0, m, n),
              host_cview(big, big_rows, big_cols).block(1, 3, k, m), host_cview(b, k, n), 1.0f, 0.0f);

  std::vector<__nv_bfloat16> big16(big.size()), b16(b.size());
  for (std::size_t i = 0; i < big.size(); ++i) big16[i] = __float2bfloat16_rn(big[i]);
  for (std::size_t i = 0; i < b.size(); ++i) b16[i] = __float2bfloat16_rn(b[i]);
  const auto gbig = cu::to_device(big16);
  const auto gb = cu::to_device(b16);
  cu::DeviceBuffer<float> gc(c.size());
  gc.zero();
  cu::Blas blas;
  blas.gemm_tn(gc.view(c_rows, n).block(1, 0, m, n), gbig.view(big_rows, big_cols).block(1, 3, k, m),
               gb.view(k, n), 1.0f, 0.0f);
  CHECK(relative_error(gc.to_host(), c) <= 1e-5);
}
