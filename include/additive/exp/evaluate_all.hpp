// Every structure of a family evaluated on the same (shared) weights, by walking the tree
// of shared prefixes (docs/evaluate-all.md). Structures that agree on blocks 1..l share
// every activation up to block l; inside a block, the up-projection of a stream is shared
// by every structure that reads that stream, the per-shard down-projection B_j H_j by every
// segment over that shard (a segment only adds them, once per (segment, feeding streams)
// node and column tile; each output of the node then adds its own input stream), an output
// piece by every structure with the same (stream, segment, feeding streams), and the final
// norm and head by every structure with the same final stream. Distinct streams that use
// the same weight slice sit side by side along the batch and go through one GEMM. The
// GEMMs and norms are the backend's (cpu::CpuBackend) or the same expressions, grouped
// differently from cpu::MlpModel, so the results agree with it to rounding.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "additive/core/error.hpp"
#include "additive/core/structure.hpp"
#include "additive/cpu/backend.hpp"
#include "additive/cpu/mlp_model.hpp"
#include "additive/data/dataset.hpp"
#include "additive/exp/progress.hpp"
#include "additive/nn/mlp.hpp"

namespace additive {

struct StructureEval {
  std::uint64_t mask = 0;
  double loss = 0;
  double accuracy = 0;
};

enum class EvalMethod { prefix_tree, naive };

struct EvalAllOptions {
  int threads = 1;
  Index chunk = 256;
  EvalMethod method = EvalMethod::prefix_tree;
  bool show_progress = false;
};

/// GEMM FLOPs (2*M*N*K summed) of one forward pass over all structures, per sample.
/// The element-wise work (norms, GELU, residual adds, softmax) is not counted.
struct EvalFlops {
  double naive = 0;  ///< one cpu::MlpModel forward per structure
  double tree = 0;   ///< the prefix-tree plan
  [[nodiscard]] double ratio() const noexcept { return tree > 0 ? naive / tree : 0; }
};

namespace cpu {

/// Logits of every structure in a list for one input batch, computed with all shared
/// work done once. Build once per mask list (the plan), call forward() per batch.
template <Family F, class T>
class PrefixTreeForward {
  static constexpr int S = F::shards;
  static constexpr int L = F::blocks;
  using mask_type = typename F::mask_type;

 public:
  /// Throws InputError for an empty mask list or a mask with bits beyond the family's gates.
  PrefixTreeForward(const MlpConfig& config, const std::vector<std::uint64_t>& masks, int threads = 1)
      : config_((config.validate(S), config)), layout_(mlp_layout(config, L)), backend_(threads) {
    if (masks.empty()) throw InputError("evaluate_structures: no structures to evaluate");
    build_plan(masks);
  }

  [[nodiscard]] std::size_t size() const noexcept { return logits_of_.size(); }
  [[nodiscard]] CpuBackend<T>& backend() noexcept { return backend_; }
  /// Logits of structure i (its position in the mask list) of the last forward: (classes, batch).
  [[nodiscard]] MatView<const T> logits(std::size_t i) const {
    const auto& m = logits_[static_cast<std::size_t>(logits_of_[i])];
    return MatView<const T>(m.data(), m.rows(), m.cols());
  }
  /// Structures with the same final streams have one logits buffer: its index, for structure i.
  [[nodiscard]] int logits_id(std::size_t i) const noexcept { return logits_of_[i]; }
  [[nodiscard]] std::size_t distinct_logits() const noexcept { return finals_.size(); }
  /// Distinct stream values the plan computes (the embedding included).
  [[nodiscard]] int values() const noexcept { return values_; }

  /// GEMM FLOPs per sample of the naive method and of this plan.
  [[nodiscard]] EvalFlops flops() const noexcept { return flops_; }
  /// The part of flops().tree spent in the head (computed outside the backend, so not in
  /// backend().counters()): one head product per final stream held in memory, per input
  /// stream of the last block that a final stream reads and per last-block node; with the
  /// final norm also one d-long dot product per final stream the last block outputs.
  [[nodiscard]] double head_flops() const noexcept {
    const double d = double(config_.d);
    const double products = double(final_stored_.size() + final_inputs_.size() + final_nodes_.size());
    const double dots = F::final_norm == FinalNorm::per_stream ? double(final_pairs_) : 0.0;
    return 2.0 * double(config_.classes) * d * products + 2.0 * d * dots;
  }

  /// Takes the parameters for the following forward(x) calls: the weight slices the plan
  /// multiplies are packed for the GEMM kernel here, once, instead of once per batch. Keeps
  /// a view of `params` (norms, biases, head): they must stay alive and unchanged until the
  /// last forward(x), or until set_params is called again.
  void set_params(std::span<const T> params) {
    if (params.size() != layout_.total())
      throw InputError("evaluate_structures: parameter buffer has " + std::to_string(params.size()) +
                       " elements, the layout has " + std::to_string(layout_.total()));
    params_ = params;
    const MlpParamViews<const T> p(config_, L, params);
    const Index hs = config_.h / S;
    backend_.pack_tn(embed_pack_, p.embed_t);
    up_pack_.resize(idx(L));
    down_pack_.resize(idx(L));
    for (int l = 0; l < L; ++l) {
      const auto& bp = p.blocks[idx(l)];
      const auto& plan = blocks_[idx(l)];
      up_pack_[idx(l)].resize(plan.ups.size());
      for (std::size_t g = 0; g < plan.ups.size(); ++g) {
        const auto& iv = plan.ups[g].interval;
        backend_.pack_tn(up_pack_[idx(l)][g], bp.up_t.cols_range(iv.first * hs, iv.size * hs));
      }
      down_pack_[idx(l)].resize(idx(S));
      for (int j = 0; j < S; ++j)  // packed only where a stream covers shard j
        if (std::any_of(plan.ups.begin(), plan.ups.end(), [j](const UpGroup& u) {
              return u.interval.first <= j && j < u.interval.first + u.interval.size;
            }))
          backend_.pack_tn(down_pack_[idx(l)][idx(j)], bp.down_t.rows_range(j * hs, hs));
    }
  }

  /// set_params(params), then forward(x).
  void forward(std::span<const T> params, MatView<const T> x) {
    set_params(params);
    forward(x);
  }

  /// x: (in_dim, batch), with the parameters of the last set_params(). Afterwards
  /// logits(i) holds the logits of structure i, and, when `labels` (one per sample) are
  /// given, score(i) its loss and correct predictions on them (computed tile by tile while
  /// the logits are in cache).
  void forward(MatView<const T> x, std::span<const std::int32_t> labels = {}) {
    if (params_.empty()) throw RuntimeError("PrefixTreeForward::forward(x) called before set_params");
    const std::span<const T> params = params_;
    if (x.rows != config_.in_dim)
      throw InputError("input has " + std::to_string(x.rows) + " features, the model expects " +
                       std::to_string(config_.in_dim));
    if (x.cols < 1) throw InputError("evaluate_structures: empty input batch");
    const Index n = x.cols;
    if (!labels.empty()) {
      if (static_cast<Index>(labels.size()) != n)
        throw InputError("evaluate_structures: " + std::to_string(labels.size()) + " labels for " +
                         std::to_string(n) + " samples");
      for (const auto y : labels)
        if (y < 0 || y >= config_.classes)
          throw InputError("evaluate_structures: label " + std::to_string(y) + " outside [0, " +
                           std::to_string(config_.classes) + ")");
    }
    ensure_workspace(n);
    const MlpParamViews<const T> p(config_, L, params);
    const T eps = T(config_.norm_eps);
    const Index hs = config_.h / S;

    backend_.gemm_tn(view(vals_[0]), embed_pack_, x, T(1), T(0));
    backend_.add_bias(view(vals_[0]), p.embed_b);

    for (int l = 0; l < L; ++l) {
      const auto& bp = p.blocks[idx(l)];
      auto& plan = blocks_[idx(l)];
      auto& ws = block_ws_[idx(l)];
      // Norm of every input stream into its group; one up-projection GEMM per interval.
      for (std::size_t g = 0; g < plan.ups.size(); ++g) {
        const auto& up = plan.ups[g];
        auto xn = view(ws.xn[g]);
        auto hb = view(ws.h[g]);
        for (std::size_t k = 0; k < up.values.size(); ++k)
          backend_.layernorm(view(vals_[idx(up.values[k])]), bp.norm_w, bp.norm_b,
                             xn.cols_range(Index(k) * n, n), mean_.data(), rstd_.data(), eps);
        backend_.gemm_tn(hb, up_pack_[idx(l)][g], xn, T(1), T(0));
        backend_.bias_gelu(hb, bp.up_b + up.interval.first * hs, hb);
      }
      // Down-projection per shard: P_j = B_j H_j for every input stream and shard j of it,
      // one GEMM per (interval, shard) over all the streams of that interval.
      for (std::size_t g = 0; g < plan.ups.size(); ++g) {
        const auto& up = plan.ups[g];
        const auto hb = view(ws.h[g]);
        for (int j = 0; j < up.interval.size; ++j)
          backend_.gemm_tn(view(ws.p[g][idx(j)]), down_pack_[idx(l)][idx(up.interval.first + j)],
                           hb.rows_range(Index(j) * hs, hs), T(1), T(0));
      }
      // Output streams, once per distinct (input stream, segment, streams feeding it):
      // Y = X_s + (S/|G|) sum_{j in G} P_j + b. The last block's are final streams: they
      // are computed tile by tile with the head below, never stored.
      if (l == L - 1) continue;
      // Z_G = sum_{j in G} P_j once per (segment, feeding streams) node and column tile,
      // in cache, then every output of the node adds its own input stream to it.
      const auto& bias = bp.down_b;
      parallel_tasks(backend_.threads(), task_count(n), [&](Index t) {
        const Index j0 = t * column_task;
        const Index nj = std::min(column_task, n - j0);
        T* const z = z_tile_[idx(int(t))].data();
        auto& terms = tile_terms_[idx(int(t))];
        for (const auto& no : plan.node_outs) {
          collect_terms(plan, ws, no.zgroup, no.znode, n, terms);
          const T* const zs = sum_terms(terms, j0, nj, z);
          const T scale = T(S) / T(plan.zs[idx(no.zgroup)].seg.size);
          for (const int oi : no.outs) {
            const auto& o = plan.outs[idx(oi)];
            auto y = view(vals_[idx(o.output)]);
            add_input(zs, MatView<const T>(view(vals_[idx(o.input)])), scale, bias, j0, nj, &y(0, j0), y.ld);
          }
        }
      });
    }

    // Final norm and head once per distinct final stream, then logits of each structure
    // = sum over its final streams of (|s|/S) * head(stream) + bias. Fused per column tile
    // (fixed tiles, one task each) so a tile's normed streams stay in cache for the head.
    const Index classes = config_.classes;
    const Index tasks = task_count(n);
    {
      const auto head_t = map(MatView<const T>(p.head_t));  // (d, classes)
      head_w_ = head_t;
      head_beta_.assign(idx(int(classes)), T(0));
      if constexpr (F::final_norm == FinalNorm::per_stream)
        for (Index cl = 0; cl < classes; ++cl)
          for (Index r = 0; r < config_.d; ++r) {
            head_w_(r, cl) *= p.final_w[r];
            head_beta_[idx(int(cl))] += head_t(r, cl) * p.final_b[r];
          }
    }
    parallel_tasks(backend_.threads(), tasks, [&](Index t) {
      const Index j0 = t * column_task;
      const Index nj = std::min(column_task, n - j0);
      auto& yn = tile_[static_cast<std::size_t>(t)];
      yn.resize(config_.d, nj);
      const auto head_t = map(MatView<const T>(p.head_t));  // (d, classes)
      // The head as (tile, d) x (d, classes): a GEMM whose M is the tile, not the few classes.
      auto ht = tile_head_[static_cast<std::size_t>(t)].topRows(nj);
      auto& terms = tile_terms_[static_cast<std::size_t>(t)];
      const auto& last = blocks_[idx(L - 1)];
      const auto& last_ws = block_ws_[idx(L - 1)];
      const auto head_of = [&](std::size_t k, MatView<const T> v) {
        auto dst = map(view(head_).block(0, Index(k) * n + j0, classes, nj));
        if constexpr (F::final_norm == FinalNorm::per_stream) {
          final_norm(v, p.final_w, p.final_b, yn, eps);
          ht.noalias() = yn.transpose() * head_t;
        } else {
          ht.noalias() = map(v).transpose() * head_t;
        }
        dst = ht.transpose();
      };
      for (const int k : final_stored_)
        head_of(idx(k), MatView<const T>(view(vals_[idx(final_values_[idx(k)])])).cols_range(j0, nj));
      // The last block's outputs Y = u + c Z (u = X_s + b: input stream plus bias; Z: the
      // node's sum; c = S/|G|) are final streams, and norm and head are affine in Y given the
      // column's mean and variance:
      //   head(norm(Y)) = rstd * (W'(u - mean u) + c W'(Z - mean Z)) + W beta,  W' = W diag(w)
      //   var(Y) = var(u) + c^2 var(Z) + 2c <u - mean u, Z - mean Z> / d
      // so W'u and var(u) are computed once per input stream, W'Z and var(Z) once per node,
      // and a (stream, node) pair costs one d-long dot product instead of a residual add,
      // a norm and a head product. Centred vectors keep the variance free of cancellation.
      // Without the final norm the head is linear: head(Y) = W u + c W Z.
      constexpr bool normed = F::final_norm == FinalNorm::per_stream;
      const Index d = config_.d;
      const T inv_d = T(1) / T(d);
      const auto head_w = map(MatView<const T>(view(head_w_)));  // (d, classes)
      auto& ubar = ubar_[idx(int(t))];
      auto& hu = hu_[idx(int(t))];
      auto& uvar = uvar_[idx(int(t))];
      const T* const bias = p.blocks[idx(L - 1)].down_b;
      for (std::size_t i = 0; i < final_inputs_.size(); ++i) {
        const auto x = MatView<const T>(view(vals_[idx(final_inputs_[i])]));
        T* const u0 = ubar.data() + Index(i) * column_task * d;
        for (Index j = 0; j < nj; ++j) {
          const T* __restrict xc = &x(0, j0 + j);
          T* __restrict uc = u0 + j * d;
          for (Index r = 0; r < d; ++r) uc[r] = xc[r] + bias[r];
          if constexpr (normed) uvar[i * idx(int(column_task)) + idx(int(j))] = center(uc, d, inv_d);
        }
        const auto u = Eigen::Map<const EigenMat<T>>(u0, d, nj);
        ht.noalias() = u.transpose() * head_w;  // (tile, classes): the tile as the GEMM's M
        hu.middleCols(Index(i) * column_task, nj) = ht.transpose();
      }
      auto& hz = hz_[idx(int(t))];
      auto& zvar = zvar_[idx(int(t))];
      T* const z = z_tile_[idx(int(t))].data();
      for (const auto& fn : final_nodes_) {
        const auto& no = last.node_outs[idx(fn.node)];
        collect_terms(last, last_ws, no.zgroup, no.znode, n, terms);
        const T* const zs = sum_terms(terms, j0, nj, z);
        if constexpr (normed) {
          for (Index j = 0; j < nj; ++j) {  // centre into the tile buffer (zs may be a term)
            const T* __restrict src = zs + j * d;
            T* __restrict dst = z + j * d;
            if (src != dst) std::copy_n(src, d, dst);
            zvar[idx(int(j))] = center(dst, d, inv_d);
          }
        }
        const T* const zc = normed ? z : zs;
        ht.noalias() = Eigen::Map<const EigenMat<T>>(zc, d, nj).transpose() * head_w;
        hz.leftCols(nj) = ht.transpose();
        const T c = fn.scale;
        const T* __restrict beta = head_beta_.data();
        for (const auto& [k, i] : fn.finals) {
          // The tile's (classes, nj) blocks are contiguous (leading dimension = classes).
          T* __restrict out = &view(head_)(0, Index(k) * n + j0);
          const T* __restrict hu_t = &hu(0, Index(i) * column_task);
          const T* __restrict hz_t = hz.data();
          for (Index e = 0; e < classes * nj; ++e) out[e] = hu_t[e] + c * hz_t[e];
          if constexpr (normed) {
            const T* const u0 = ubar.data() + Index(i) * column_task * d;
            const T* const uv = uvar.data() + idx(i) * idx(int(column_task));
            for (Index j = 0; j < nj; ++j) {
              const T dot = lane_dot(u0 + j * d, zc + j * d, d);
              const T var = uv[j] + c * c * zvar[idx(int(j))] + T(2) * c * dot * inv_d;
              const T rs = T(1) / std::sqrt(var + eps);
              T* __restrict oc = out + j * classes;
              for (Index cl = 0; cl < classes; ++cl) oc[cl] = rs * oc[cl] + beta[cl];
            }
          }
        }
      }
      const auto head = view(head_);
      for (std::size_t f = 0; f < finals_.size(); ++f) {
        auto out = view(logits_[f]);
        T* __restrict oc = &out(0, j0);  // the tile's (classes, nj) block, contiguous
        const Index len = classes * nj;
        std::fill_n(oc, len, T(0));
        for (const auto& [slot, size] : finals_[f]) {
          const T w = T(size) / T(S);
          const T* __restrict hc = &head(0, Index(slot) * n + j0);
          for (Index e = 0; e < len; ++e) oc[e] += w * hc[e];
        }
        for (Index j = 0; j < nj; ++j)
          for (Index c = 0; c < classes; ++c) oc[j * classes + c] += p.head_b[c];
        if (!labels.empty())
          score_tile(f, t, MatView<const T>(out).cols_range(j0, nj), labels.subspan(idx(int(j0))));
      }
    });
    if (!labels.empty())
      for (std::size_t f = 0; f < finals_.size(); ++f) {
        Score total;
        for (Index t = 0; t < tasks; ++t) {  // in tile order: the same sums for any thread count
          total.loss_sum += tile_scores_[idx(int(t))][f].loss_sum;
          total.correct += tile_scores_[idx(int(t))][f].correct;
        }
        scores_[f] = total;
      }
  }

  /// Summed cross-entropy and count of correct predictions (first largest logit) over the
  /// batch of the last forward(x, labels), for structure i.
  struct Score {
    double loss_sum = 0;
    std::int64_t correct = 0;
  };
  [[nodiscard]] Score score(std::size_t i) const { return scores_[idx(logits_of_[i])]; }

 private:
  // ---- the plan: built once from the masks, no arithmetic ----

  struct Stream {  // a stream of one structure: shards [first, first + size), its value
    int first = 0;
    int size = 0;
    int value = 0;
  };
  struct UpGroup {  // input streams of one block with the same interval
    Segment interval{};
    std::vector<int> values;  // column slot k holds values[k]
  };
  struct Piece {  // the part of a segment an input stream covers, and where its H lives
    int first = 0;
    int size = 0;
    int group = 0;
    int slot = 0;
  };
  struct ZNode {  // one (segment, input streams) pair
    std::vector<Piece> pieces;
  };
  struct ZGroup {  // every node of one segment
    Segment seg{};
    std::vector<ZNode> nodes;
  };
  struct OutNode {
    int input = 0;
    int zgroup = 0;
    int znode = 0;
    int output = 0;
  };
  struct NodeOuts {  // the outputs of one (segment, feeding streams) node
    int zgroup = 0;
    int znode = 0;
    std::vector<int> outs;  // indices into BlockPlan::outs
  };
  struct BlockPlan {
    std::vector<UpGroup> ups;
    std::vector<ZGroup> zs;
    std::vector<OutNode> outs;
    std::vector<NodeOuts> node_outs;  // outs grouped by node
  };
  struct FinalPair {  // a final stream output by the last block: its head slot and input stream
    int slot = 0;
    int input = 0;  // index into final_inputs_
  };
  struct FinalNode {  // a node of the last block and the final streams it outputs
    int node = 0;     // index into the last block's node_outs
    T scale = 0;      // S / |G| of the node's segment
    std::vector<FinalPair> finals;
  };
  struct BlockWorkspace {
    std::vector<EigenMat<T>> xn, h;           // per up group: normed inputs, activations
    std::vector<std::vector<EigenMat<T>>> p;  // per up group and shard of it: B_j H_j
  };

  static constexpr std::size_t idx(int i) noexcept { return static_cast<std::size_t>(i); }
  static MatView<T> view(EigenMat<T>& m) { return MatView<T>(m.data(), m.rows(), m.cols()); }
  static MatView<const T> cview(const EigenMat<T>& m) {
    return MatView<const T>(m.data(), m.rows(), m.cols());
  }

  void build_plan(const std::vector<std::uint64_t>& masks) {
    const auto nstruct = masks.size();
    std::vector<std::vector<Stream>> streams(nstruct, std::vector<Stream>{Stream{0, S, 0}});
    values_ = 1;
    const double d = double(config_.d), h = double(config_.h), hs = h / S, c = double(config_.classes);
    flops_.tree = 2 * d * double(config_.in_dim);
    std::vector<mask_type> ms;
    ms.reserve(nstruct);
    for (const auto b : masks) {
      ms.push_back(mask_type(b));  // throws InputError on bits beyond the gates
      const auto m = ms.back();
      flops_.naive += 2 * d * double(config_.in_dim);
      for (int l = 0; l < L; ++l)
        if (F::block(m, l).residual()) flops_.naive += 4 * d * h;
      flops_.naive += 2 * c * d * double(intervals_from_cuts<S>(F::stream_cuts(m)[L]).size());
    }
    for (int l = 0; l < L; ++l) {
      BlockPlan plan;
      std::map<std::pair<int, int>, int> up_group;          // interval -> group
      std::map<int, std::pair<int, int>> up_loc;            // value -> (group, slot)
      std::map<std::pair<int, int>, int> z_group;           // segment -> group
      std::vector<std::map<std::vector<int>, int>> z_node;  // per group: input values -> node
      std::map<std::tuple<int, int, int>, int> out_of;      // (input value, z group, z node) -> value
      for (std::size_t i = 0; i < nstruct; ++i) {
        const auto gates = F::block(ms[i], l);
        if (!gates.residual()) continue;  // a skipped block: the streams pass through
        for (const auto& s : streams[i])
          if (!up_loc.contains(s.value)) {
            auto [it, fresh] = up_group.try_emplace({s.first, s.size}, int(plan.ups.size()));
            if (fresh) plan.ups.push_back(UpGroup{Segment{s.first, s.size}, {}});
            auto& group = plan.ups[idx(it->second)];
            up_loc[s.value] = {it->second, int(group.values.size())};
            group.values.push_back(s.value);
          }
        std::vector<Stream> next;
        for (const Segment g : gates.segments()) {
          auto [git, gfresh] = z_group.try_emplace({g.first, g.size}, int(plan.zs.size()));
          if (gfresh) {
            plan.zs.push_back(ZGroup{g, {}});
            z_node.emplace_back();
          }
          const int zg = git->second;
          std::vector<int> key;
          ZNode node;
          for (const auto& s : streams[i]) {
            const int first = std::max(s.first, g.first);
            const int last = std::min(s.first + s.size, g.last());
            if (first >= last) continue;
            key.push_back(s.value);
            const auto [group, slot] = up_loc[s.value];
            node.pieces.push_back(Piece{first, last - first, group, slot});
          }
          auto [nit, nfresh] = z_node[idx(zg)].try_emplace(key, int(plan.zs[idx(zg)].nodes.size()));
          if (nfresh) plan.zs[idx(zg)].nodes.push_back(std::move(node));
          const int zn = nit->second;
          for (const auto& s : streams[i]) {
            const int first = std::max(s.first, g.first);
            const int last = std::min(s.first + s.size, g.last());
            if (first >= last) continue;
            auto [oit, ofresh] = out_of.try_emplace({s.value, zg, zn}, values_);
            if (ofresh) {
              plan.outs.push_back(OutNode{s.value, zg, zn, values_});
              ++values_;
            }
            next.push_back(Stream{first, last - first, oit->second});
          }
        }
        streams[i] = std::move(next);
      }
      std::map<std::pair<int, int>, int> node_of;  // (z group, z node) -> node_outs entry
      for (std::size_t o = 0; o < plan.outs.size(); ++o) {
        const auto& out = plan.outs[o];
        auto [it, fresh] = node_of.try_emplace({out.zgroup, out.znode}, int(plan.node_outs.size()));
        if (fresh) plan.node_outs.push_back(NodeOuts{out.zgroup, out.znode, {}});
        plan.node_outs[idx(it->second)].outs.push_back(int(o));
      }
      for (const auto& up : plan.ups)  // the up-projection and the per-shard down-projection
        flops_.tree += 4 * d * double(up.interval.size) * hs * double(up.values.size());
      blocks_.push_back(std::move(plan));
    }
    // Final streams: one head product per distinct value, one logits buffer per distinct
    // list of (value, width).
    std::map<int, int> final_slot;
    std::map<std::vector<std::pair<int, int>>, int> final_of;
    logits_of_.resize(nstruct);
    for (std::size_t i = 0; i < nstruct; ++i) {
      std::vector<std::pair<int, int>> key;
      for (const auto& s : streams[i]) {
        auto [it, fresh] = final_slot.try_emplace(s.value, int(final_values_.size()));
        if (fresh) final_values_.push_back(s.value);
        key.emplace_back(it->second, s.size);
      }
      auto [it, fresh] = final_of.try_emplace(key, int(finals_.size()));
      if (fresh) finals_.push_back(key);
      logits_of_[i] = it->second;
    }
    // Which final streams the last block outputs (computed with the head, not stored).
    std::map<int, int> last_out;
    for (std::size_t o = 0; o < blocks_[idx(L - 1)].outs.size(); ++o)
      last_out[blocks_[idx(L - 1)].outs[o].output] = int(o);
    stored_.assign(idx(values_), true);
    const auto& last = blocks_[idx(L - 1)];
    std::map<int, int> final_node_of;   // node_outs entry -> final_nodes_ entry
    std::map<int, int> final_input_of;  // input value -> final_inputs_ entry
    for (std::size_t k = 0; k < final_values_.size(); ++k) {
      const auto it = last_out.find(final_values_[k]);
      if (it == last_out.end()) {
        final_stored_.push_back(int(k));
        continue;
      }
      stored_[idx(final_values_[k])] = false;
      const auto& out = last.outs[idx(it->second)];
      int node = 0;
      for (std::size_t u = 0; u < last.node_outs.size(); ++u)
        if (last.node_outs[u].zgroup == out.zgroup && last.node_outs[u].znode == out.znode) node = int(u);
      auto [fit, fresh] = final_node_of.try_emplace(node, int(final_nodes_.size()));
      if (fresh) final_nodes_.push_back(FinalNode{node, T(S) / T(last.zs[idx(out.zgroup)].seg.size), {}});
      auto [iit, ifresh] = final_input_of.try_emplace(out.input, int(final_inputs_.size()));
      if (ifresh) final_inputs_.push_back(out.input);
      final_nodes_[idx(fit->second)].finals.push_back(FinalPair{int(k), iit->second});
      ++final_pairs_;
    }
    flops_.tree += head_flops();
  }

  void ensure_workspace(Index n) {
    if (n == batch_) return;
    const Index d = config_.d, hs = config_.h / S;
    vals_.assign(idx(values_), EigenMat<T>());
    for (int v = 0; v < values_; ++v)
      if (stored_[idx(v)]) vals_[idx(v)].resize(d, n);
    block_ws_.assign(idx(L), BlockWorkspace{});
    for (int l = 0; l < L; ++l) {
      const auto& plan = blocks_[idx(l)];
      auto& ws = block_ws_[idx(l)];
      for (const auto& up : plan.ups) {
        const Index cols = Index(up.values.size()) * n;
        ws.xn.emplace_back(d, cols);
        ws.h.emplace_back(up.interval.size * hs, cols);
      }
      for (const auto& up : plan.ups)
        ws.p.emplace_back(idx(up.interval.size), EigenMat<T>(d, Index(up.values.size()) * n));
    }
    head_ = EigenMat<T>(config_.classes, Index(final_values_.size()) * n);
    logits_.assign(finals_.size(), EigenMat<T>(config_.classes, n));
    const auto tasks = static_cast<std::size_t>(task_count(n));
    tile_.assign(tasks, EigenMat<T>(d, column_task));
    z_tile_.assign(tasks, EigenMat<T>(d, column_task));
    tile_head_.assign(tasks, EigenMat<T>(column_task, config_.classes));
    tile_terms_.assign(tasks, {});
    exp_tile_.assign(tasks, std::vector<T, Eigen::aligned_allocator<T>>(
                                idx(int((config_.classes * column_task + packet - 1) / packet * packet))));
    tile_scores_.assign(tasks, std::vector<Score>(finals_.size()));
    scores_.assign(finals_.size(), Score{});
    const auto inputs = static_cast<Index>(final_inputs_.size());
    ubar_.assign(tasks, EigenMat<T>(d, column_task * inputs));
    hu_.assign(tasks, EigenMat<T>(config_.classes, column_task * inputs));
    hz_.assign(tasks, EigenMat<T>(config_.classes, column_task));
    uvar_.assign(tasks, std::vector<T>(idx(int(column_task * inputs))));
    zvar_.assign(tasks, std::vector<T>(idx(int(column_task))));
    mean_.assign(idx(int(n)), T(0));
    rstd_.assign(idx(int(n)), T(0));
    batch_ = n;
  }

  /// The per-shard products P_j of node (zgroup, znode), in order, as (d, batch) views.
  static void collect_terms(const BlockPlan& plan, const BlockWorkspace& ws, int zgroup, int znode, Index n,
                            std::vector<MatView<const T>>& terms) {
    terms.clear();
    for (const auto& piece : plan.zs[idx(zgroup)].nodes[idx(znode)].pieces) {
      const auto& up = plan.ups[idx(piece.group)];
      for (int j = piece.first; j < piece.first + piece.size; ++j)
        terms.push_back(
            cview(ws.p[idx(piece.group)][idx(j - up.interval.first)]).cols_range(Index(piece.slot) * n, n));
    }
  }

  /// Columns [j0, j0 + nj) of the sum of the terms (in order), leading dimension d: the
  /// term itself if there is one, else summed into z. A term's columns are contiguous (every P_j has leading
  /// dimension d), so the tile is one run of d * nj elements; up to four terms are added per pass, ((z + a) +
  /// b) + c, which is the same order as adding them one by one.
  static const T* sum_terms(const std::vector<MatView<const T>>& terms, Index j0, Index nj, T* __restrict z) {
    const Index len = terms[0].rows * nj;
    const auto at = [&](std::size_t t) -> const T* { return &terms[t](0, j0); };
    const std::size_t m = terms.size();
    std::size_t t = 0;
    if (m >= 2) {
      const T* __restrict a = at(0);
      const T* __restrict b = at(1);
      if (m >= 3) {
        const T* __restrict c = at(2);
        for (Index i = 0; i < len; ++i) z[i] = (a[i] + b[i]) + c[i];
        t = 3;
      } else {
        for (Index i = 0; i < len; ++i) z[i] = a[i] + b[i];
        t = 2;
      }
    } else {
      return at(0);
    }
    for (; t + 3 <= m; t += 3) {
      const T* __restrict a = at(t);
      const T* __restrict b = at(t + 1);
      const T* __restrict c = at(t + 2);
      for (Index i = 0; i < len; ++i) z[i] = ((z[i] + a[i]) + b[i]) + c[i];
    }
    for (; t < m; ++t) {
      const T* __restrict a = at(t);
      for (Index i = 0; i < len; ++i) z[i] += a[i];
    }
    return z;
  }

  /// Columns [j0, j0 + nj) of y = x + scale * z + bias (per row); z holds those columns
  /// (leading dimension d), y is written from column j0 on (leading dimension ldy).
  static void add_input(const T* z, MatView<const T> x, T scale, const T* bias, Index j0, Index nj, T* y,
                        Index ldy) {
    const Index d = x.rows;
    for (Index j = 0; j < nj; ++j) {
      T* __restrict yc = y + j * ldy;
      const T* __restrict zc = z + j * d;
      const T* __restrict xc = &x(0, j0 + j);
      for (Index i = 0; i < d; ++i) yc[i] = xc[i] + scale * zc[i] + bias[i];
    }
  }

  /// Cross-entropy and correct predictions of the columns of one tile of logits buffer f,
  /// into tile_scores_[t][f]. In float the exponentials go through Eigen's SIMD exp on whole
  /// packets (the tile copied into a padded buffer), so every element gets the same function.
  void score_tile(std::size_t f, Index t, MatView<const T> logits, std::span<const std::int32_t> labels) {
    namespace ei = Eigen::internal;
    const Index classes = logits.rows;
    const Index nj = logits.cols;
    auto& e = exp_tile_[idx(int(t))];
    const Index len = classes * nj;
    for (Index j = 0; j < nj; ++j) {
      const T* __restrict z = &logits(0, j);
      T zmax = z[0];
      for (Index c = 1; c < classes; ++c) zmax = std::max(zmax, z[c]);
      for (Index c = 0; c < classes; ++c) e[idx(int(j * classes + c))] = z[c] - zmax;
    }
    const Index padded = (len + packet - 1) / packet * packet;
    std::fill(e.begin() + len, e.begin() + padded, T(0));
    if constexpr (std::is_same_v<T, float>) {
      for (Index i = 0; i < padded; i += packet)
        ei::pstoreu(e.data() + i, ei::pexp(ei::ploadu<Packet>(e.data() + i)));
    } else {  // GCC 12 warns inside its AVX-512 intrinsics for Eigen's double pexp
      for (Index i = 0; i < len; ++i) e[idx(int(i))] = std::exp(e[idx(int(i))]);
    }
    Score sc;
    for (Index j = 0; j < nj; ++j) {
      const T* __restrict z = &logits(0, j);
      const auto y = static_cast<Index>(labels[idx(int(j))]);
      T sum = 0;
      Index best = 0;
      for (Index c = 0; c < classes; ++c) {
        sum += e[idx(int(j * classes + c))];
        if (z[c] > z[best]) best = c;
      }
      const T zmax = z[best];
      sc.loss_sum += double(std::log(sum) - (z[y] - zmax));
      sc.correct += best == y ? 1 : 0;
    }
    tile_scores_[idx(int(t))][f] = sc;
  }

  /// Subtracts the mean from the d values at v; returns their variance (mean square after
  /// centring, as the backend's LayerNorm computes it).
  static T center(T* __restrict v, Index d, T inv_d) {
    const T mu = lane_sum(v, d) * inv_d;
    for (Index r = 0; r < d; ++r) v[r] -= mu;
    return lane_dot(v, v, d) * inv_d;
  }

  // Reductions over a column in two packet-wide partial sums (Eigen's SIMD packets, unaligned
  // loads) plus a scalar tail, combined in a fixed order: fast, and the same bits wherever the
  // column sits in memory (unlike Eigen's own reductions, which start at an aligned address).
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr Index packet = Eigen::internal::unpacket_traits<Packet>::size;

  static T lane_dot(const T* __restrict a, const T* __restrict b, Index d) {
    namespace ei = Eigen::internal;
    Packet acc0 = ei::pset1<Packet>(T(0)), acc1 = acc0;
    Index r = 0;
    for (; r + 2 * packet <= d; r += 2 * packet) {
      acc0 = ei::padd(acc0, ei::pmul(ei::ploadu<Packet>(a + r), ei::ploadu<Packet>(b + r)));
      acc1 = ei::padd(acc1, ei::pmul(ei::ploadu<Packet>(a + r + packet), ei::ploadu<Packet>(b + r + packet)));
    }
    T tail = 0;
    for (; r < d; ++r) tail += a[r] * b[r];
    return ei::predux(ei::padd(acc0, acc1)) + tail;
  }

  static T lane_sum(const T* __restrict a, Index d) {
    namespace ei = Eigen::internal;
    Packet acc0 = ei::pset1<Packet>(T(0)), acc1 = acc0;
    Index r = 0;
    for (; r + 2 * packet <= d; r += 2 * packet) {
      acc0 = ei::padd(acc0, ei::ploadu<Packet>(a + r));
      acc1 = ei::padd(acc1, ei::ploadu<Packet>(a + r + packet));
    }
    T tail = 0;
    for (; r < d; ++r) tail += a[r];
    return ei::predux(ei::padd(acc0, acc1)) + tail;
  }

  /// The backend's LayerNorm (the same Eigen expression, column by column) into a tile.
  static void final_norm(MatView<const T> x, const T* w, const T* b, EigenMat<T>& y, T eps) {
    const Index d = x.rows;
    const auto ww = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(w, d);
    const auto bb = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(b, d);
    for (Index j = 0; j < x.cols; ++j) {
      const auto xc = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&x(0, j), d);
      const T mu = xc.mean();
      const T var = (xc - mu).square().mean();
      const T rs = T(1) / std::sqrt(var + eps);
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(y.data() + j * d, d) = (xc - mu) * rs * ww + bb;
    }
  }

  MlpConfig config_;
  ParamLayout layout_;
  CpuBackend<T> backend_;
  EvalFlops flops_{};
  int values_ = 0;
  std::vector<BlockPlan> blocks_;
  std::vector<int> final_values_;                         // value of head column slot k
  std::vector<std::vector<std::pair<int, int>>> finals_;  // per logits buffer: (head slot, width)
  std::vector<int> final_stored_;                         // head slots of final streams held in vals_
  std::vector<FinalNode> final_nodes_;                    // head slots computed in the tile, by node
  std::vector<int> final_inputs_;  // values of the last block's input streams that final pairs read
  std::size_t final_pairs_ = 0;    // final streams computed in the tile (sum of finals over final_nodes_)
  std::vector<bool> stored_;       // per value: held in vals_ (not a tile-computed final stream)
  std::vector<int> logits_of_;     // per structure: its logits buffer

  Index batch_ = 0;
  std::vector<EigenMat<T>> vals_;
  std::vector<BlockWorkspace> block_ws_;
  EigenMat<T> head_;               // (classes, final streams * batch)
  std::vector<EigenMat<T>> tile_;  // per column task: normed final streams (d, tile)
  std::vector<EigenMat<T>> logits_;
  std::vector<T> mean_, rstd_;
  std::vector<EigenMat<T>> tile_head_;                     // per column task: head^T (tile, classes)
  std::vector<EigenMat<T>> z_tile_;                        // per column task: a node's sum Z (d, tile)
  std::vector<std::vector<MatView<const T>>> tile_terms_;  // per column task
  // The last block's final streams by linearity (see forward()), per column task:
  std::vector<EigenMat<T>> ubar_;  // centred u = x + b of every final input (d, tile * inputs)
  std::vector<EigenMat<T>> hu_;    // head'(u) of every final input (classes, tile * inputs)
  std::vector<EigenMat<T>> hz_;    // head'(z) of one node (classes, tile)
  std::vector<std::vector<T>> uvar_, zvar_;
  std::span<const T> params_;                                          // of the last set_params()
  std::vector<std::vector<T, Eigen::aligned_allocator<T>>> exp_tile_;  // per column task: exp of a tile
  std::vector<std::vector<Score>> tile_scores_;                        // per column task and logits buffer
  std::vector<Score> scores_;                                          // per logits buffer
  typename CpuBackend<T>::PackedTn embed_pack_;
  std::vector<std::vector<typename CpuBackend<T>::PackedTn>> up_pack_;    // per block and up group
  std::vector<std::vector<typename CpuBackend<T>::PackedTn>> down_pack_;  // per block and shard
  EigenMat<T> head_w_;        // head' = head^T scaled by the final norm's weight (per row), (d, classes)
  std::vector<T> head_beta_;  // head^T * final norm bias, (classes)
};

}  // namespace cpu

/// GEMM FLOPs per sample of both methods for a mask list (walks the plan, computes nothing).
template <Family F>
EvalFlops evaluate_flops(const MlpConfig& config, const std::vector<std::uint64_t>& masks) {
  return cpu::PrefixTreeForward<F, float>(config, masks).flops();
}

namespace detail {

/// Adds the number of samples whose first largest logit is their label.
template <class T>
void count_correct(MatView<const T> logits, std::span<const std::int32_t> labels, std::int64_t& correct) {
  for (Index j = 0; j < logits.cols; ++j) {
    Index best = 0;
    for (Index c = 1; c < logits.rows; ++c)
      if (logits(c, j) > logits(best, j)) best = c;
    correct += best == labels[static_cast<std::size_t>(j)] ? 1 : 0;
  }
}

}  // namespace detail

/// Mean softmax cross-entropy and accuracy of every mask in `masks` (result in the same order)
/// on `data`, all with the same parameters `params` (the flat layout of mlp_layout()).
/// Data are processed in chunks of `options.chunk` samples; accuracy counts the first
/// largest logit, as Trainer::evaluate does.
template <Family F, class T>
std::vector<StructureEval> evaluate_structures(const MlpConfig& config, std::span<const T> params,
                                               const DatasetView& data,
                                               const std::vector<std::uint64_t>& masks,
                                               const EvalAllOptions& options = {}) {
  using mask_type = typename F::mask_type;
  if (masks.empty()) throw InputError("evaluate_structures: no structures to evaluate");
  if (data.size() == 0) throw InputError("evaluate_structures: the data set is empty");
  if (options.chunk < 1) throw InputError("evaluate_structures: chunk must be >= 1");
  if (options.threads < 1) throw InputError("evaluate_structures: threads must be >= 1");
  config.validate(F::shards);
  if (const auto need = mlp_layout(config, F::blocks).total(); params.size() != need)
    throw InputError("evaluate_structures: parameter buffer has " + std::to_string(params.size()) +
                     " elements, the model needs " + std::to_string(need));
  if (data.input_dim() != config.in_dim)
    throw InputError("evaluate_structures: the data have " + std::to_string(data.input_dim()) +
                     " features, the model expects " + std::to_string(config.in_dim));
  if (data.num_classes() > config.classes)
    throw InputError("evaluate_structures: the data have " + std::to_string(data.num_classes()) +
                     " classes, the model has " + std::to_string(config.classes));
  std::vector<mask_type> ms;
  for (const auto b : masks) ms.push_back(mask_type(b));  // throws InputError on bits beyond the gates

  const bool tree = options.method == EvalMethod::prefix_tree;
  std::optional<cpu::PrefixTreeForward<F, T>> forest;
  std::optional<cpu::MlpModel<F, T>> model;
  if (tree)
    forest.emplace(config, masks, options.threads);
  else
    model.emplace(config, options.threads);

  const std::size_t nscore = tree ? forest->distinct_logits() : masks.size();
  std::vector<double> loss(nscore, 0.0);
  std::vector<std::int64_t> correct(nscore, 0);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> x;
  std::vector<std::int32_t> y;
  std::vector<std::int64_t> pos;
  const std::int64_t chunks = (data.size() + options.chunk - 1) / options.chunk;
  std::optional<ProgressBar> bar;
  if (options.show_progress)
    bar.emplace("evaluate", chunks, double(options.chunk) * double(masks.size()), "structure-samples");
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t c0 = c * options.chunk;
    const std::int64_t n = std::min<std::int64_t>(options.chunk, data.size() - c0);
    pos.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = c0 + i;
    data.gather(pos, x, y);
    const MatView<const T> xv(x.data(), x.rows(), x.cols());
    if (tree) {
      if (c == 0) forest->set_params(params);
      forest->forward(xv, y);
      // One score per distinct logits buffer: structure i reads entry logits_id(i).
      std::vector<bool> done(nscore, false);
      for (std::size_t s = 0; s < masks.size(); ++s) {
        const auto f = static_cast<std::size_t>(forest->logits_id(s));
        if (done[f]) continue;
        done[f] = true;
        const auto score = forest->score(s);
        loss[f] += score.loss_sum;
        correct[f] += score.correct;
      }
    } else {
      for (std::size_t s = 0; s < masks.size(); ++s) {
        loss[s] += double(model->forward(ms[s], params, xv, y)) * double(n);
        detail::count_correct(model->logits(), y, correct[s]);
      }
    }
    if (bar) bar->update(c + 1);
  }
  std::vector<StructureEval> out(masks.size());
  for (std::size_t s = 0; s < masks.size(); ++s) {
    const auto f = tree ? static_cast<std::size_t>(forest->logits_id(s)) : s;
    out[s] = StructureEval{masks[s], loss[f] / double(data.size()), double(correct[f]) / double(data.size())};
  }
  return out;
}

}  // namespace additive
