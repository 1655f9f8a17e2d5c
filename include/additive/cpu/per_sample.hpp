// Per-sample gating of the sharded MLP (experiment 3): every sample of a batch has its own
// structure. When all samples share one mask the structured MlpModel runs (its fast
// straight-line plan, bit for bit). Otherwise the model keeps S streams of (d, batch), one
// per shard, computes every shard's up-projection (K = d) and its down-projection partial
// product P_j = B_j H_j (K = hs) once for the whole batch, and combines them per sample
// by that sample's segments: Z_G = (S/|G|) sum_{j in G} P_j + b (O(S d) per sample).
// A block whose branch gate is off for a sample skips that sample: the samples whose
// branch is on are gathered into a compact sub-batch, the block runs on it alone and the
// results are scattered back, so the work is proportional to the samples that use it
// (see docs/stochastic-gating.md for the cost numbers).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/structure.hpp"
#include "additive/cpu/backend.hpp"
#include "additive/cpu/mlp_model.hpp"
#include "additive/nn/mlp.hpp"
#include "additive/nn/model.hpp"

namespace additive::cpu {

template <Family F, class T>
class PerSampleMlp {
  static constexpr int S = F::shards;
  static constexpr int L = F::blocks;

 public:
  using family = F;
  using scalar_type = T;
  using mask_type = typename F::mask_type;

  explicit PerSampleMlp(const MlpConfig& config, int threads = 1)
      : config_(config), structured_(config, threads), backend_(threads) {}

  [[nodiscard]] const ParamLayout& layout() const noexcept { return structured_.layout(); }
  [[nodiscard]] MlpModel<F, T>& structured() noexcept { return structured_; }
  [[nodiscard]] CpuBackend<T>& backend() noexcept { return backend_; }
  /// Whether the last forward ran the structured path (all samples had the same mask).
  [[nodiscard]] bool last_uniform() const noexcept { return uniform_; }
  /// Logits of the last forward: (classes, batch).
  [[nodiscard]] MatView<const T> logits() const noexcept {
    return uniform_ ? structured_.logits() : MatView<const T>(logits_.data(), logits_.rows(), logits_.cols());
  }
  /// Samples of the last forward whose block l was computed (all of them on the structured path).
  [[nodiscard]] Index active_samples(int l) const noexcept {
    return uniform_ ? batch_ : static_cast<Index>(active_[static_cast<std::size_t>(l)].size());
  }

  /// Mean loss of the batch; sample n uses structure masks[n]. x: (in_dim, batch).
  T forward(std::span<const mask_type> masks, std::span<const T> params, MatView<const T> x,
            std::span<const std::int32_t> labels) {
    if (static_cast<Index>(masks.size()) != x.cols)
      throw InputError("per-sample gating: " + std::to_string(masks.size()) + " masks for a batch of " +
                       std::to_string(x.cols) + " samples");
    batch_ = x.cols;
    uniform_ = std::all_of(masks.begin(), masks.end(), [&](mask_type m) { return m == masks[0]; });
    if (uniform_) return structured_.forward(masks[0], params, x, labels);
    check_inputs(params, x, labels);
    masks_.assign(masks.begin(), masks.end());
    x_ = x;
    const Index d = config_.d, B = x.cols, hs = config_.h / S;
    resize_streams(B);
    const Views p(config_, L, params);

    // Embedding, copied into the S streams of level 0.  (d, batch)
    backend_.gemm_tn(mat(stream_[0]), p.embed_t, x, T(1), T(0));
    backend_.add_bias(mat(stream_[0]), p.embed_b);
    for (int j = 1; j < S; ++j) stream_[at(j)] = stream_[0];

    for (int l = 0; l < L; ++l) {
      const auto& bp = p.blocks[at(l)];
      auto& act = active_[at(l)];
      act.clear();
      for (Index n = 0; n < B; ++n)
        if (F::block(masks_[at(n)], l).residual()) act.push_back(n);
      // Skipped samples: Y_j = X_j. Copy everything, then overwrite the active columns.
      for (int j = 0; j < S; ++j) stream_[slot(l + 1, j)] = stream_[slot(l, j)];
      const auto na = static_cast<Index>(act.size());
      if (na == 0) continue;
      auto& blk = blocks_[at(l)];
      blk.u.resize(config_.h, na);    // (h, active)
      blk.hid.resize(config_.h, na);  // (h, active)
      for (int j = 0; j < S; ++j) {
        auto& xc = blk.xc[at(j)];  // (d, active): the gathered input stream of shard j
        auto& xn = blk.xn[at(j)];  // (d, active)
        xc.resize(d, na);
        xn.resize(d, na);
        blk.mean[at(j)].resize(at(na));
        blk.rstd[at(j)].resize(at(na));
        const auto& src = stream_[slot(l, j)];
        for (Index c = 0; c < na; ++c) xc.col(c) = src.col(act[at(c)]);
        backend_.layernorm(cmat(xc), bp.norm_w, bp.norm_b, mat(xn), blk.mean[at(j)].data(),
                           blk.rstd[at(j)].data(), T(config_.norm_eps));
        auto u = mat(blk.u).rows_range(j * hs, hs);  // (hs, active)
        backend_.gemm_tn(u, bp.up_t.cols_range(j * hs, hs), cmat(xn), T(1), T(0));
        backend_.bias_gelu(u, bp.up_b + j * hs, mat(blk.hid).rows_range(j * hs, hs));
        part_[at(j)].resize(d, na);  // P_j = B_j H_j: (d, active)
        backend_.gemm_tn(mat(part_[at(j)]), bp.down_t.rows_range(j * hs, hs),
                         cmat(blk.hid).rows_range(j * hs, hs), T(1), T(0));
      }
      // Per sample: Z_G = (S/|G|) sum_{j in G} P_j + b, Y_j = X_j + Z_seg(j).
      const auto bias = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(bp.down_b, d);
      Eigen::Matrix<T, Eigen::Dynamic, 1> z(d);
      for (Index c = 0; c < na; ++c) {
        const Index n = act[at(c)];
        for (const Segment g : F::block(masks_[at(n)], l).segments()) {
          z = part_[at(g.first)].col(c);
          for (int j = g.first + 1; j < g.last(); ++j) z += part_[at(j)].col(c);
          z = (T(S) / T(g.size)) * z + bias;
          for (int j = g.first; j < g.last(); ++j) stream_[slot(l + 1, j)].col(n) += z;
        }
      }
    }

    // Final per-stream norm and head on each of the S streams; logits averaged.  (classes, batch)
    logits_.resize(config_.classes, B);
    dlogits_.resize(config_.classes, B);
    for (int j = 0; j < S; ++j) {
      auto& fin = final_[at(j)];
      if constexpr (F::final_norm == FinalNorm::per_stream) {
        fin.resize(d, B);
        final_mean_[at(j)].resize(at(B));
        final_rstd_[at(j)].resize(at(B));
        backend_.layernorm(cmat(stream_[slot(L, j)]), p.final_w, p.final_b, mat(fin),
                           final_mean_[at(j)].data(), final_rstd_[at(j)].data(), T(config_.norm_eps));
      } else {
        fin = stream_[slot(L, j)];
      }
      backend_.gemm_tn(mat(logits_), p.head_t, cmat(fin), T(1) / T(S), j == 0 ? T(0) : T(1));
    }
    backend_.add_bias(mat(logits_), p.head_b);
    return backend_.softmax_xent(cmat(logits_), labels, mat(dlogits_));
  }

  /// Gradient of the last forward's loss. Contract: writes (=) every element of grads;
  /// parameters no sample used (a block every sample skipped) receive exact zeros.
  void backward(std::span<const T> params, std::span<T> grads) {
    if (batch_ == 0) throw RuntimeError("PerSampleMlp::backward called before forward");
    if (uniform_) {
      structured_.backward(params, grads);
      return;
    }
    if (grads.size() != layout().total())
      throw RuntimeError("PerSampleMlp: gradient buffer has " + std::to_string(grads.size()) +
                         " elements, the layout has " + std::to_string(layout().total()));
    std::fill(grads.begin(), grads.end(), T(0));
    const Views p(config_, L, params);
    const GradViews g(config_, L, grads);
    const Index d = config_.d, B = batch_, hs = config_.h / S;
    dstream_.resize(at(S));  // gradients of the streams at the current level: (d, batch) each
    for (auto& m : dstream_) m.resize(d, B);

    // Head and final norms.
    backend_.add_row_sums(cmat(dlogits_), g.head_b);
    EigenMat<T> dfin(d, B);  // (d, batch)
    for (int j = 0; j < S; ++j) {
      backend_.gemm_nt(g.head_t, cmat(final_[at(j)]), cmat(dlogits_), T(1) / T(S), T(1));
      auto dy = mat(dstream_[at(j)]);
      if constexpr (F::final_norm == FinalNorm::per_stream) {
        backend_.gemm_nn(mat(dfin), p.head_t, cmat(dlogits_), T(1) / T(S), T(0));
        backend_.fill(dy, T(0));
        backend_.layernorm_backward(cmat(stream_[slot(L, j)]), p.final_w, final_mean_[at(j)].data(),
                                    final_rstd_[at(j)].data(), cmat(dfin), dy, g.final_w, g.final_b);
      } else {
        backend_.gemm_nn(dy, p.head_t, cmat(dlogits_), T(1) / T(S), T(0));
      }
    }

    // Blocks, last to first. The residual passes dY_j to dX_j for every sample; the active
    // samples add the branch's contribution.
    for (int l = L - 1; l >= 0; --l) {
      const auto& act = active_[at(l)];
      const auto na = static_cast<Index>(act.size());
      if (na == 0) continue;
      const auto& bp = p.blocks[at(l)];
      const auto& gp = g.blocks[at(l)];
      auto& blk = blocks_[at(l)];
      // dP_j = (S/|G|) dZ_G with dZ_G = sum_{k in G} dY_k; db = sum_G dZ_G.  (d, active)
      EigenMat<T> dzsum(d, na);
      for (int j = 0; j < S; ++j) part_[at(j)].resize(d, na);
      Eigen::Matrix<T, Eigen::Dynamic, 1> dz(d);
      for (Index c = 0; c < na; ++c) {
        const Index n = act[at(c)];
        dzsum.col(c).setZero();
        for (const Segment seg : F::block(masks_[at(n)], l).segments()) {
          dz = dstream_[at(seg.first)].col(n);
          for (int j = seg.first + 1; j < seg.last(); ++j) dz += dstream_[at(j)].col(n);
          dzsum.col(c) += dz;
          const T scale = T(S) / T(seg.size);
          for (int j = seg.first; j < seg.last(); ++j) part_[at(j)].col(c) = scale * dz;
        }
      }
      backend_.add_row_sums(cmat(dzsum), gp.down_b);
      EigenMat<T> dh(config_.h, na);  // (h, active)
      for (int j = 0; j < S; ++j) {
        backend_.gemm_nt(gp.down_t.rows_range(j * hs, hs), cmat(blk.hid).rows_range(j * hs, hs),
                         cmat(part_[at(j)]), T(1), T(1));
        backend_.gemm_nn(mat(dh).rows_range(j * hs, hs), bp.down_t.rows_range(j * hs, hs), cmat(part_[at(j)]),
                         T(1), T(0));
      }
      backend_.gelu_backward(cmat(blk.u), cmat(dh), mat(dh));  // dh now holds dU
      backend_.add_row_sums(cmat(dh), gp.up_b);
      EigenMat<T> dxn(d, na), dxc(d, na);  // (d, active)
      for (int j = 0; j < S; ++j) {
        auto du = cmat(dh).rows_range(j * hs, hs);  // (hs, active)
        backend_.gemm_nt(gp.up_t.cols_range(j * hs, hs), cmat(blk.xn[at(j)]), du, T(1), T(1));
        backend_.gemm_nn(mat(dxn), bp.up_t.cols_range(j * hs, hs), du, T(1), T(0));
        dxc.setZero();
        backend_.layernorm_backward(cmat(blk.xc[at(j)]), bp.norm_w, blk.mean[at(j)].data(),
                                    blk.rstd[at(j)].data(), cmat(dxn), mat(dxc), gp.norm_w, gp.norm_b);
        for (Index c = 0; c < na; ++c) dstream_[at(j)].col(act[at(c)]) += dxc.col(c);
      }
    }

    // Embedding: its output fed all S streams.  (d, batch)
    EigenMat<T> de = dstream_[0];
    for (int j = 1; j < S; ++j) de += dstream_[at(j)];
    backend_.gemm_nt(g.embed_t, x_, cmat(de), T(1), T(1));
    backend_.add_row_sums(cmat(de), g.embed_b);
  }

 private:
  using Views = MlpParamViews<const T>;
  using GradViews = MlpParamViews<T>;

  struct BlockState {  // what backward needs of one block, for its active samples
    std::vector<EigenMat<T>> xc = std::vector<EigenMat<T>>(S), xn = std::vector<EigenMat<T>>(S);
    std::vector<std::vector<T>> mean = std::vector<std::vector<T>>(S), rstd = std::vector<std::vector<T>>(S);
    EigenMat<T> u{}, hid{};
  };

  static constexpr std::size_t at(Index i) noexcept { return static_cast<std::size_t>(i); }
  static constexpr std::size_t slot(int level, int shard) noexcept { return at(level * S + shard); }
  static MatView<T> mat(EigenMat<T>& m) { return MatView<T>(m.data(), m.rows(), m.cols()); }
  static MatView<const T> cmat(const EigenMat<T>& m) {
    return MatView<const T>(m.data(), m.rows(), m.cols());
  }

  void check_inputs(std::span<const T> params, MatView<const T> x,
                    std::span<const std::int32_t> labels) const {
    if (params.size() != layout().total())
      throw RuntimeError("PerSampleMlp: parameter buffer has " + std::to_string(params.size()) +
                         " elements, the layout has " + std::to_string(layout().total()));
    check_mlp_batch(config_, x, labels);
  }

  void resize_streams(Index batch) {
    stream_.resize(slot(L + 1, 0));
    for (auto& m : stream_) m.resize(config_.d, batch);
  }

  MlpConfig config_;
  MlpModel<F, T> structured_;
  CpuBackend<T> backend_;
  bool uniform_ = true;
  Index batch_ = 0;
  std::vector<mask_type> masks_{};
  MatView<const T> x_{};
  std::vector<EigenMat<T>> stream_{};  // (L + 1) * S streams, (d, batch) each
  std::vector<EigenMat<T>> dstream_{};
  std::vector<EigenMat<T>> part_ = std::vector<EigenMat<T>>(S);  // P_j or dP_j: (d, active)
  std::vector<EigenMat<T>> final_ = std::vector<EigenMat<T>>(S);
  std::vector<std::vector<T>> final_mean_ = std::vector<std::vector<T>>(S);
  std::vector<std::vector<T>> final_rstd_ = std::vector<std::vector<T>>(S);
  std::vector<std::vector<Index>> active_ = std::vector<std::vector<Index>>(L);
  std::vector<BlockState> blocks_ = std::vector<BlockState>(L);
  EigenMat<T> logits_{}, dlogits_{};
};

}  // namespace additive::cpu

namespace additive {
/// cpu::MlpModel's per-sample path (the PerSampleModel concept).
template <Family F, class T>
struct per_sample_model<cpu::MlpModel<F, T>> {
  using type = cpu::PerSampleMlp<F, T>;
};
}  // namespace additive
