// The Eigen CPU backend: the handful of primitives the sharded families are written in
// (three GEMM shapes, fused bias+GELU, per-stream LayerNorm, reductions over the batch,
// softmax cross-entropy), each parallel over fixed tasks (see parallel.hpp) and so
// deterministic for any thread count. Matrices are column-major (features, batch).
#pragma once

#if defined(_OPENMP) && !defined(EIGEN_DONT_PARALLELIZE)
#error \
    "additive schedules CPU threads itself: define EIGEN_DONT_PARALLELIZE (the additive::additive target does)"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "additive/core/error.hpp"
#include "additive/core/view.hpp"
#include "additive/cpu/parallel.hpp"

// Eigen 3.4's GEMM building blocks (panel packing and the register-blocked kernel) are
// internal API: use them on the version they were written against, else plain products.
// Define ADDITIVE_EIGEN_GEBP to 0 to force the plain products.
#if !defined(ADDITIVE_EIGEN_GEBP)
#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
#define ADDITIVE_EIGEN_GEBP 1
#else
#define ADDITIVE_EIGEN_GEBP 0
#endif
#endif

namespace additive::cpu {

template <class T>
using EigenMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
template <class T>
using EigenMap = Eigen::Map<EigenMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using EigenConstMap = Eigen::Map<const EigenMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
[[nodiscard]] inline EigenMap<T> map(MatView<T> v) {
  return EigenMap<T>(v.data, v.rows, v.cols, Eigen::OuterStride<>(std::max<Index>(v.ld, 1)));
}
template <class T>
[[nodiscard]] inline EigenConstMap<T> map(MatView<const T> v) {
  return EigenConstMap<T>(v.data, v.rows, v.cols, Eigen::OuterStride<>(std::max<Index>(v.ld, 1)));
}

/// What the backend has executed; tests use it to prove that skipped work is skipped.
struct Counters {
  std::uint64_t gemms = 0;  ///< logical GEMM calls (one per product, however many tasks)
  double gemm_flops = 0;    ///< 2*M*N*K summed over those calls
  void reset() noexcept { *this = Counters{}; }
};

template <class T>
class CpuBackend {
  static_assert(std::is_floating_point_v<T>, "CpuBackend<T>: T is float or double");

 public:
  using scalar_type = T;

  explicit CpuBackend(int threads = 1) : threads_(std::max(1, threads)) {}

  [[nodiscard]] int threads() const noexcept { return threads_; }
  void set_threads(int threads) noexcept { threads_ = std::max(1, threads); }
  [[nodiscard]] const Counters& counters() const noexcept { return counters_; }
  void reset_counters() noexcept { counters_.reset(); }

  // ---- GEMM, three shapes. beta is 0 (write) or 1 (accumulate). ----
  // Tasks over column chunks of C (column_task wide); every element of C is computed by
  // one task with its whole K reduction, so the result does not depend on the threads.

  /// C = alpha * A^T * B + beta * C.  A: (K, M), B: (K, N), C: (M, N). Tasks over N.
  void gemm_tn(MatView<T> c, MatView<const T> a, MatView<const T> b, T alpha, T beta) {
    check_gemm(c, a.cols, b.cols, a.rows, b.rows);
    count(c.rows, c.cols, a.rows);
    gemm<Eigen::RowMajor, Eigen::ColMajor>(c, a, b, a.rows, alpha, beta);
  }

  /// op(A) = A^T of gemm_tn, packed once for GEMMs that reuse it (weights applied to
  /// several batches): pack_tn(a) then gemm_tn(c, packed, b, ...) equals gemm_tn(c, a, b, ...)
  /// without packing A again. The pack is a copy: later changes to A do not reach it.
  class PackedTn {
   public:
    [[nodiscard]] Index rows() const noexcept { return m_; }   ///< M
    [[nodiscard]] Index depth() const noexcept { return k_; }  ///< K
    [[nodiscard]] bool empty() const noexcept { return m_ == 0; }

   private:
    friend class CpuBackend;
    // Aligned, and resize leaves it uninitialised: packing writes every element the kernel reads.
    Eigen::Matrix<T, Eigen::Dynamic, 1> data_;
    Index m_ = 0, k_ = 0, kc_ = 0, block_ = 0;  // block_: elements per K block of the panels
  };

  /// Packs op(A) = A^T (A: (K, M)) into `out`, reusing its storage.
  void pack_tn(PackedTn& out, MatView<const T> a) {
    out.m_ = a.cols;
    out.k_ = a.rows;
#if ADDITIVE_EIGEN_GEBP
    const auto [kc, kblocks, a_block] = lhs_blocking(out.m_, out.k_, column_task);
    out.kc_ = kc;
    out.block_ = a_block;
    out.data_.resize(kblocks * a_block);
    pack_lhs<Eigen::RowMajor>(out.data_.data(), a, out.m_, out.k_, kc, a_block);
#else
    out.data_.resize(out.m_ * out.k_);  // A^T, column-major (M, K)
    map(MatView<T>(out.data_.data(), out.m_, out.k_)) = map(a).transpose();
#endif
  }

  /// C = alpha * op(A) * B + beta * C with op(A) packed by pack_tn. B: (K, N), C: (M, N).
  void gemm_tn(MatView<T> c, const PackedTn& a, MatView<const T> b, T alpha, T beta) {
    check_gemm(c, a.m_, b.cols, a.k_, b.rows);
    count(c.rows, c.cols, a.k_);
    if (c.rows == 0 || c.cols == 0) return;
    if (a.k_ == 0) {
      if (beta == T(0)) fill(c, T(0));
      return;
    }
#if ADDITIVE_EIGEN_GEBP
    run_packed<Eigen::ColMajor>(c, a.data_.data(), a.kc_, a.block_, a.k_, b, alpha, beta);
#else
    gemm<Eigen::ColMajor, Eigen::ColMajor>(c, MatView<const T>(a.data_.data(), a.m_, a.k_), b, a.k_, alpha,
                                           beta);
#endif
  }

  /// C = alpha * A * B + beta * C.  A: (M, K), B: (K, N), C: (M, N). Tasks over N.
  void gemm_nn(MatView<T> c, MatView<const T> a, MatView<const T> b, T alpha, T beta) {
    check_gemm(c, a.rows, b.cols, a.cols, b.rows);
    count(c.rows, c.cols, a.cols);
    gemm<Eigen::ColMajor, Eigen::ColMajor>(c, a, b, a.cols, alpha, beta);
  }

  /// C = alpha * A * B^T + beta * C.  A: (M, K), B: (N, K), C: (M, N). The reduction
  /// over K (the batch, for weight gradients) stays inside one task. Tasks over N.
  void gemm_nt(MatView<T> c, MatView<const T> a, MatView<const T> b, T alpha, T beta) {
    check_gemm(c, a.rows, b.rows, a.cols, b.cols);
    count(c.rows, c.cols, a.cols);
    gemm<Eigen::ColMajor, Eigen::RowMajor>(c, a, b, a.cols, alpha, beta);
  }

  // ---- elementwise and per-sample kernels ----

  /// u += bias (per row), then h = gelu(u). u keeps the pre-activation for backward.
  /// u, h: (rows, batch); bias: (rows).
  void bias_gelu(MatView<T> u, const T* bias, MatView<T> h) {
    const auto bvec = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias, u.rows);
    parallel_chunks(threads_, u.cols, column_task, [&](Index j0, Index nj) {
      // Column by column: the second pass reads a column that is still in L1.
      for (Index j = j0; j < j0 + nj; ++j) {
        auto uc = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(&u(0, j), u.rows);
        auto hc = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(&h(0, j), u.rows);
        uc += bvec;
        hc = uc * (T(0.5) * (T(1) + (uc * T(std::numbers::sqrt2_v<T> / 2)).erf()));
      }
    });
  }

  /// du = dh * gelu'(u), du may alias dh.  (rows, batch) each.
  void gelu_backward(MatView<const T> u, MatView<const T> dh, MatView<T> du) {
    constexpr T inv_sqrt2 = std::numbers::sqrt2_v<T> / 2;
    constexpr T inv_sqrt2pi = std::numbers::inv_sqrtpi_v<T> * inv_sqrt2;
    parallel_chunks(threads_, u.cols, column_task, [&](Index j0, Index nj) {
      const auto uu = map(u.cols_range(j0, nj)).array();
      const auto gg = map(dh.cols_range(j0, nj)).array();
      auto out = map(du.cols_range(j0, nj)).array();
      out =
          gg * (T(0.5) * (T(1) + (uu * inv_sqrt2).erf()) + uu * inv_sqrt2pi * (T(-0.5) * uu.square()).exp());
    });
  }

  /// Per-sample LayerNorm over the rows: y = (x - mean) * rstd * w + b.
  /// x, y: (d, batch); mean, rstd: (batch), written for the backward pass.
  void layernorm(MatView<const T> x, const T* w, const T* b, MatView<T> y, T* mean, T* rstd, T eps) {
    const Index d = x.rows;
    const auto ww = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(w, d);
    const auto bb = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(b, d);
    parallel_chunks(threads_, x.cols, column_task, [&](Index j0, Index nj) {
      for (Index j = j0; j < j0 + nj; ++j) {
        const auto xc = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&x(0, j), d);
        const T mu = xc.mean();
        const T var = (xc - mu).square().mean();
        const T rs = T(1) / std::sqrt(var + eps);
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(&y(0, j), d) = (xc - mu) * rs * ww + bb;
        mean[j] = mu;
        rstd[j] = rs;
      }
    });
  }

  /// LayerNorm backward. Contract: dx += ..., dw += ..., db += ... (all accumulate).
  /// x, dy, dx: (d, batch). The batch reductions for dw, db run in fixed task order.
  void layernorm_backward(MatView<const T> x, const T* w, const T* mean, const T* rstd, MatView<const T> dy,
                          MatView<T> dx, T* dw, T* db) {
    const Index d = x.rows;
    const Index tasks = task_count(x.cols);
    partial_.assign(static_cast<std::size_t>(2 * d * tasks), T(0));  // (d, 2 * tasks)
    const auto ww = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(w, d);
    parallel_tasks(threads_, tasks, [&](Index t) {
      const Index j0 = t * column_task;
      const Index j1 = std::min(x.cols, j0 + column_task);
      auto pdw = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(partial_.data() + 2 * t * d, d);
      auto pdb = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(partial_.data() + (2 * t + 1) * d, d);
      Eigen::Array<T, Eigen::Dynamic, 1> xhat(d), g(d);
      for (Index j = j0; j < j1; ++j) {
        const auto xc = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&x(0, j), d);
        const auto gy = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&dy(0, j), d);
        xhat = (xc - mean[j]) * rstd[j];
        pdw += gy * xhat;
        pdb += gy;
        g = gy * ww;
        const T g_mean = g.mean();
        const T gx_mean = (g * xhat).mean();
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(&dx(0, j), d) +=
            rstd[j] * (g - g_mean - xhat * gx_mean);
      }
    });
    for (Index t = 0; t < tasks; ++t)
      for (Index i = 0; i < d; ++i) {
        dw[i] += partial_[static_cast<std::size_t>(2 * t * d + i)];
        db[i] += partial_[static_cast<std::size_t>((2 * t + 1) * d + i)];
      }
  }

  /// out += sum over columns of m.  m: (rows, batch); out: (rows). Fixed task order.
  void add_row_sums(MatView<const T> m, T* out) {
    const Index tasks = task_count(m.cols);
    partial_.assign(static_cast<std::size_t>(m.rows * tasks), T(0));
    parallel_tasks(threads_, tasks, [&](Index t) {
      const Index j0 = t * column_task;
      const Index nj = std::min(column_task, m.cols - j0);
      // Column by column, so every element is summed in the same order whatever the
      // alignment of the buffers (Eigen's vectorised rowwise().sum() is not).
      auto acc = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(partial_.data() + t * m.rows, m.rows);
      for (Index j = j0; j < j0 + nj; ++j)
        acc += Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&m(0, j), m.rows);
    });
    for (Index t = 0; t < tasks; ++t)
      for (Index i = 0; i < m.rows; ++i) out[i] += partial_[static_cast<std::size_t>(t * m.rows + i)];
  }

  /// y = x + z + bias (per row), or y = x + bias when z is empty.  (d, batch) each.
  void residual_add(MatView<const T> x, MatView<const T> z, const T* bias, MatView<T> y) {
    const auto bvec = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias, x.rows);
    parallel_chunks(threads_, x.cols, column_task, [&](Index j0, Index nj) {
      map(y.cols_range(j0, nj)).array() =
          (map(x.cols_range(j0, nj)).array() + map(z.cols_range(j0, nj)).array()).colwise() + bvec;
    });
  }

  /// y = x + bias (per row).  (rows, batch).
  void add_bias(MatView<T> y, const T* bias) {
    const auto bvec = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias, y.rows);
    parallel_chunks(threads_, y.cols, column_task,
                    [&](Index j0, Index nj) { map(y.cols_range(j0, nj)).array().colwise() += bvec; });
  }

  /// y = alpha * x (+ y when accumulate).  Same shape.
  void axpby(MatView<const T> x, T alpha, MatView<T> y, bool accumulate) {
    parallel_chunks(threads_, x.cols, column_task, [&](Index j0, Index nj) {
      auto yy = map(y.cols_range(j0, nj));
      if (accumulate)
        yy += alpha * map(x.cols_range(j0, nj));
      else
        yy = alpha * map(x.cols_range(j0, nj));
    });
  }

  void fill(MatView<T> y, T value) {
    parallel_chunks(threads_, y.cols, column_task,
                    [&](Index j0, Index nj) { map(y.cols_range(j0, nj)).setConstant(value); });
  }

  /// Mean softmax cross-entropy over the batch; writes dlogits = (softmax - onehot) / batch.
  /// logits, dlogits: (classes, batch). Labels must be in [0, classes) (checked by the caller).
  T softmax_xent(MatView<const T> logits, std::span<const std::int32_t> labels, MatView<T> dlogits) {
    const Index n = logits.cols;
    const Index tasks = task_count(n);
    partial_.assign(static_cast<std::size_t>(tasks), T(0));
    parallel_tasks(threads_, tasks, [&](Index t) {
      const Index j0 = t * column_task;
      const Index j1 = std::min(n, j0 + column_task);
      T sum = 0;
      for (Index j = j0; j < j1; ++j) {
        const auto z = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&logits(0, j), logits.rows);
        auto g = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(&dlogits(0, j), dlogits.rows);
        const T zmax = z.maxCoeff();
        g = (z - zmax).exp();
        const T s = g.sum();
        const auto y = static_cast<Index>(labels[static_cast<std::size_t>(j)]);
        sum += std::log(s) - (z(y) - zmax);
        g = g / (s * T(n));
        g(y) -= T(1) / T(n);
      }
      partial_[static_cast<std::size_t>(t)] = sum;
    });
    T total = 0;
    for (Index t = 0; t < tasks; ++t) total += partial_[static_cast<std::size_t>(t)];
    return total / T(n);
  }

 private:
  /// C = alpha * op(A) * op(B) (+ C when beta != 0), C: (M, N), op(A): (M, K) stored
  /// with LhsOrder and leading dimension a.ld, op(B): (K, N) stored with RhsOrder.
  ///
  /// op(A) is packed once into Eigen's GEMM panel format (job 1, tasks over row slices),
  /// then each column chunk of C packs its own slice of op(B) and runs Eigen's kernel on
  /// it (job 2): packing work is |A| + |B| instead of one packing of A per column chunk.
  /// An element of C is computed by one task, over the K blocks in order.
  template <int LhsOrder, int RhsOrder>
  void gemm(MatView<T> c, MatView<const T> a, MatView<const T> b, Index k, T alpha, T beta) {
    const Index m = c.rows;
    const Index n = c.cols;
    if (m == 0 || n == 0) return;
    const bool accumulate = beta != T(0);
    if (k == 0) {  // an empty sum
      if (!accumulate) fill(c, T(0));
      return;
    }
#if ADDITIVE_EIGEN_GEBP
    const auto [kc, kblocks, a_block] = lhs_blocking(m, k, n);
    if (packed_a_.size() < static_cast<std::size_t>(kblocks * a_block))
      packed_a_.resize(static_cast<std::size_t>(kblocks * a_block));
    pack_lhs<LhsOrder>(packed_a_.data(), a, m, k, kc, a_block);
    run_packed<RhsOrder>(c, packed_a_.data(), kc, a_block, k, b, alpha, beta);
#else
    // Portable path: one Eigen product per column chunk (packs op(A) once per chunk).
    const Index lda = std::max<Index>(a.ld, 1);
    const Index ldb = std::max<Index>(b.ld, 1);
    using Lhs = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, LhsOrder>, Eigen::Unaligned,
                           Eigen::OuterStride<>>;
    using Rhs = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, RhsOrder>, Eigen::Unaligned,
                           Eigen::OuterStride<>>;
    const Lhs aa(a.data, m, k, Eigen::OuterStride<>(lda));
    const Rhs bb(b.data, k, n, Eigen::OuterStride<>(ldb));
    parallel_chunks(threads_, n, column_task, [&](Index j0, Index nj) {
      auto cc = map(c.cols_range(j0, nj));
      if (accumulate)
        cc.noalias() += (alpha * aa) * bb.middleCols(j0, nj);
      else
        cc.noalias() = (alpha * aa) * bb.middleCols(j0, nj);
    });
#endif
  }

#if ADDITIVE_EIGEN_GEBP
  struct LhsBlocking {
    Index kc = 0;       // depth of one K block
    Index kblocks = 0;  // K blocks
    Index a_block = 0;  // elements of one K block of the packed op(A), padded to a cache line
  };
  static constexpr Index cache_line = 64 / sizeof(T);  // the kernel loads packed panels aligned
  static Index round_up(Index x, Index to) { return (x + to - 1) / to * to; }

  /// Depth blocking: Eigen's choice for the product of one task, (M, K) x (K, column_task).
  static LhsBlocking lhs_blocking(Index m, Index k, Index n) {
    Index kc = k, mc = m, nc = std::min(n, column_task);
    Eigen::internal::computeProductBlockingSizes<T, T, 1>(kc, mc, nc, Index(1));
    kc = std::clamp<Index>(kc, 1, k);
    return {kc, task_count(k, kc), round_up(m * kc, cache_line)};
  }

  /// Packs op(A) ((M, K), stored with LhsOrder) into Eigen's panel format at pa, K block by
  /// K block (tasks over row slices).
  template <int LhsOrder>
  void pack_lhs(T* pa, MatView<const T> a, Index m, Index k, Index kc, Index a_block) {
    namespace ei = Eigen::internal;
    using Traits = ei::gebp_traits<T, T>;
    using LhsMapper = ei::const_blas_data_mapper<T, Index, LhsOrder>;
    const Index kblocks = task_count(k, kc);
    // Row slices of op(A) (about 8) start at multiples of the kernel's panel height, so the
    // slices packed side by side are laid out exactly as one packing of all M rows.
    const Index slice = Traits::mr * task_count(task_count(m, Traits::mr), 8);
    const Index slices = task_count(m, slice);
    const LhsMapper lhs(a.data, std::max<Index>(a.ld, 1));
    parallel_tasks(threads_, slices * kblocks, [&](Index t) {
      const Index s = t % slices;
      const Index kb = t / slices;
      const Index r0 = s * slice;
      const Index k0 = kb * kc;
      const Index depth = std::min(kc, k - k0);
      ei::gemm_pack_lhs<T, Index, LhsMapper, Traits::mr, Traits::LhsProgress,
                        typename Traits::LhsPacket4Packing, LhsOrder>
          pack;
      pack(pa + kb * a_block + r0 * depth, lhs.getSubMapper(r0, k0), depth, std::min(slice, m - r0));
    });
  }

  /// C = alpha * op(A) * op(B) (+ C when beta != 0) with op(A) packed at pa: each column
  /// chunk of C packs its own slice of op(B) (stored with RhsOrder) and runs Eigen's kernel
  /// over the K blocks in order.
  template <int RhsOrder>
  void run_packed(MatView<T> c, const T* pa, Index kc, Index a_block, Index k, MatView<const T> b, T alpha,
                  T beta) {
    namespace ei = Eigen::internal;
    using Traits = ei::gebp_traits<T, T>;
    using RhsMapper = ei::const_blas_data_mapper<T, Index, RhsOrder>;
    using ResMapper = ei::blas_data_mapper<T, Index, Eigen::ColMajor>;
    const Index m = c.rows;
    const Index n = c.cols;
    const bool accumulate = beta != T(0);
    const Index kblocks = task_count(k, kc);
    const Index chunks = task_count(n, column_task);
    const Index b_block = round_up(kc * std::min(n, column_task), cache_line);
    if (packed_b_.size() < static_cast<std::size_t>(chunks * b_block))
      packed_b_.resize(static_cast<std::size_t>(chunks * b_block));
    T* const pb = packed_b_.data();
    const RhsMapper rhs(b.data, std::max<Index>(b.ld, 1));
    parallel_tasks(threads_, chunks, [&](Index t) {
      const Index j0 = t * column_task;
      const Index nj = std::min(column_task, n - j0);
      if (!accumulate)
        for (Index j = j0; j < j0 + nj; ++j) std::fill_n(c.data + j * c.ld, m, T(0));
      const ResMapper res(c.data + j0 * c.ld, c.ld);
      T* const block_b = pb + t * b_block;
      ei::gemm_pack_rhs<T, Index, RhsMapper, Traits::nr, RhsOrder> pack;
      ei::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false> kernel;
      for (Index kb = 0; kb < kblocks; ++kb) {
        const Index k0 = kb * kc;
        const Index depth = std::min(kc, k - k0);
        pack(block_b, rhs.getSubMapper(k0, j0), depth, nj);
        kernel(res, pa + kb * a_block, block_b, m, depth, nj, alpha);
      }
    });
  }
#endif

  static void check_gemm(MatView<T> c, Index m, Index n, Index k, Index k2) {
    if (c.rows != m || c.cols != n || k != k2)
      throw RuntimeError("gemm: shapes do not agree (C " + std::to_string(c.rows) + "x" +
                         std::to_string(c.cols) + ", op(A) " + std::to_string(m) + "x" + std::to_string(k) +
                         ", op(B) " + std::to_string(k2) + "x" + std::to_string(n) + ")");
  }
  void count(Index m, Index n, Index k) noexcept {
    ++counters_.gemms;
    counters_.gemm_flops += 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  }

  int threads_;
  Counters counters_;
  std::vector<T> partial_;                                           // per-task partial sums, reused
  std::vector<T, Eigen::aligned_allocator<T>> packed_a_, packed_b_;  // GEMM panels, reused
};

}  // namespace additive::cpu
