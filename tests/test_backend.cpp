// The CPU backend's GEMMs (include/additive/cpu/backend.hpp): the three shapes against a
// plain triple loop in float64, a pre-packed op(A) (pack_tn) against the same GEMM packing A
// itself (bitwise: the same panels, the same kernel calls), and the thread count changing no
// bit. Shapes straddle the kernel's register blocks (48 x 4 rows/columns for float, 24 x 4
// for double on AVX-512), the 64-column task width, and depths over one K block (784).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "additive/cpu/backend.hpp"

using namespace additive;
using cpu::CpuBackend;

namespace {

template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = T(u(rng));
  return v;
}

struct Shape {
  Index m = 0, n = 0, k = 0;
};

const Shape shapes[] = {{1, 1, 1},      {7, 3, 5},      {48, 64, 128},   {50, 65, 129},
                        {130, 200, 33}, {10, 256, 784}, {97, 130, 1000}, {128, 1, 128}};

/// C = alpha * A^T B + beta * C0, A: (K, M), B: (K, N), by the definition.
std::vector<double> reference_tn(const std::vector<double>& a, const std::vector<double>& b,
                                 const std::vector<double>& c0, Shape s, double alpha, double beta) {
  std::vector<double> c(static_cast<std::size_t>(s.m * s.n));
  for (Index j = 0; j < s.n; ++j)
    for (Index i = 0; i < s.m; ++i) {
      double sum = 0;
      for (Index p = 0; p < s.k; ++p)
        sum += a[static_cast<std::size_t>(i * s.k + p)] * b[static_cast<std::size_t>(j * s.k + p)];
      const auto at = static_cast<std::size_t>(j * s.m + i);
      c[at] = alpha * sum + beta * c0[at];
    }
  return c;
}

}  // namespace

TEST_CASE("gemm_tn, gemm_nn and gemm_nt equal the definition (float64)") {
  for (const Shape s : shapes) {
    CAPTURE(s.m);
    CAPTURE(s.n);
    CAPTURE(s.k);
    const auto a = random_vector<double>(static_cast<std::size_t>(s.k * s.m), 1);  // (K, M) col-major
    const auto b = random_vector<double>(static_cast<std::size_t>(s.k * s.n), 2);  // (K, N) col-major
    const auto c0 = random_vector<double>(static_cast<std::size_t>(s.m * s.n), 3);
    // The same products in the other storage orders: A as (M, K), B as (N, K).
    std::vector<double> a_mk(a.size()), b_nk(b.size());
    for (Index i = 0; i < s.m; ++i)
      for (Index p = 0; p < s.k; ++p)
        a_mk[static_cast<std::size_t>(p * s.m + i)] = a[static_cast<std::size_t>(i * s.k + p)];
    for (Index j = 0; j < s.n; ++j)
      for (Index p = 0; p < s.k; ++p)
        b_nk[static_cast<std::size_t>(p * s.n + j)] = b[static_cast<std::size_t>(j * s.k + p)];
    for (const double beta : {0.0, 1.0}) {
      const auto want = reference_tn(a, b, c0, s, 0.75, beta);
      const double tol = 1e-13 * double(s.k);
      CpuBackend<double> be(2);
      auto c = c0;
      be.gemm_tn(MatView<double>(c.data(), s.m, s.n), MatView<const double>(a.data(), s.k, s.m),
                 MatView<const double>(b.data(), s.k, s.n), 0.75, beta);
      for (std::size_t i = 0; i < c.size(); ++i) REQUIRE(std::abs(c[i] - want[i]) <= tol);
      c = c0;
      be.gemm_nn(MatView<double>(c.data(), s.m, s.n), MatView<const double>(a_mk.data(), s.m, s.k),
                 MatView<const double>(b.data(), s.k, s.n), 0.75, beta);
      for (std::size_t i = 0; i < c.size(); ++i) REQUIRE(std::abs(c[i] - want[i]) <= tol);
      c = c0;
      be.gemm_nt(MatView<double>(c.data(), s.m, s.n), MatView<const double>(a_mk.data(), s.m, s.k),
                 MatView<const double>(b_nk.data(), s.n, s.k), 0.75, beta);
      for (std::size_t i = 0; i < c.size(); ++i) REQUIRE(std::abs(c[i] - want[i]) <= tol);
    }
  }
}

TEST_CASE_TEMPLATE("a pre-packed op(A) gives the bits of the GEMM that packs A itself", T, float, double) {
  for (const Shape s : shapes) {
    CAPTURE(s.m);
    CAPTURE(s.n);
    CAPTURE(s.k);
    const auto a = random_vector<T>(static_cast<std::size_t>(s.k * s.m), 4);
    const auto b = random_vector<T>(static_cast<std::size_t>(s.k * s.n), 5);
    const auto c0 = random_vector<T>(static_cast<std::size_t>(s.m * s.n), 6);
    const MatView<const T> av(a.data(), s.k, s.m);
    const MatView<const T> bv(b.data(), s.k, s.n);
    for (const T beta : {T(0), T(1)}) {
      CpuBackend<T> one(1);
      auto want = c0;
      one.gemm_tn(MatView<T>(want.data(), s.m, s.n), av, bv, T(1.5), beta);
      for (const int threads : {1, 2, 3}) {
        CpuBackend<T> be(threads);
        auto plain = c0;
        be.gemm_tn(MatView<T>(plain.data(), s.m, s.n), av, bv, T(1.5), beta);
        CHECK(plain == want);  // the thread count changes no bit
        auto a_copy = a;
        typename CpuBackend<T>::PackedTn packed;
        be.pack_tn(packed, MatView<const T>(a_copy.data(), s.k, s.m));
        CHECK(packed.rows() == s.m);
        CHECK(packed.depth() == s.k);
        // The pack is a copy: changing A afterwards changes nothing, and it is reusable.
        for (auto& x : a_copy) x = T(0);
        for (int use = 0; use < 2; ++use) {
          auto got = c0;
          be.gemm_tn(MatView<T>(got.data(), s.m, s.n), packed, bv, T(1.5), beta);
          CHECK(got == want);
        }
      }
    }
  }
}

TEST_CASE("gemm with a packed op(A) counts its FLOPs and rejects a shape mismatch") {
  CpuBackend<float> be(1);
  std::vector<float> a(6 * 4), b(6 * 5), c(4 * 5);
  typename CpuBackend<float>::PackedTn packed;
  be.pack_tn(packed, MatView<const float>(a.data(), 6, 4));
  be.reset_counters();
  be.gemm_tn(MatView<float>(c.data(), 4, 5), packed, MatView<const float>(b.data(), 6, 5), 1.0F, 0.0F);
  CHECK(be.counters().gemms == 1);
  CHECK(be.counters().gemm_flops == 2.0 * 4 * 5 * 6);
  CHECK_THROWS_AS(
      be.gemm_tn(MatView<float>(c.data(), 5, 4), packed, MatView<const float>(b.data(), 6, 4), 1.0F, 0.0F),
      RuntimeError);
}
