// The sharded MLP family on the CUDA backend: cpu/mlp_model.hpp line for line (the same
// per-block plans and tables), with parameters, gradients, inputs and activations in
// device memory and every primitive on the backend's stream. fp32 (optionally TF32
// GEMMs through backend().blas().set_tf32(true)).
//
// From the CPU version: forward and backward of every
// structure. Each block's gate pattern is a template parameter, so a block's plan (which
// GEMMs, on which slices, at which scale) is straight-line code; run-time masks reach
// those plans through per-block tables (L * 2^k plans) or, for small n, a whole-model
// table of 2^n entries. The stream partition entering a block depends on the earlier
// blocks and is a run-time value (it is a constant too on the whole-model path).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "additive/core/dispatch.hpp"
#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/cuda/backend.cuh"
#include "additive/cuda/buffer.cuh"
#include "additive/nn/mlp.hpp"

namespace additive::cuda {

template <Family F, class T>
class MlpModel {
  static constexpr int S = F::shards;
  static constexpr int L = F::blocks;
  using Gates = typename F::block_gates;

 public:
  using family = F;
  using scalar_type = T;
  using mask_type = typename F::mask_type;

  explicit MlpModel(const MlpConfig& config)
      : config_(config), layout_((config.validate(S), mlp_layout(config, L))) {}

  [[nodiscard]] const MlpConfig& config() const noexcept { return config_; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] Backend<T>& backend() noexcept { return backend_; }
  [[nodiscard]] Index shard_width() const noexcept { return config_.h / S; }

  /// Logits of the last forward pass: (classes, batch), device memory.
  [[nodiscard]] MatView<const T> logits() const noexcept { return view(logits_); }
  /// The structure of the last forward pass.
  [[nodiscard]] mask_type mask() const noexcept { return mask_; }

  // ---- forward: three ways to pick a structure, one computation ----

  /// Compile-time structure. params: device memory; x: (in_dim, batch), device memory,
  /// kept until backward(); labels: (batch), host memory. Returns the mean loss (waits
  /// for the stream) and keeps what backward() needs.
  template <class St>
  requires std::same_as<typename St::family, F> T forward(std::span<const T> params, MatView<const T> x,
                                                          std::span<const std::int32_t> labels) {
    return run_forward(
        St::mask, params, x, labels, [this]<std::size_t... l>(const Views& p, std::index_sequence<l...>) {
          (this->template block_forward<F::block(St::mask, static_cast<int>(l)).bits>(p, static_cast<int>(l)),
           ...);
        });
  }

  /// Run-time structure through the per-block tables (2^k entries per block).
  T forward(mask_type m, std::span<const T> params, MatView<const T> x,
            std::span<const std::int32_t> labels) {
    return run_forward(
        m, params, x, labels, [ this, m ]<std::size_t... l>(const Views& p, std::index_sequence<l...>) {
          ((this->*forward_table_()[F::block(m, static_cast<int>(l)).bits])(p, static_cast<int>(l)), ...);
        });
  }

  /// Run-time structure through the whole-model table (2^n entries; small n only).
  T forward_whole_model(mask_type m, std::span<const T> params, MatView<const T> x,
                        std::span<const std::int32_t> labels) requires(F::gates <= max_whole_model_gates) {
    static constexpr auto table = make_table(
        structure_variants<F>{}, []<std::size_t B>() { return &MlpModel::forward<Structure<F, B>>; });
    return (this->*table[m.bits()])(params, x, labels);
  }

  /// Gradient of the last forward's loss, asynchronous on backend().stream(); params and
  /// grads in device memory. Contract: writes (=) every element of grads; the parameters
  /// of skipped blocks receive exact zeros.
  void backward(std::span<const T> params, std::span<T> grads) {
    check_size(grads.size(), "gradient");
    if (batch_ == 0) throw RuntimeError("cuda::MlpModel::backward called before forward");
    ADDITIVE_CUDA_CHECK(cudaMemsetAsync(grads.data(), 0, grads.size() * sizeof(T), backend_.stream()));
    const Views p(config_, L, const_span(params));
    const GradViews g(config_, L, grads);
    head_backward(p, g);
    for (int l = L - 1; l >= 0; --l) (this->*backward_table_()[F::block(mask_, l).bits])(p, g, l);
    embed_backward(g);
  }

 private:
  using Views = MlpParamViews<const T>;
  using GradViews = MlpParamViews<T>;
  using BlockForward = void (MlpModel::*)(const Views&, int);
  using BlockBackward = void (MlpModel::*)(const Views&, const GradViews&, int);

  // Per-block tables, one entry per gate pattern of a block (2^k). Built where the class
  // is complete; constant-initialised, so there is no run-time set-up.
  static const auto& forward_table_() {
    static constexpr auto table = make_table(
        block_variants<F>{}, []<std::size_t B>() -> BlockForward { return &MlpModel::block_forward<B>; });
    return table;
  }
  static const auto& backward_table_() {
    static constexpr auto table = make_table(
        block_variants<F>{}, []<std::size_t B>() -> BlockBackward { return &MlpModel::block_backward<B>; });
    return table;
  }

  static std::span<const T> const_span(std::span<const T> s) { return s; }

  void check_size(std::size_t n, const char* what) const {
    if (n != layout_.total())
      throw RuntimeError(std::string("cuda::MlpModel: ") + what + " buffer has " + std::to_string(n) +
                         " elements, the layout has " + std::to_string(layout_.total()));
  }

  template <class Blocks>
  T run_forward(mask_type m, std::span<const T> params, MatView<const T> x,
                std::span<const std::int32_t> labels, Blocks&& blocks) {
    check_size(params.size(), "parameter");
    if (x.rows != config_.in_dim)
      throw InputError("input has " + std::to_string(x.rows) + " features, the model expects " +
                       std::to_string(config_.in_dim));
    if (x.cols < 1 || static_cast<Index>(labels.size()) != x.cols)
      throw InputError("batch of " + std::to_string(x.cols) + " inputs has " + std::to_string(labels.size()) +
                       " labels");
    for (std::size_t i = 0; i < labels.size(); ++i)
      if (labels[i] < 0 || labels[i] >= config_.classes)
        throw InputError("label " + std::to_string(labels[i]) + " of sample " + std::to_string(i) +
                         " is outside [0, " + std::to_string(config_.classes) + ")");
    mask_ = m;
    x_ = x;
    cuts_ = F::stream_cuts(m);
    ensure_workspace(x.cols);
    ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(labels_.data(), labels.data(), labels.size() * sizeof(std::int32_t),
                                        cudaMemcpyHostToDevice, backend_.stream()));
    const Views p(config_, L, params);

    // Embedding: one stream, stored as level 0, shard 0.  (d, batch)
    level_[0] = 0;
    backend_.gemm_tn(stream(0, 0), p.embed_t, x, T(1), T(0));
    backend_.add_bias(stream(0, 0), p.embed_b);

    blocks(p, std::make_index_sequence<L>{});

    // Final per-stream norm and head; logits averaged over the S shards.  (classes, batch)
    const auto finals = intervals_from_cuts<S>(cuts_[L]);
    bool first = true;
    for (const Segment s : finals) {
      const auto yn = final_input(s.first);
      if constexpr (F::final_norm == FinalNorm::per_stream)
        backend_.layernorm(stream(L, s.first), p.final_w, p.final_b, final_input(s.first),
                           final_mean_[idx(s.first)].data(), final_rstd_[idx(s.first)].data(),
                           T(config_.norm_eps));
      backend_.gemm_tn(view(logits_), p.head_t, yn, T(s.size) / T(S), first ? T(0) : T(1));
      first = false;
    }
    backend_.add_bias(view(logits_), p.head_b);
    // Labels were validated on the host above; the copy is ordered before this kernel.
    return backend_.softmax_xent(view(logits_), labels_.data(), view(dlogits_));
  }

  /// One block, its gates a constant. Skipped block: nothing is computed.
  template <std::uint64_t Bits>
  void block_forward(const Views& p, int l) {
    constexpr Gates gates{Bits};
    if constexpr (!gates.residual()) {
      level_[idx(l + 1)] = level_[idx(l)];
    } else {
      level_[idx(l + 1)] = l + 1;
      const auto& bp = p.blocks[idx(l)];
      const Index hs = shard_width();
      const auto inputs = intervals_from_cuts<S>(cuts_[idx(l)]);
      auto u = view(u_[idx(l)]);   // (h, batch) pre-activations
      auto hb = view(h_[idx(l)]);  // (h, batch) activations
      // One norm and one up-projection GEMM per distinct input stream (K = d).
      for (const Segment s : inputs) {
        auto xn = view(xn_[slot(l, s.first)]);  // (d, batch)
        backend_.layernorm(stream(l, s.first), bp.norm_w, bp.norm_b, xn, mean_[slot(l, s.first)].data(),
                           rstd_[slot(l, s.first)].data(), T(config_.norm_eps));
        auto us = u.rows_range(s.first * hs, s.size * hs);  // (|I| hs, batch)
        backend_.gemm_tn(us, bp.up_t.cols_range(s.first * hs, s.size * hs), xn, T(1), T(0));
        backend_.bias_gelu(us, bp.up_b + s.first * hs, hb.rows_range(s.first * hs, s.size * hs));
      }
      // One down-projection GEMM per segment (K = |G| hs), scaled by S/|G|.
      constexpr auto segments = gates.segments();
      for (const Segment g : segments) {
        auto z = view(z_);  // (d, batch)
        backend_.gemm_tn(z, bp.down_t.rows_range(g.first * hs, g.size * hs),
                         hb.rows_range(g.first * hs, g.size * hs), T(S) / T(g.size), T(0));
        // Output streams: the pieces of the segment cut by the input streams.
        for (const Segment s : inputs) {
          const int first = std::max(s.first, g.first);
          if (first >= std::min(s.last(), g.last())) continue;
          backend_.residual_add(stream(l, s.first), z, bp.down_b, stream(l + 1, first));
        }
      }
    }
  }

  /// Backward of one block. Contract: writes (=) the gradient of its input streams,
  /// accumulates (+=) into its parameter gradients.
  template <std::uint64_t Bits>
  void block_backward(const Views& p, const GradViews& g, int l) {
    constexpr Gates gates{Bits};
    if constexpr (gates.residual()) {  // a skipped block passes dY through: same buffers
      const auto& bp = p.blocks[idx(l)];
      const auto& gp = g.blocks[idx(l)];
      const Index hs = shard_width();
      const auto inputs = intervals_from_cuts<S>(cuts_[idx(l)]);
      const auto outputs = intervals_from_cuts<S>(cuts_[idx(l + 1)]);
      // Residual path: dX_s = sum of dY_O over the output streams O inside input stream s.
      for (const Segment s : inputs) {
        bool first = true;
        for (const Segment o : outputs)
          if (o.first >= s.first && o.first < s.last()) {
            backend_.axpby(dstream(l + 1, o.first), T(1), dstream(l, s.first), !first);
            first = false;
          }
      }
      auto hb = view(h_[idx(l)]);
      auto dh = view(dh_);  // (h, batch)
      constexpr auto segments = gates.segments();
      for (const Segment seg : segments) {
        auto dz = view(dz_);  // (d, batch): dZ_G = sum of dY_O over O inside G
        bool first = true;
        for (const Segment o : outputs)
          if (o.first >= seg.first && o.first < seg.last()) {
            backend_.axpby(dstream(l + 1, o.first), T(1), dz, !first);
            first = false;
          }
        const T scale = T(S) / T(seg.size);
        backend_.add_row_sums(dz, gp.down_b);
        backend_.gemm_nt(gp.down_t.rows_range(seg.first * hs, seg.size * hs),
                         hb.rows_range(seg.first * hs, seg.size * hs), dz, scale, T(1));
        backend_.gemm_nn(dh.rows_range(seg.first * hs, seg.size * hs),
                         bp.down_t.rows_range(seg.first * hs, seg.size * hs), dz, scale, T(0));
      }
      backend_.gelu_backward(view(u_[idx(l)]), dh, dh);  // dh now holds dU
      backend_.add_row_sums(dh, gp.up_b);
      for (const Segment s : inputs) {
        auto du = dh.rows_range(s.first * hs, s.size * hs);  // (|I| hs, batch)
        auto xn = view(xn_[slot(l, s.first)]);
        auto dxn = view(dxn_);  // (d, batch)
        backend_.gemm_nt(gp.up_t.cols_range(s.first * hs, s.size * hs), xn, du, T(1), T(1));
        backend_.gemm_nn(dxn, bp.up_t.cols_range(s.first * hs, s.size * hs), du, T(1), T(0));
        backend_.layernorm_backward(stream(l, s.first), bp.norm_w, mean_[slot(l, s.first)].data(),
                                    rstd_[slot(l, s.first)].data(), dxn, dstream(l, s.first), gp.norm_w,
                                    gp.norm_b);
      }
    }
  }

  void head_backward(const Views& p, const GradViews& g) {
    auto dlogits = view(dlogits_);  // (classes, batch)
    backend_.add_row_sums(dlogits, g.head_b);
    for (const Segment s : intervals_from_cuts<S>(cuts_[L])) {
      const T weight = T(s.size) / T(S);
      backend_.gemm_nt(g.head_t, final_input(s.first), dlogits, weight, T(1));
      auto dy = dstream(L, s.first);  // (d, batch)
      if constexpr (F::final_norm == FinalNorm::per_stream) {
        auto dyn = view(dxn_);  // (d, batch)
        backend_.gemm_nn(dyn, p.head_t, dlogits, weight, T(0));
        backend_.fill(dy, T(0));
        backend_.layernorm_backward(stream(L, s.first), p.final_w, final_mean_[idx(s.first)].data(),
                                    final_rstd_[idx(s.first)].data(), dyn, dy, g.final_w, g.final_b);
      } else {
        backend_.gemm_nn(dy, p.head_t, dlogits, weight, T(0));
      }
    }
  }

  void embed_backward(const GradViews& g) {
    auto de = dstream(0, 0);  // (d, batch)
    backend_.gemm_nt(g.embed_t, x_, de, T(1), T(1));
    backend_.add_row_sums(de, g.embed_b);
  }

  // ---- workspace ----

  static constexpr std::size_t idx(int i) noexcept { return static_cast<std::size_t>(i); }
  static constexpr std::size_t slot(int level, int shard) noexcept { return idx(level * S + shard); }
  /// A (rows, cols) matrix in device memory.
  struct DeviceMat {
    DeviceBuffer<T> buffer;
    Index rows = 0;
    Index cols = 0;
    DeviceMat() = default;
    DeviceMat(Index r, Index c) : buffer(static_cast<std::size_t>(r * c)), rows(r), cols(c) {}
  };
  static MatView<T> view(DeviceMat& m) { return MatView<T>(m.buffer.data(), m.rows, m.cols); }
  static MatView<const T> view(const DeviceMat& m) {
    return MatView<const T>(m.buffer.data(), m.rows, m.cols);
  }

  /// Stream starting at `shard` entering block `level` (level L: after the last block).
  /// Skipped blocks alias the buffers of the level before them.
  MatView<T> stream(int level, int shard) { return view(streams_[slot(level_[idx(level)], shard)]); }
  MatView<T> dstream(int level, int shard) { return view(dstreams_[slot(level_[idx(level)], shard)]); }
  /// What the head reads for the final stream starting at `shard`: its norm, or the stream.
  MatView<T> final_input(int shard) {
    if constexpr (F::final_norm == FinalNorm::per_stream)
      return view(final_xn_[idx(shard)]);
    else
      return stream(L, shard);
  }

  void ensure_workspace(Index batch) {
    if (batch == batch_) return;
    const auto d = config_.d;
    const auto h = config_.h;
    // Free the old workspace first (the peak is one batch size's, not two); batch_ = 0
    // until the new one is complete, so an allocation failure leaves no half workspace.
    batch_ = 0;
    for (auto* v : {&streams_, &dstreams_, &xn_, &u_, &h_, &final_xn_}) v->clear();
    for (auto* v : {&mean_, &rstd_, &final_mean_, &final_rstd_}) v->clear();
    for (auto* m : {&logits_, &dlogits_, &z_, &dz_, &dxn_, &dh_}) *m = DeviceMat{};
    labels_ = DeviceBuffer<std::int32_t>{};
    auto mats = [](std::size_t n, Index rows, Index cols) {
      std::vector<DeviceMat> v;
      v.reserve(n);
      for (std::size_t i = 0; i < n; ++i) v.emplace_back(rows, cols);
      return v;
    };
    auto vecs = [](std::size_t n, Index len) {
      std::vector<DeviceBuffer<T>> v;
      v.reserve(n);
      for (std::size_t i = 0; i < n; ++i) v.emplace_back(static_cast<std::size_t>(len));
      return v;
    };
    streams_ = mats(slot(L + 1, 0), d, batch);
    dstreams_ = mats(slot(L + 1, 0), d, batch);
    xn_ = mats(slot(L, 0), d, batch);
    mean_ = vecs(slot(L, 0), batch);
    rstd_ = vecs(slot(L, 0), batch);
    u_ = mats(idx(L), h, batch);
    h_ = mats(idx(L), h, batch);
    final_xn_ = mats(idx(S), d, batch);
    final_mean_ = vecs(idx(S), batch);
    final_rstd_ = vecs(idx(S), batch);
    logits_ = DeviceMat(config_.classes, batch);
    dlogits_ = DeviceMat(config_.classes, batch);
    z_ = DeviceMat(d, batch);
    dz_ = DeviceMat(d, batch);
    dxn_ = DeviceMat(d, batch);
    dh_ = DeviceMat(h, batch);
    labels_ = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(batch));
    batch_ = batch;
  }

  MlpConfig config_;
  ParamLayout layout_;
  Backend<T> backend_;

  mask_type mask_{};
  MatView<const T> x_{};
  std::array<std::uint64_t, L + 1> cuts_{};
  std::array<int, L + 1> level_{};  // which level's buffers hold the streams entering block l
  Index batch_ = 0;
  // Device workspace for one batch size (allocated on the first forward of that size).
  std::vector<DeviceMat> streams_, dstreams_, xn_, u_, h_, final_xn_;
  std::vector<DeviceBuffer<T>> mean_, rstd_, final_mean_, final_rstd_;
  DeviceMat logits_, dlogits_, z_, dz_, dxn_, dh_;
  DeviceBuffer<std::int32_t> labels_;
};

}  // namespace additive::cuda
