// Tensor-parallel execution of the sharded MLP family (DESIGN sections 2 and 5): S ranks,
// rank j holding shard j of every block, each structure doing only the all-reduces its
// gates ask for, over per-segment sub-communicators. The result (loss, logits and the
// gradient, once the shards are gathered) is the single-process model's, to rounding.
// See docs/tensor-parallel.md for what is communicated when and why.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"
#include "additive/cpu/backend.hpp"
#include "additive/dist/communicator.hpp"
#include "additive/nn/mlp.hpp"

namespace additive::dist {

// ---- one rank's parameters ----
//
// Rank j holds rows j of up.weight and up.bias (A_j, a_j: hs x d, hs), columns j of
// down.weight (B_j: d x hs), and all replicated tensors (embedding, norms, down.bias,
// final norm, head). That is exactly the flat layout of an MLP of hidden width hs = h/S,
// so the rank's buffer is `mlp_layout(shard_config(c, S), L)` and MlpParamViews reads it.

/// The widths of one rank's model: hidden width h / shards. Throws InputError when h
/// does not split into `shards` equal shards.
inline MlpConfig shard_config(const MlpConfig& c, int shards) {
  c.validate(shards);
  MlpConfig s = c;
  s.h = c.h / shards;
  return s;
}

/// Whether tensor i of the MLP layout is split over the shards (else it is replicated):
/// read from the layout's shard axes, the same tensors in the full and the local layout.
inline bool is_sharded_tensor(const MlpConfig& c, int blocks, int shards, std::size_t i) {
  return mlp_layout(c, blocks, shards).tensors().at(i).shard.sharded();
}

namespace detail {

/// Calls copy(full_offset, local_offset, count) for every contiguous run of shard j's
/// elements (and, when `replicated`, for every replicated tensor whole).
template <class Copy>
void for_each_shard_run(const MlpConfig& c, int blocks, int shards, int j, bool replicated, Copy&& copy) {
  if (j < 0 || j >= shards)
    throw InputError("shard " + std::to_string(j) + " is not in [0, " + std::to_string(shards) + ")");
  const ParamLayout full = mlp_layout(c, blocks, shards);
  const ParamLayout local = mlp_layout(shard_config(c, shards), blocks);
  const auto ju = static_cast<std::size_t>(j);
  for (std::size_t t = 0; t < full.tensors().size(); ++t) {
    const TensorSpec& f = full.tensors()[t];
    const TensorSpec& l = local.tensors()[t];
    if (f.shard.sharded()) {
      // Row-major: shard j of axis a is, for each index of the axes before a (outer), one
      // contiguous run of (extent / S) * inner elements, where inner is the product of the
      // axes after a. (up.weight (h, d): one run of hs * d; down.weight (d, h): d runs of hs.)
      const auto a = static_cast<std::size_t>(f.shard.axis);
      std::size_t outer = 1, inner = 1;
      for (std::size_t k = 0; k < a; ++k) outer *= static_cast<std::size_t>(f.shape[k]);
      for (std::size_t k = a + 1; k < f.shape.size(); ++k) inner *= static_cast<std::size_t>(f.shape[k]);
      const auto extent = static_cast<std::size_t>(f.shape[a]);
      const std::size_t run = extent / static_cast<std::size_t>(shards) * inner;
      for (std::size_t o = 0; o < outer; ++o)
        copy(f.offset + o * extent * inner + ju * run, l.offset + o * run, run);
    } else if (replicated) {
      copy(f.offset, l.offset, f.size);
    }
  }
}

}  // namespace detail

/// Rank j's parameters from the full flat buffer: writes (=) every element of `local`.
template <class T>
void extract_shard(const MlpConfig& c, int blocks, int shards, int j, std::span<const T> full,
                   std::span<T> local) {
  if (full.size() != mlp_layout(c, blocks).total() ||
      local.size() != mlp_layout(shard_config(c, shards), blocks).total())
    throw RuntimeError("extract_shard: buffer sizes do not match the full and the shard layouts");
  detail::for_each_shard_run(c, blocks, shards, j, true, [&](std::size_t fo, std::size_t lo, std::size_t n) {
    std::copy_n(full.data() + fo, n, local.data() + lo);
  });
}

/// The inverse: writes shard j's slices of `local` into `full`, and the replicated
/// tensors too when `replicated` (gathering a gradient: replicated parts from one rank).
template <class T>
void insert_shard(const MlpConfig& c, int blocks, int shards, int j, std::span<const T> local,
                  std::span<T> full, bool replicated) {
  if (full.size() != mlp_layout(c, blocks).total() ||
      local.size() != mlp_layout(shard_config(c, shards), blocks).total())
    throw RuntimeError("insert_shard: buffer sizes do not match the full and the shard layouts");
  detail::for_each_shard_run(c, blocks, shards, j, replicated,
                             [&](std::size_t fo, std::size_t lo, std::size_t n) {
                               std::copy_n(local.data() + lo, n, full.data() + fo);
                             });
}

// ---- what a step communicates ----

/// Where a collective of a tensor-parallel step sits.
enum class TpPhase {
  forward,    ///< a segment's partial sums P_G, block `block`
  backward,   ///< a segment's output gradient dZ_G, block `block`
  logits,     ///< the average of the ranks' logits (full communicator)
  gradients,  ///< the sum of the replicated parameters' partial gradients (full communicator)
};

/// One all-reduce this rank took part in.
struct TpCollective {
  TpPhase phase = TpPhase::forward;
  int block = -1;            ///< block index, -1 for logits and gradients
  int group = 0;             ///< ranks in the collective
  std::size_t elements = 0;  ///< elements reduced

  /// Bytes this rank sends in a ring all-reduce of it: 2(p-1)/p * bytes (DESIGN section 5).
  [[nodiscard]] double ring_bytes(std::size_t element_bytes) const noexcept {
    if (group <= 1) return 0;
    return 2.0 * (group - 1) / group * static_cast<double>(elements * element_bytes);
  }
};

/// An MLP of family F run tensor-parallel over `comm` (one rank's handle; comm.size()
/// must be F::shards). Every rank constructs one, then calls forward() and backward()
/// with the same mask and batch, its own shard buffer and the same inputs.
///
/// Contract of a step: forward returns the loss, the same on every rank, and leaves the
/// logits averaged over the S ranks (the same on every rank); backward writes (=) the
/// rank's gradient buffer: shard slices are the exact gradient of the rank's shard,
/// replicated tensors the full gradient (the same on every rank).
///
/// Collectives (all in the same order on every rank, so the ranks must agree on the
/// mask; the constructor checks that they agree on family, widths and element type):
/// per block with an active residual and per segment G with |G| > 1, one all-reduce of a
/// (d, batch) tensor among G in the forward pass and one in the backward pass; one of
/// the logits (classes, batch) and one of the replicated gradients over all S ranks.
/// A segment's sub-communicator is split the first time its block pattern is met and
/// kept (splits() counts them), so repeated steps do not re-split.
///
/// Holds a reference to `comm`: it must outlive the model. One model per rank; not
/// thread-safe (each rank's thread owns its model).
template <Family F, CommScalar T, Communicator Comm>
class TensorParallelMlp {
  static constexpr int S = F::shards;
  static constexpr int L = F::blocks;
  static_assert(
      requires { F::final_norm; }, "TensorParallelMlp runs the MLP family (MlpFamily<...>)");

 public:
  using family = F;
  using scalar_type = T;
  using mask_type = typename F::mask_type;

  TensorParallelMlp(const MlpConfig& config, Comm& comm)
      : config_(config),
        local_((check_ranks(comm), shard_config(config, S))),
        layout_(mlp_layout(local_, L)),
        comm_(&comm),
        rank_(comm.rank()),
        backend_(1) {
    nlohmann::json desc = config;
    check_consistent(comm, "tensor-parallel MLP",
                     F::describe() + " " + desc.dump() + " element bytes " + std::to_string(sizeof(T)));
    const ParamLayout full = mlp_layout(config, L, S);  // the same tensors, with their shard axes
    for (std::size_t i = 0; i < layout_.tensors().size(); ++i)
      if (const auto& t = layout_.tensors()[i]; !full.tensors()[i].shard.sharded()) {
        replicated_.push_back({t.offset, t.size});
        replicated_total_ += t.size;
      }
  }

  [[nodiscard]] const MlpConfig& config() const noexcept { return config_; }
  /// The layout of this rank's parameter and gradient buffers (the MLP layout at width h/S).
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] int rank() const noexcept { return rank_; }
  /// Logits of the last forward pass, averaged over the ranks: (classes, batch).
  [[nodiscard]] MatView<const T> logits() const noexcept { return view(logits_); }
  /// The all-reduces of the last step (since the last forward), in the order made.
  [[nodiscard]] const std::vector<TpCollective>& collectives() const noexcept { return log_; }
  /// Sub-communicator splits made so far (one per block pattern with a segment of two or more).
  [[nodiscard]] std::size_t splits() const noexcept { return segment_comms_.size(); }

  /// Bytes this rank sent in the last step's collectives of `phase` (ring all-reduce model).
  [[nodiscard]] double bytes_sent(TpPhase phase) const noexcept {
    double b = 0;
    for (const auto& c : log_)
      if (c.phase == phase) b += c.ring_bytes(sizeof(T));
    return b;
  }

  /// x: (in_dim, batch), the same on every rank; labels: (batch). Returns the mean loss.
  T forward(mask_type m, std::span<const T> params, MatView<const T> x,
            std::span<const std::int32_t> labels) {
    check_size(params.size(), "parameter");
    check_batch(x, labels);
    mask_ = m;
    x_ = x;
    log_.clear();
    ensure_workspace(x.cols);
    const Views p(local_, L, params);

    // Embedding: rank j's copy of the one input stream.  (d, batch)
    level_[0] = 0;
    backend_.gemm_tn(stream(0), p.embed_t, x, T(1), T(0));
    backend_.add_bias(stream(0), p.embed_b);

    for (int l = 0; l < L; ++l) {
      const auto gates = F::block(m, l);
      if (!gates.residual()) {  // skipped: Y_j = X_j, nothing computed, nothing sent
        level_[idx(l + 1)] = level_[idx(l)];
        continue;
      }
      level_[idx(l + 1)] = l + 1;
      const auto& bp = p.blocks[idx(l)];
      const Segment g = own_segment(gates);
      auto xn = view(xn_[idx(l)]);  // (d, batch)
      auto u = view(u_[idx(l)]);    // (hs, batch) pre-activations
      auto hb = view(h_[idx(l)]);   // (hs, batch) activations
      auto z = view(z_);            // (d, batch)
      backend_.layernorm(stream(l), bp.norm_w, bp.norm_b, xn, mean_[idx(l)].data(), rstd_[idx(l)].data(),
                         T(config_.norm_eps));
      backend_.gemm_tn(u, bp.up_t, xn, T(1), T(0));  // A_j norm(X_j)
      backend_.bias_gelu(u, bp.up_b, hb);            // H_j
      // (S/|G|) B_j H_j, then the sum over the segment: (S/|G|) P_G.
      backend_.gemm_tn(z, bp.down_t, hb, T(S) / T(g.size), T(0));
      segment_all_reduce(gates, g, z_, TpPhase::forward, l);
      backend_.residual_add(stream(l), z, bp.down_b, stream(l + 1));  // Y_j = X_j + Z_G + b
    }

    // Final norm and head of this rank's stream, scaled by 1/S; the sum over the ranks
    // is the model's average of the logits over the S shards.  (classes, batch)
    auto logits = view(logits_);
    if constexpr (F::final_norm == FinalNorm::per_stream)
      backend_.layernorm(stream(L), p.final_w, p.final_b, view(final_xn_), final_mean_.data(),
                         final_rstd_.data(), T(config_.norm_eps));
    backend_.gemm_tn(logits, p.head_t, final_input(), T(1) / T(S), T(0));
    all_reduce(*comm_, logits_, TpPhase::logits, -1);
    backend_.add_bias(logits, p.head_b);
    return backend_.softmax_xent(logits, labels, view(dlogits_));
  }

  /// Gradient of the last forward's loss. Contract: writes (=) every element of grads;
  /// shard slices of skipped blocks are exact zeros.
  ///
  /// Derivation (see docs/tensor-parallel.md). Rank j's stream X_j is its own copy of
  /// the model's stream; ranks of one stream hold equal copies. Treat the copies as
  /// separate variables: the gradient of the model's stream is the sum of its copies'
  /// gradients, and every replicated parameter's gradient is the sum over the ranks of
  /// the gradient through that rank's copy of the computation. So rank j carries dY_j,
  /// the gradient of its copy only (a partial), and:
  ///   - Z_G is added to every copy Y_i, i in G, hence dZ_G = sum_{i in G} dY_i: one
  ///     all-reduce of a (d, batch) tensor among G (none when |G| = 1). It cannot be
  ///     deferred: dH_j = (S/|G|) B_j^T dZ_G needs B_j, which only rank j holds.
  ///   - dB_j = (S/|G|) dZ_G H_j^T, da_j, dA_j: local and exact (rank j is their only user).
  ///   - dX_j = dY_j + norm^T(A_j^T dU_j): rank j's copy's gradient, partial, stays local.
  ///   - db (down.bias) = sum_G rowsum(dZ_G) = sum_j rowsum(dY_j): partial rowsum(dY_j).
  ///   - norms, embedding, final norm, head weight: partial through the rank's copy;
  ///     head.bias is added once after the logits' all-reduce, so rank 0 alone counts it.
  /// One all-reduce over all S ranks then sums the replicated partials.
  void backward(std::span<const T> params, std::span<T> grads) {
    check_size(params.size(), "parameter");
    check_size(grads.size(), "gradient");
    if (batch_ == 0) throw RuntimeError("TensorParallelMlp::backward called before forward");
    std::fill(grads.begin(), grads.end(), T(0));
    const Views p(local_, L, params);
    const GradViews g(local_, L, grads);

    auto dlogits = view(dlogits_);  // (classes, batch), the same on every rank
    if (rank_ == 0) backend_.add_row_sums(dlogits, g.head_b);
    backend_.gemm_nt(g.head_t, final_input(), dlogits, T(1) / T(S), T(1));
    if constexpr (F::final_norm == FinalNorm::per_stream) {
      auto dyn = view(dxn_);  // (d, batch)
      backend_.gemm_nn(dyn, p.head_t, dlogits, T(1) / T(S), T(0));
      backend_.fill(dstream(L), T(0));
      backend_.layernorm_backward(stream(L), p.final_w, final_mean_.data(), final_rstd_.data(), dyn,
                                  dstream(L), g.final_w, g.final_b);
    } else {
      backend_.gemm_nn(dstream(L), p.head_t, dlogits, T(1) / T(S), T(0));
    }

    for (int l = L - 1; l >= 0; --l) {
      const auto gates = F::block(mask_, l);
      if (!gates.residual()) continue;  // dX_j = dY_j: the same buffer (levels alias)
      const auto& bp = p.blocks[idx(l)];
      const auto& gp = g.blocks[idx(l)];
      const Segment seg = own_segment(gates);
      const T scale = T(S) / T(seg.size);
      auto dy = dstream(l + 1);  // (d, batch) this copy's output gradient
      auto dx = dstream(l);      // (d, batch)
      auto dz = view(dz_);       // (d, batch)
      auto dh = view(dh_);       // (hs, batch)
      auto dxn = view(dxn_);     // (d, batch)
      auto hb = view(h_[idx(l)]);
      backend_.add_row_sums(dy, gp.down_b);  // partial: sum_j rowsum(dY_j)
      backend_.axpby(dy, T(1), dz, false);
      segment_all_reduce(gates, seg, dz_, TpPhase::backward, l);  // dZ_G
      backend_.gemm_nt(gp.down_t, hb, dz, scale, T(1));           // dB_j^T (hs, d)
      backend_.gemm_nn(dh, bp.down_t, dz, scale, T(0));           // dH_j
      backend_.gelu_backward(view(u_[idx(l)]), dh, dh);           // dh now holds dU_j
      backend_.add_row_sums(dh, gp.up_b);
      backend_.gemm_nt(gp.up_t, view(xn_[idx(l)]), dh, T(1), T(1));  // dA_j^T (d, hs)
      backend_.gemm_nn(dxn, bp.up_t, dh, T(1), T(0));                // A_j^T dU_j
      backend_.axpby(dy, T(1), dx, false);                           // residual path
      backend_.layernorm_backward(stream(l), bp.norm_w, mean_[idx(l)].data(), rstd_[idx(l)].data(), dxn, dx,
                                  gp.norm_w, gp.norm_b);
    }

    auto de = dstream(0);  // (d, batch)
    backend_.gemm_nt(g.embed_t, x_, de, T(1), T(1));
    backend_.add_row_sums(de, g.embed_b);

    // The replicated tensors' partial gradients, packed, summed over all ranks.
    packed_.resize(replicated_total_);
    std::size_t at = 0;
    for (const auto& [offset, size] : replicated_) {
      std::copy_n(grads.data() + offset, size, packed_.data() + at);
      at += size;
    }
    all_reduce(*comm_, packed_, TpPhase::gradients, -1);
    at = 0;
    for (const auto& [offset, size] : replicated_) {
      std::copy_n(packed_.data() + at, size, grads.data() + offset);
      at += size;
    }
  }

 private:
  using Views = MlpParamViews<const T>;
  using GradViews = MlpParamViews<T>;
  using Gates = typename F::block_gates;
  using Mat = cpu::EigenMat<T>;

  struct Range {
    std::size_t offset = 0;
    std::size_t size = 0;
  };

  static void check_ranks(const Comm& comm) {
    if (comm.size() != S)
      throw InputError("tensor-parallel " + F::describe() + " needs " + std::to_string(S) +
                       " ranks (one per shard), the communicator has " + std::to_string(comm.size()));
  }

  void check_size(std::size_t n, const char* what) const {
    if (n != layout_.total())
      throw RuntimeError(std::string("TensorParallelMlp: ") + what + " buffer has " + std::to_string(n) +
                         " elements, the shard layout has " + std::to_string(layout_.total()));
  }

  void check_batch(MatView<const T> x, std::span<const std::int32_t> labels) const {
    check_mlp_batch(config_, x, labels);
  }

  /// The segment of this rank's shard.
  Segment own_segment(const Gates& gates) const {
    for (const Segment s : gates.segments())
      if (rank_ >= s.first && rank_ < s.last()) return s;
    throw RuntimeError("TensorParallelMlp: rank outside every segment");  // unreachable
  }

  /// The sum of `buf` over segment g (this rank's): nothing when |g| = 1. The pattern's
  /// sub-communicators are split on first use, by every rank (a split is collective over
  /// the full communicator, so ranks of one-shard segments take part too), at the same
  /// point of the same step (the ranks run the same masks): colour = segment index,
  /// key = rank. Patterns whose segments are all single shards never split.
  void segment_all_reduce(const Gates& gates, Segment g, Mat& buf, TpPhase phase, int block) {
    const auto segments = gates.segments();
    if (segments.size() == S) return;  // every segment is one shard: nothing to sum
    const std::uint64_t cuts = gates.cuts();
    auto it = segment_comms_.find(cuts);
    if (it == segment_comms_.end()) {
      int colour = 0;
      while (!(rank_ >= segments[colour].first && rank_ < segments[colour].last())) ++colour;
      it = segment_comms_.emplace(cuts, comm_->split(colour, rank_)).first;
    }
    if (it->second.size() != g.size)
      throw RuntimeError("TensorParallelMlp: segment sub-communicator has " +
                         std::to_string(it->second.size()) + " ranks, the segment " + std::to_string(g.size));
    if (g.size == 1) return;
    all_reduce(it->second, buf, phase, block);
  }

  template <class Buffer>
  void all_reduce(Comm& comm, Buffer& buf, TpPhase phase, int block) {
    std::span<T> s(buf.data(), static_cast<std::size_t>(buf.size()));
    comm.all_reduce_sum(s);
    log_.push_back({.phase = phase, .block = block, .group = comm.size(), .elements = s.size()});
  }

  // ---- workspace ----

  static constexpr std::size_t idx(int i) noexcept { return static_cast<std::size_t>(i); }
  static MatView<T> view(Mat& m) { return MatView<T>(m.data(), m.rows(), m.cols()); }
  static MatView<const T> view(const Mat& m) { return MatView<const T>(m.data(), m.rows(), m.cols()); }
  /// This rank's stream entering block `level` (level L: after the last block). Skipped
  /// blocks alias the buffers of the level before them.
  MatView<T> stream(int level) { return view(streams_[idx(level_[idx(level)])]); }
  MatView<T> dstream(int level) { return view(dstreams_[idx(level_[idx(level)])]); }
  MatView<T> final_input() {
    if constexpr (F::final_norm == FinalNorm::per_stream)
      return view(final_xn_);
    else
      return stream(L);
  }

  void ensure_workspace(Index batch) {
    if (batch == batch_) return;
    const Index d = config_.d, hs = local_.h;
    streams_.assign(idx(L + 1), Mat(d, batch));
    dstreams_.assign(idx(L + 1), Mat(d, batch));
    xn_.assign(idx(L), Mat(d, batch));
    u_.assign(idx(L), Mat(hs, batch));
    h_.assign(idx(L), Mat(hs, batch));
    mean_.assign(idx(L), std::vector<T>(static_cast<std::size_t>(batch)));
    rstd_.assign(idx(L), std::vector<T>(static_cast<std::size_t>(batch)));
    final_xn_ = Mat(d, batch);
    final_mean_.assign(static_cast<std::size_t>(batch), T(0));
    final_rstd_.assign(static_cast<std::size_t>(batch), T(0));
    logits_ = Mat(config_.classes, batch);
    dlogits_ = Mat(config_.classes, batch);
    z_ = Mat(d, batch);
    dz_ = Mat(d, batch);
    dxn_ = Mat(d, batch);
    dh_ = Mat(hs, batch);
    batch_ = batch;
  }

  MlpConfig config_;
  MlpConfig local_;  // h = hs
  ParamLayout layout_;
  Comm* comm_;
  int rank_ = 0;
  cpu::CpuBackend<T> backend_;
  std::map<std::uint64_t, Comm> segment_comms_;  // by the block's cuts
  std::vector<Range> replicated_;
  std::size_t replicated_total_ = 0;
  std::vector<T> packed_;
  std::vector<TpCollective> log_;

  mask_type mask_{};
  MatView<const T> x_{};
  std::array<int, L + 1> level_{};
  Index batch_ = 0;
  std::vector<Mat> streams_, dstreams_, xn_, u_, h_;
  std::vector<std::vector<T>> mean_, rstd_;
  std::vector<T> final_mean_, final_rstd_;
  Mat final_xn_, logits_, dlogits_, z_, dz_, dxn_, dh_;
};

}  // namespace additive::dist
