// The sharded MLP family, forward and backward of every structure, written ONCE over a
// backend: cpu::MlpModel (Eigen) and cuda::MlpModel (cuBLASLt + kernels) are this class
// with different `Ops`. Each block's gate pattern is a template parameter, so a block's
// plan (which GEMMs, on which slices, at which scale) is straight-line code; run-time
// masks reach those plans through per-block tables (L * 2^k plans) or, for small n, a
// whole-model table of 2^n entries. The stream partition entering a block depends on the
// earlier blocks and is a run-time value (it is a constant too on the whole-model path).
//
// What differs per backend lives in `Ops` (see MlpModelOps below): the workspace buffer
// types, the zero fill of the gradient buffer, the workspace reservation, the per-forward
// preparation (the bf16 weight copy on CUDA) and the GEMM + bias pair (one fused cuBLASLt
// call on CUDA, the backend's two calls on the CPU). The backend's primitives themselves
// (gemm_tn, layernorm, softmax_xent, ...) have the same names and shapes on both sides.
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "additive/core/concepts.hpp"
#include "additive/core/dispatch.hpp"
#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"
#include "additive/nn/cost.hpp"
#include "additive/nn/mlp.hpp"
#include "additive/nn/model.hpp"

namespace additive {

/// What BasicMlpModel needs from a backend adapter besides the backend's primitives.
/// `matrix` / `vector` own workspace memory where the backend computes (host or device);
/// `zero` writes zeros into a gradient buffer, ordered with the backend's work;
/// `reserve` sizes the backend's own per-batch buffers; `prepare` runs once per forward
/// before the first GEMM (the CUDA bf16 mode casts the fp32 master weights there);
/// `gemm_tn_bias` is `gemm_tn(c, a, b, alpha, beta)` followed by `c += bias` per row.
template <class Ops, class T>
concept MlpModelOps = requires(typename Ops::backend_type& be, typename Ops::matrix& m,
                               typename Ops::vector& v, std::span<T> g, std::span<const T> p, MatView<T> c,
                               MatView<const T> a, const MlpConfig& config) {
  { Ops::make_matrix(Index{}, Index{}) } -> std::same_as<typename Ops::matrix>;
  { Ops::make_vector(Index{}) } -> std::same_as<typename Ops::vector>;
  { Ops::data(m) } -> std::same_as<T*>;
  { Ops::data(v) } -> std::same_as<T*>;
  Ops::zero(be, g);
  Ops::reserve(be, config, Index{}, std::size_t{});
  Ops::prepare(be, p);
  Ops::gemm_tn_bias(be, c, a, a, T{}, T{}, static_cast<const T*>(nullptr));
};

template <Family F, class T, class Ops>
requires MlpModelOps<Ops, T> && Backend<typename Ops::backend_type>
class BasicMlpModel {
  static constexpr int S = F::shards;
  static constexpr int L = F::blocks;
  using Gates = typename F::block_gates;

 public:
  using family = F;
  using scalar_type = T;
  using mask_type = typename F::mask_type;
  using ops_type = Ops;
  using backend_type = typename Ops::backend_type;
  using config_type = MlpConfig;
  /// The same model in scalar U on the same backend (the search's float64 probes).
  template <class U>
  using rebind = BasicMlpModel<F, U, typename Ops::template rebind<U>>;

  /// The seeded initialisation of docs/design-notes.md (writes every element of `params`).
  static void init_params(const MlpConfig& config, std::uint64_t seed, std::span<T> params) {
    init_mlp_params<T>(config, L, seed, params);
  }
  /// What structure m costs at a batch, counted from the plan the model executes
  /// (communication in elements of sizeof(T) bytes).
  static StructureCost cost(const MlpConfig& config, mask_type m, Index batch) {
    return mlp_cost<F>(config, m, batch, static_cast<int>(sizeof(T)));
  }

  /// backend_args construct the backend (CPU: the thread count; CUDA: nothing, or a stream).
  template <class... BackendArgs>
  explicit BasicMlpModel(const MlpConfig& config, BackendArgs&&... backend_args)
      : config_(config),
        layout_((config.validate(S), mlp_layout(config, L, S))),
        backend_(std::forward<BackendArgs>(backend_args)...) {}

  [[nodiscard]] const MlpConfig& config() const noexcept { return config_; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] backend_type& backend() noexcept { return backend_; }
  [[nodiscard]] Index shard_width() const noexcept { return config_.h / S; }
  /// Rows of one input column (features per sample).
  [[nodiscard]] Index input_dim() const noexcept { return config_.in_dim; }
  /// Logits per sample.
  [[nodiscard]] Index num_classes() const noexcept { return config_.classes; }

  /// Logits of the last forward pass: (classes, batch), where the backend computes.
  [[nodiscard]] MatView<const T> logits() const noexcept { return view(logits_); }
  /// The structure of the last forward pass.
  [[nodiscard]] mask_type mask() const noexcept { return mask_; }
  /// The largest batch the workspace holds without allocating.
  [[nodiscard]] Index capacity() const noexcept { return capacity_; }

  /// Sizes the workspace (and the backend's per-batch buffers) for batches up to `batch`.
  /// Afterwards forward / backward of such batches allocate nothing. Grows, never shrinks.
  void reserve(Index batch) {
    if (batch < 1) throw InputError("reserve: batch must be >= 1, got " + std::to_string(batch));
    Ops::reserve(backend_, config_, batch, layout_.total());
    if (batch > capacity_) allocate(batch);
  }

  /// The ranges [begin, end) of the flat gradient that backward(params, grads, on_ready)
  /// reports, in the order it reports them: the final norm and head, blocks L-1 .. 0, the
  /// embedding. Contiguous, disjoint, covering the buffer once; the same for every mask.
  [[nodiscard]] std::vector<std::pair<std::size_t, std::size_t>> ready_ranges() const {
    std::vector<std::size_t> starts;  // of the embedding, block 0 .. L-1, the final norm
    starts.push_back(0);
    for (int l = 0; l < L; ++l)
      starts.push_back(layout_.find("blocks." + std::to_string(l) + ".norm.weight").offset);
    starts.push_back(layout_.find("final_norm.weight").offset);
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    ranges.emplace_back(starts.back(), layout_.total());
    for (std::size_t i = starts.size() - 1; i-- > 0;) ranges.emplace_back(starts[i], starts[i + 1]);
    return ranges;
  }

  // ---- forward: three ways to pick a structure, one computation ----

  /// Compile-time structure. x: (in_dim, batch), kept until backward(); labels: (batch),
  /// host memory. Returns the mean loss (on CUDA: waits for the stream) and keeps what
  /// backward() needs.
  template <class St>
  requires std::same_as<typename St::family, F> T forward(std::span<const T> params, MatView<const T> x,
                                                          std::span<const std::int32_t> labels) {
    check_labels(x, labels);
    reserve(x.cols);
    run_forward(St::mask, params, x, static_blocks<St>());
    return backend_.softmax_xent(view(logits_), labels, view(dlogits_));
  }

  /// Run-time structure through the per-block tables (2^k entries per block).
  T forward(mask_type m, std::span<const T> params, MatView<const T> x,
            std::span<const std::int32_t> labels) {
    check_labels(x, labels);
    reserve(x.cols);
    run_forward(m, params, x, table_blocks(m));
    return backend_.softmax_xent(view(logits_), labels, view(dlogits_));
  }

  /// Run-time structure through the whole-model table (2^n entries; small n only).
  T forward_whole_model(mask_type m, std::span<const T> params, MatView<const T> x,
                        std::span<const std::int32_t> labels) requires(F::gates <= max_whole_model_gates) {
    static constexpr auto table = make_table(
        structure_variants<F>{}, []<std::size_t B>() { return &BasicMlpModel::forward<Structure<F, B>>; });
    return (this->*table[m.bits()])(params, x, labels);
  }

  /// Asynchronous forward (backends with `Ops::asynchronous`, i.e. CUDA): everything is
  /// enqueued on the backend's stream, nothing waits, nothing is copied between host and
  /// device and nothing is allocated, so the call can be captured in a CUDA graph.
  /// Preconditions: reserve(x.cols) was called (else InputError, before any work); params,
  /// x, labels_device (batch int32 in [0, classes): an out-of-range label makes the loss
  /// and that sample's dlogits NaN, it is not checked on the host) and loss_device (one T)
  /// are device memory. *loss_device receives the mean loss.
  void forward_async(mask_type m, std::span<const T> params, MatView<const T> x,
                     const std::int32_t* labels_device, T* loss_device) requires(Ops::asynchronous) {
    check_reserved(x);
    run_forward(m, params, x, table_blocks(m));
    backend_.softmax_xent_async(view(logits_), labels_device, view(dlogits_), loss_device);
  }
  /// forward_async with a compile-time structure.
  template <class St>
  requires std::same_as<typename St::family, F>
  void forward_async(std::span<const T> params, MatView<const T> x, const std::int32_t* labels_device,
                     T* loss_device) requires(Ops::asynchronous) {
    check_reserved(x);
    run_forward(St::mask, params, x, static_blocks<St>());
    backend_.softmax_xent_async(view(logits_), labels_device, view(dlogits_), loss_device);
  }

  /// Gradient of the last forward's loss (params must be the forward's). Contract: writes
  /// (=) every element of grads; the parameters of skipped blocks receive exact zeros.
  void backward(std::span<const T> params, std::span<T> grads) {
    backward(params, grads, [](std::size_t, std::size_t) {});
  }

  /// backward() that reports, as soon as each piece is final, the range [begin, end) of
  /// the flat gradient buffer it covers: first the final norm + head, then blocks L-1 down
  /// to 0, then the embedding. The ranges are contiguous, disjoint and cover the buffer
  /// once (skipped blocks included: their zeros are final too), so a caller can start
  /// reducing each bucket while the rest of the backward runs. On an asynchronous backend
  /// (CUDA) on_ready runs when the range's kernels are ENQUEUED on backend().stream(), not
  /// finished: the caller must order its use after them on that stream (record an event
  /// there and make the communication stream wait on it).
  template <GradientReadyCallback OnReady>
  void backward(std::span<const T> params, std::span<T> grads, OnReady&& on_ready) {
    check_size(grads.size(), "gradient");
    if (batch_ == 0) throw RuntimeError("MlpModel::backward called before forward");
    Ops::zero(backend_, grads);
    const Views p(config_, L, const_span(params));
    const GradViews g(config_, L, grads);
    const auto offset = [&](const T* ptr) { return static_cast<std::size_t>(ptr - grads.data()); };
    head_backward(p, g);
    on_ready(offset(g.final_w), grads.size());
    for (int l = L - 1; l >= 0; --l) {
      (this->*backward_table_()[F::block(mask_, l).bits])(p, g, l);
      const T* end = l + 1 < L ? g.blocks[idx(l + 1)].norm_w : g.final_w;
      on_ready(offset(g.blocks[idx(l)].norm_w), offset(end));
    }
    embed_backward(g);
    on_ready(std::size_t{0}, offset(g.blocks[0].norm_w));
  }

 private:
  using Views = MlpParamViews<const T>;
  using GradViews = MlpParamViews<T>;
  using BlockForward = void (BasicMlpModel::*)(const Views&, int);
  using BlockBackward = void (BasicMlpModel::*)(const Views&, const GradViews&, int);

  // Per-block tables, one entry per gate pattern of a block (2^k). Built where the class
  // is complete; constant-initialised, so there is no run-time set-up.
  static const auto& forward_table_() {
    static constexpr auto table = make_table(block_variants<F>{}, []<std::size_t B>() -> BlockForward {
      return &BasicMlpModel::block_forward<B>;
    });
    return table;
  }
  static const auto& backward_table_() {
    static constexpr auto table = make_table(block_variants<F>{}, []<std::size_t B>() -> BlockBackward {
      return &BasicMlpModel::block_backward<B>;
    });
    return table;
  }

  template <class St>
  auto static_blocks() {
    return [this]<std::size_t... l>(const Views& p, std::index_sequence<l...>) {
      (this->template block_forward<F::block(St::mask, static_cast<int>(l)).bits>(p, static_cast<int>(l)),
       ...);
    };
  }
  auto table_blocks(mask_type m) {
    return [ this, m ]<std::size_t... l>(const Views& p, std::index_sequence<l...>) {
      ((this->*forward_table_()[F::block(m, static_cast<int>(l)).bits])(p, static_cast<int>(l)), ...);
    };
  }

  static std::span<const T> const_span(std::span<const T> s) { return s; }

  void check_size(std::size_t n, const char* what) const {
    if (n != layout_.total())
      throw RuntimeError(std::string("MlpModel: ") + what + " buffer has " + std::to_string(n) +
                         " elements, the layout has " + std::to_string(layout_.total()));
  }
  void check_input(MatView<const T> x) const { check_mlp_input(config_, x); }
  void check_labels(MatView<const T> x, std::span<const std::int32_t> labels) const {
    check_mlp_batch(config_, x, labels);
  }
  void check_reserved(MatView<const T> x) const {
    check_input(x);
    if (x.cols < 1 || x.cols > capacity_)
      throw InputError("forward_async: batch of " + std::to_string(x.cols) +
                       " exceeds the reserved workspace (" + std::to_string(capacity_) +
                       "); call reserve(batch) first, forward_async never allocates");
  }

  /// Everything up to the logits (classes, batch); the caller adds the loss.
  template <class Blocks>
  void run_forward(mask_type m, std::span<const T> params, MatView<const T> x, Blocks&& blocks) {
    check_size(params.size(), "parameter");
    mask_ = m;
    x_ = x;
    cuts_ = F::stream_cuts(m);
    batch_ = x.cols;  // the workspace holds it: reserve() or check_reserved() came first
    Ops::prepare(backend_, params);
    const Views p(config_, L, params);

    // Embedding: one stream, stored as level 0, shard 0.  (d, batch)
    level_[0] = 0;
    Ops::gemm_tn_bias(backend_, stream(0, 0), p.embed_t, x, T(1), T(0), p.embed_b);

    blocks(p, std::make_index_sequence<L>{});

    // Final per-stream norm and head; logits averaged over the S shards.  (classes, batch)
    // The head bias is added after the last segment's product.
    const auto finals = intervals_from_cuts<S>(cuts_[L]);
    for (int i = 0; i < finals.size(); ++i) {
      const Segment s = finals[i];
      const auto yn = final_input(s.first);
      if constexpr (F::final_norm == FinalNorm::per_stream)
        backend_.layernorm(stream(L, s.first), p.final_w, p.final_b, final_input(s.first),
                           Ops::data(final_mean_[idx(s.first)]), Ops::data(final_rstd_[idx(s.first)]),
                           T(config_.norm_eps));
      const T alpha = T(s.size) / T(S);
      const T beta = i == 0 ? T(0) : T(1);
      if (i + 1 == finals.size())
        Ops::gemm_tn_bias(backend_, view(logits_), p.head_t, yn, alpha, beta, p.head_b);
      else
        backend_.gemm_tn(view(logits_), p.head_t, yn, alpha, beta);
    }
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
        backend_.layernorm(stream(l, s.first), bp.norm_w, bp.norm_b, xn, Ops::data(mean_[slot(l, s.first)]),
                           Ops::data(rstd_[slot(l, s.first)]), T(config_.norm_eps));
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
        backend_.layernorm_backward(stream(l, s.first), bp.norm_w, Ops::data(mean_[slot(l, s.first)]),
                                    Ops::data(rstd_[slot(l, s.first)]), dxn, dstream(l, s.first), gp.norm_w,
                                    gp.norm_b);
      }
    }
  }

  /// Contract: accumulates (+=) into the head and final-norm gradients, writes (=) the
  /// gradients of the final streams.
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
        backend_.layernorm_backward(stream(L, s.first), p.final_w, Ops::data(final_mean_[idx(s.first)]),
                                    Ops::data(final_rstd_[idx(s.first)]), dyn, dy, g.final_w, g.final_b);
      } else {
        backend_.gemm_nn(dy, p.head_t, dlogits, weight, T(0));
      }
    }
  }

  /// Contract: accumulates (+=) into the embedding gradients.
  void embed_backward(const GradViews& g) {
    auto de = dstream(0, 0);  // (d, batch)
    backend_.gemm_nt(g.embed_t, x_, de, T(1), T(1));
    backend_.add_row_sums(de, g.embed_b);
  }

  // ---- workspace: (rows, capacity) buffers seen as (rows, batch) ----

  struct Work {
    typename Ops::matrix buffer{};
    Index rows = 0;
  };

  static constexpr std::size_t idx(int i) noexcept { return static_cast<std::size_t>(i); }
  static constexpr std::size_t slot(int level, int shard) noexcept { return idx(level * S + shard); }
  MatView<T> view(Work& m) { return MatView<T>(Ops::data(m.buffer), m.rows, batch_); }
  MatView<const T> view(const Work& m) const {
    return MatView<const T>(Ops::data(const_cast<typename Ops::matrix&>(m.buffer)), m.rows, batch_);
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

  void allocate(Index capacity) {
    const auto d = config_.d;
    const auto h = config_.h;
    // Free the old workspace first (the peak is one size's, not two); capacity_ = 0 and
    // batch_ = 0 until the new one is complete, so a failed allocation leaves none.
    capacity_ = 0;
    batch_ = 0;
    for (auto* v : {&streams_, &dstreams_, &xn_, &u_, &h_, &final_xn_}) v->clear();
    for (auto* v : {&mean_, &rstd_, &final_mean_, &final_rstd_}) v->clear();
    for (auto* m : {&logits_, &dlogits_, &z_, &dz_, &dxn_, &dh_}) *m = Work{};
    auto mat = [capacity](Index rows) { return Work{Ops::make_matrix(rows, capacity), rows}; };
    auto mats = [&](std::size_t n, Index rows) {
      std::vector<Work> v;
      v.reserve(n);
      for (std::size_t i = 0; i < n; ++i) v.push_back(mat(rows));
      return v;
    };
    auto vecs = [capacity](std::size_t n) {
      std::vector<typename Ops::vector> v;
      v.reserve(n);
      for (std::size_t i = 0; i < n; ++i) v.push_back(Ops::make_vector(capacity));
      return v;
    };
    streams_ = mats(slot(L + 1, 0), d);
    dstreams_ = mats(slot(L + 1, 0), d);
    xn_ = mats(slot(L, 0), d);
    mean_ = vecs(slot(L, 0));
    rstd_ = vecs(slot(L, 0));
    u_ = mats(idx(L), h);
    h_ = mats(idx(L), h);
    final_xn_ = mats(idx(S), d);
    final_mean_ = vecs(idx(S));
    final_rstd_ = vecs(idx(S));
    logits_ = mat(config_.classes);
    dlogits_ = mat(config_.classes);
    z_ = mat(d);
    dz_ = mat(d);
    dxn_ = mat(d);
    dh_ = mat(h);
    capacity_ = capacity;
  }

  MlpConfig config_;
  ParamLayout layout_;
  backend_type backend_;

  mask_type mask_{};
  MatView<const T> x_{};
  std::array<std::uint64_t, L + 1> cuts_{};
  std::array<int, L + 1> level_{};  // which level's buffers hold the streams entering block l
  Index batch_ = 0;                 // the last forward's batch (0: no forward yet)
  Index capacity_ = 0;              // the batch the workspace is sized for
  std::vector<Work> streams_, dstreams_, xn_, u_, h_, final_xn_;
  std::vector<typename Ops::vector> mean_, rstd_, final_mean_, final_rstd_;
  Work logits_, dlogits_, z_, dz_, dxn_, dh_;
};

}  // namespace additive
