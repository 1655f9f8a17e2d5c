// The MLP family's fast path for evaluating many structures on the same weights: it walks
// the tree of shared prefixes (docs/evaluate-all.md). Structures that agree on blocks 1..l share
// every activation up to block l; inside a block, the up-projection of a stream is shared
// by every structure that reads that stream, the per-shard down-projection B_j H_j by every
// segment over that shard (a segment only adds them, once per (segment, feeding streams)
// node and column tile; each output of the node then adds its own input stream), an output
// piece by every structure with the same (stream, segment, feeding streams), and the final
// norm and head by every structure with the same final stream. Distinct streams that use
// the same weight slice sit side by side along the batch and go through one GEMM. The
// GEMMs and norms are the backend's (cpu::CpuBackend) or the same expressions, grouped
// differently from cpu::MlpModel, so the results agree with it to rounding.
//
// exp/evaluate_all.hpp's evaluate_structures uses it for cpu::MlpModel through the
// all_structure_evaluator trait (nn/model.hpp); other families get one forward per structure.
#pragma once

#include <algorithm>
#include <array>
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
#include "additive/nn/mlp.hpp"
#include "additive/nn/model.hpp"

namespace additive {

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
    block_ = column_task * backend_.threads();
  }

  [[nodiscard]] std::size_t size() const noexcept { return logits_of_.size(); }
  [[nodiscard]] CpuBackend<T>& backend() noexcept { return backend_; }
  /// Logits of structure i (its position in the mask list) of the last forward: (classes, batch).
  [[nodiscard]] MatView<const T> logits(std::size_t i) const {
    if (logits_.empty())
      throw RuntimeError("PrefixTreeForward::logits: no logits kept (no forward yet, or keep_logits(false))");
    const auto& m = logits_[static_cast<std::size_t>(logits_of_[i])];
    return MatView<const T>(m.data(), m.rows(), m.cols());
  }
  /// Structures with the same final streams have one logits buffer: its index, for structure i.
  [[nodiscard]] int logits_id(std::size_t i) const noexcept { return logits_of_[i]; }
  [[nodiscard]] std::size_t distinct_logits() const noexcept { return finals_.size(); }
  /// Whether forward(x) keeps every structure's logits for logits(i) (the default). Scores
  /// (forward(x, labels)) do not need them, and copying them out costs about 1% of a
  /// forward: evaluate_structures turns this off.
  void keep_logits(bool keep) noexcept { keep_logits_ = keep; }
  /// Distinct stream values the plan computes (the embedding included).
  [[nodiscard]] int values() const noexcept { return values_; }

  /// GEMM FLOPs per sample of the naive method and of this plan.
  [[nodiscard]] EvalFlops flops() const noexcept { return flops_; }
  /// The part of flops().tree spent in the head (computed outside the backend, so not in
  /// backend().counters()): one head product per final stream held in memory, per input
  /// stream of the last block that a final stream reads and per last-block per-shard
  /// product that a final stream reads; with the
  /// final norm also one d-long dot product per final stream the last block outputs.
  [[nodiscard]] double head_flops() const noexcept {
    const double d = double(config_.d);
    const double products = double(final_stored_.size() + final_inputs_.size() + final_terms_.size());
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
      for (int j = 0; j < S; ++j) {  // packed only where a stream covers shard j
        if (std::none_of(plan.ups.begin(), plan.ups.end(), [j](const UpGroup& u) {
              return u.interval.first <= j && j < u.interval.first + u.interval.size;
            }))
          continue;
        const auto b_j = bp.down_t.rows_range(j * hs, hs);  // B_j^T, (h/S, d)
        if (F::final_norm == FinalNorm::per_stream && l == L - 1) {
          // The last block's products only enter the final norm centred: P_j - mean P_j =
          // (B_j - 1 mean(B_j)) H_j, with the mean over the d output rows. So its weights are
          // packed centred, and the tile stage gets centred products from the GEMM.
          EigenMat<T> centred = map(b_j);
          centred.colwise() -= centred.rowwise().mean();
          backend_.pack_tn(down_pack_[idx(l)][idx(j)], view(centred));
        } else {
          backend_.pack_tn(down_pack_[idx(l)][idx(j)], b_j);
        }
      }
    }
    // head'^T: head^T scaled by the final norm's weight (per row), transposed, its classes
    // padded to a whole packet with zero rows, for the tile stage's head products.
    const Index classes = config_.classes;
    const Index cp = padded_classes();
    const auto head_t = map(MatView<const T>(p.head_t));  // (d, classes)
    head_wt_ = EigenMat<T>::Zero(cp, config_.d);
    head_wt_.topRows(classes) = head_t.transpose();
    head_beta_.assign(idx(int(cp)), T(0));
    head_b_.assign(idx(int(cp)), T(0));
    std::copy_n(p.head_b, classes, head_b_.begin());
    if constexpr (F::final_norm == FinalNorm::per_stream)
      for (Index cl = 0; cl < classes; ++cl)
        for (Index r = 0; r < config_.d; ++r) {
          head_wt_(cl, r) *= p.final_w[r];
          head_beta_[idx(int(cl))] += head_t(r, cl) * p.final_b[r];
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
    if (!keep_logits_) {
      logits_.clear();
    } else if (logits_.size() != finals_.size() || logits_[0].cols() != n) {
      logits_.resize(finals_.size());
      for (auto& m : logits_) m.resize(config_.classes, n);
    }
    if (tile_scores_.size() != idx(int(task_count(n))) || scores_.size() != finals_.size()) {
      tile_scores_.assign(idx(int(task_count(n))), std::vector<Score>(finals_.size()));
      scores_.assign(finals_.size(), Score{});
    }
    // Blocks of at most block_cols() samples, so one block's tensors stay in cache: every
    // column's arithmetic is the same in any block (fixed column tasks), so this changes no bit.
    for (Index b0 = 0; b0 < n; b0 += block_) {
      const Index nb = std::min(block_, n - b0);
      forward_block(x.cols_range(b0, nb),
                    labels.empty() ? labels : labels.subspan(idx(int(b0)), idx(int(nb))), b0);
    }
    if (!labels.empty())
      for (std::size_t f = 0; f < finals_.size(); ++f) {
        Score total;
        for (const auto& tile : tile_scores_) {  // in tile order: the same sums for any thread count
          total.loss_sum += tile[f].loss_sum;
          total.correct += tile[f].correct;
        }
        scores_[f] = total;
      }
  }

  /// Samples per block of forward(x): a multiple of the backend's column task (64), by
  /// default 64 per thread. The results do not depend on it (tests check the bits).
  [[nodiscard]] Index block_cols() const noexcept { return block_; }
  void set_block_cols(Index cols) {
    if (cols < column_task || cols % column_task != 0)
      throw InputError("PrefixTreeForward: block of " + std::to_string(cols) +
                       " samples is not a positive multiple of " + std::to_string(column_task));
    block_ = cols;
  }

  /// Summed cross-entropy and count of correct predictions (first largest logit) over the
  /// batch of the last forward(x, labels), for structure i.
  struct Score {
    double loss_sum = 0;
    std::int64_t correct = 0;
  };
  [[nodiscard]] Score score(std::size_t i) const { return scores_[idx(logits_of_[i])]; }

 private:
  /// forward(x) on the columns [col0, col0 + x.cols) of the batch.
  void forward_block(MatView<const T> x, std::span<const std::int32_t> labels, Index col0) {
    const Index n = x.cols;
    ensure_workspace(n);
    const MlpParamViews<const T> p(config_, L, params_);
    const T eps = T(config_.norm_eps);
    const Index hs = config_.h / S;

    backend_.gemm_tn(vals_[0], embed_pack_, x, T(1), T(0));
    backend_.add_bias(vals_[0], p.embed_b);

    for (int l = 0; l < L; ++l) {
      const auto& bp = p.blocks[idx(l)];
      auto& plan = blocks_[idx(l)];
      auto& ws = block_ws_[idx(l)];
      // Norm of every input stream into its group; one up-projection GEMM per interval.
      for (std::size_t g = 0; g < plan.ups.size(); ++g) {
        const auto& up = plan.ups[g];
        const auto xn = ws.xn[g];
        const auto hb = ws.h[g];
        for (std::size_t k = 0; k < up.values.size(); ++k)
          backend_.layernorm(vals_[idx(up.values[k])], bp.norm_w, bp.norm_b, xn.cols_range(Index(k) * n, n),
                             mean_.data(), rstd_.data(), eps);
        backend_.gemm_tn(hb, up_pack_[idx(l)][g], xn, T(1), T(0));
        backend_.bias_gelu(hb, bp.up_b + up.interval.first * hs, hb);
      }
      // Down-projection per shard: P_j = B_j H_j for every input stream and shard j of it,
      // one GEMM per (interval, shard) over all the streams of that interval.
      for (std::size_t g = 0; g < plan.ups.size(); ++g) {
        const auto& up = plan.ups[g];
        const auto hb = ws.h[g];
        for (int j = 0; j < up.interval.size; ++j)
          backend_.gemm_tn(ws.p[g][idx(j)], down_pack_[idx(l)][idx(up.interval.first + j)],
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
        T* const z = z_tile_[idx(int(t))].data;
        auto& terms = tile_terms_[idx(int(t))];
        for (const auto& no : plan.node_outs) {
          collect_terms(plan, ws, no.zgroup, no.znode, n, terms);
          const T* const zs = sum_terms(terms, j0, nj, z);
          const T scale = T(S) / T(plan.zs[idx(no.zgroup)].seg.size);
          for (const int oi : no.outs) {
            const auto& o = plan.outs[idx(oi)];
            const auto y = vals_[idx(o.output)];
            add_input(zs, MatView<const T>(vals_[idx(o.input)]), scale, bias, j0, nj, &y(0, j0), y.ld);
          }
        }
      });
    }

    // Final norm and head once per distinct final stream, then logits of each structure
    // = sum over its final streams of (|s|/S) * head(stream) + bias. Fused per column tile
    // (fixed tiles, one task each) so a tile's normed streams stay in cache for the head.
    const Index classes = config_.classes;
    const Index tasks = task_count(n);
    parallel_tasks(backend_.threads(), tasks, [&](Index t) {
      const Index j0 = t * column_task;
      const Index nj = std::min(column_task, n - j0);
      const auto yn = tile_[static_cast<std::size_t>(t)].cols_range(0, nj);
      const auto head_t = map(MatView<const T>(p.head_t));  // (d, classes)
      // The head as (tile, d) x (d, classes): a GEMM whose M is the tile, not the few classes.
      auto ht = map(tile_head_[static_cast<std::size_t>(t)].rows_range(0, nj));
      const auto head_of = [&](std::size_t k, MatView<const T> v) {
        if constexpr (F::final_norm == FinalNorm::per_stream) {
          final_norm(v, p.final_w, p.final_b, yn, eps);
          ht.noalias() = map(MatView<const T>(yn)).transpose() * head_t;
        } else {
          ht.noalias() = map(v).transpose() * head_t;
        }
        const auto slot = head_.cols_range(Index(k) * n + j0, nj);
        map(slot.rows_range(0, classes)) = ht.transpose();
        map(slot.rows_range(classes, slot.rows - classes)).setZero();  // padding rows 0
      };
      for (const int k : final_stored_)
        head_of(idx(k), MatView<const T>(vals_[idx(final_values_[idx(k)])]).cols_range(j0, nj));
      // The last block's outputs Y = u + c Z (u = X_s + b: input stream plus bias; Z: the
      // node's sum of per-shard products P_j; c = S/|G|) are final streams, and norm and head
      // are affine in Y given the column's mean and variance:
      //   head(norm(Y)) = rstd * (W'(u - mean u) + c W'(Z - mean Z)) + W beta,  W' = W diag(w)
      //   var(Y) = var(u) + c^2 var(Z) + 2c <u - mean u, Z - mean Z> / d
      // and since the mean of a sum is the sum of the means, Z - mean Z = sum_j (P_j - mean P_j)
      // and W'(Z - mean Z) = sum_j W'(P_j - mean P_j). So every P_j comes centred from the
      // GEMM (set_params centres the last block's weights: P_j - mean P_j = B~_j H_j) and is
      // multiplied by the head once (per term, not per node), W'u and var(u) are computed
      // once per input stream, a node sums its centred terms and their head products in
      // registers, column by column, and a (stream, node) pair costs one d-long dot
      // product. Centred vectors keep the variance free of cancellation. Without the final
      // norm the head is linear: head(Y) = W u + c sum_j W P_j.
      constexpr bool normed = F::final_norm == FinalNorm::per_stream;
      const Index d = config_.d;
      const Index cp = padded_classes();
      const T inv_d = T(1) / T(d);
      const auto head_into = [&](const T* v, T* out) {  // out (cp, nj) = head'^T v, v (d, nj)
        head_product(head_wt_.data(), cp, d, v, nj, out);
      };
      const auto ubar = ubar_[idx(int(t))];
      const auto hu = hu_[idx(int(t))];
      T* const uvar = uvar_[idx(int(t))].data;
      const T* const bias = p.blocks[idx(L - 1)].down_b;
      for (std::size_t i = 0; i < final_inputs_.size(); ++i) {
        const auto x = MatView<const T>(vals_[idx(final_inputs_[i])]);
        T* const u0 = ubar.data + Index(i) * column_task * d;
        for (Index j = 0; j < nj; ++j) {
          const T* __restrict xc = &x(0, j0 + j);
          T* __restrict uc = u0 + j * d;
          if constexpr (normed)
            uvar[Index(i) * column_task + j] = add_center(xc, bias, uc, d, inv_d);
          else
            for (Index r = 0; r < d; ++r) uc[r] = xc[r] + bias[r];
        }
        head_into(u0, &hu(0, Index(i) * column_task));
      }
      const auto hp = hp_[idx(int(t))];
      auto& last_ws = block_ws_[idx(L - 1)];
      const auto term = [&](int q) -> T* {  // columns [j0, j0 + nj) of term q, contiguous
        const auto& ft = final_terms_[idx(q)];
        return &last_ws.p[idx(ft.group)][idx(ft.shard)](0, Index(ft.slot) * n + j0);
      };
      for (std::size_t q = 0; q < final_terms_.size(); ++q)  // with the final norm: centred
        head_into(term(int(q)), &hp(0, Index(q) * column_task));
      const Index hlen = cp * nj;
      if constexpr (normed) {
        // Every node, up to four of its final streams at a time, column by column: a
        // column's centred terms and inputs (30 for the search family, d values each) stay in
        // L1 across all the nodes that read them. Z - mean Z and head'(Z - mean Z) are
        // summed from the terms in registers, in the terms' order.
        auto& jobs = node_jobs_[idx(int(t))];
        jobs.clear();
        for (const auto& fn : final_nodes_) {
          NodeTile job{
              .d = d, .cp = cp, .inv_d = inv_d, .eps = eps, .c = fn.scale, .beta = head_beta_.data()};
          job.nterms = int(fn.terms.size());
          for (int k = 0; k < job.nterms; ++k) {
            job.terms[idx(k)] = term(fn.terms[idx(k)]);
            job.hterms[idx(k)] = &hp(0, Index(fn.terms[idx(k)]) * column_task);
          }
          for (std::size_t p0 = 0; p0 < fn.finals.size(); p0 += 4) {
            job.streams = int(std::min<std::size_t>(4, fn.finals.size() - p0));
            for (int q = 0; q < job.streams; ++q) {
              const auto& [k, i] = fn.finals[p0 + idx(q)];
              job.out[idx(q)] = &head_(0, Index(k) * n + j0);
              job.hu[idx(q)] = &hu(0, Index(i) * column_task);
              job.u[idx(q)] = ubar.data + Index(i) * column_task * d;
              job.uvar[idx(q)] = uvar + Index(i) * column_task;
            }
            jobs.push_back(job);
          }
        }
        for (Index j = 0; j < nj; ++j)
          for (const auto& job : jobs) switch (job.streams) {
              case 1:
                node_column<1>(job, j);
                break;
              case 2:
                node_column<2>(job, j);
                break;
              case 3:
                node_column<3>(job, j);
                break;
              default:
                node_column<4>(job, j);
                break;
            }
      } else {
        const auto hz = hz_[idx(int(t))];
        for (const auto& fn : final_nodes_) {
          {  // head(Z) = sum of the terms' head products, in the terms' order
            T* __restrict hzp = hz.data;
            const T* __restrict h0 = &hp(0, Index(fn.terms[0]) * column_task);
            std::copy_n(h0, hlen, hzp);
            for (std::size_t k = 1; k < fn.terms.size(); ++k) {
              const T* __restrict hk = &hp(0, Index(fn.terms[k]) * column_task);
              for (Index e = 0; e < hlen; ++e) hzp[e] += hk[e];
            }
          }
          const T c = fn.scale;
          for (const auto& [k, i] : fn.finals) {
            T* __restrict out = &head_(0, Index(k) * n + j0);
            const T* __restrict hu_t = &hu(0, Index(i) * column_task);
            const T* __restrict hz_t = hz.data;
            for (Index e = 0; e < hlen; ++e) out[e] = hu_t[e] + c * hz_t[e];
          }
        }
      }
      // Logits of each distinct list of final streams, in a padded tile (padding rows 0),
      // then copied out and scored while in cache.
      T* __restrict lt = logit_tile_[idx(int(t))].data;
      const T* __restrict head_b = head_b_.data();
      for (std::size_t f = 0; f < finals_.size(); ++f) {
        // The bias plus the first stream, then the other streams added in order.
        for (std::size_t s = 0; s < finals_[f].size(); ++s) {
          const auto [slot, size] = finals_[f][s];
          const T w = T(size) / T(S);
          const T* __restrict hc = &head_(0, Index(slot) * n + j0);
          if (s == 0) {
            for (Index j = 0; j < nj; ++j)
              for (Index cl = 0; cl < cp; ++cl) lt[j * cp + cl] = head_b[cl] + w * hc[j * cp + cl];
          } else {
            for (Index e = 0; e < hlen; ++e) lt[e] += w * hc[e];
          }
        }
        if (keep_logits_) {
          auto out = view(logits_[f]);
          for (Index j = 0; j < nj; ++j) std::copy_n(lt + j * cp, classes, &out(0, col0 + j0 + j));
        }
        if (!labels.empty())
          score_tile(f, col0 / column_task + t, lt, nj, labels.subspan(idx(int(j0))),
                     score_tr_[idx(int(t))].data);
      }
    });
  }

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
  struct FinalTerm {  // a per-shard product P_j of the last block read by final streams
    int group = 0;    // up group
    int shard = 0;    // shard within the group's interval
    int slot = 0;     // the input stream's column slot in the group
  };
  struct FinalNode {  // a node of the last block and the final streams it outputs
    int node = 0;     // index into the last block's node_outs
    T scale = 0;      // S / |G| of the node's segment
    std::vector<FinalPair> finals;
    std::vector<int> terms;  // its per-shard products, in order: indices into final_terms_
  };
  struct BlockWorkspace {                    // views into arena_
    std::vector<MatView<T>> xn, h;           // per up group: normed inputs, activations
    std::vector<std::vector<MatView<T>>> p;  // per up group and shard of it: B_j H_j
  };

  static constexpr std::size_t idx(int i) noexcept { return static_cast<std::size_t>(i); }
  /// Classes rounded up to whole SIMD packets: the rows of the tile stage's head products.
  [[nodiscard]] Index padded_classes() const noexcept {
    return (config_.classes + packet - 1) / packet * packet;
  }
  static MatView<T> view(EigenMat<T>& m) { return MatView<T>(m.data(), m.rows(), m.cols()); }

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
    std::map<int, int> final_node_of;                        // node_outs entry -> final_nodes_ entry
    std::map<int, int> final_input_of;                       // input value -> final_inputs_ entry
    std::map<std::tuple<int, int, int>, int> final_term_of;  // (group, shard, slot) -> final_terms_ entry
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
      if (fresh) {
        FinalNode fn{node, T(S) / T(last.zs[idx(out.zgroup)].seg.size), {}, {}};
        for (const auto& piece : last.zs[idx(out.zgroup)].nodes[idx(out.znode)].pieces)
          for (int j = piece.first; j < piece.first + piece.size; ++j) {
            const FinalTerm ft{piece.group, j - last.ups[idx(piece.group)].interval.first, piece.slot};
            auto [tit, tfresh] =
                final_term_of.try_emplace({ft.group, ft.shard, ft.slot}, int(final_terms_.size()));
            if (tfresh) final_terms_.push_back(ft);
            fn.terms.push_back(tit->second);
          }
        final_nodes_.push_back(std::move(fn));
      }
      auto [iit, ifresh] = final_input_of.try_emplace(out.input, int(final_inputs_.size()));
      if (ifresh) final_inputs_.push_back(out.input);
      final_nodes_[idx(fit->second)].finals.push_back(FinalPair{int(k), iit->second});
      ++final_pairs_;
    }
    flops_.tree += head_flops();
  }

  /// Lays the workspace of a block of n samples out in one allocation (arena_, not
  /// initialised: every buffer is written before it is read; it only grows, so blocks of
  /// different widths reuse it), each buffer on a cache line.
  /// Two passes over the same layout: the first sums the sizes, the second hands out views.
  void ensure_workspace(Index n) {
    if (n == batch_) return;
    const Index d = config_.d, hs = config_.h / S, cp = padded_classes();
    const auto tasks = static_cast<std::size_t>(task_count(n));
    const auto inputs = static_cast<Index>(final_inputs_.size());
    const auto terms = static_cast<Index>(final_terms_.size());
    constexpr Index line = 64 / Index(sizeof(T));
    Index used = 0;
    T* base = nullptr;
    const auto take = [&](Index rows, Index cols) {
      const Index at = used;
      used += (rows * cols + line - 1) / line * line;
      return MatView<T>(base == nullptr ? nullptr : base + at, rows, cols);
    };
    const auto per_task = [&](std::vector<MatView<T>>& v, Index rows, Index cols) {
      v.resize(tasks);
      for (auto& m : v) m = take(rows, cols);
    };
    for (int pass = 0; pass < 2; ++pass) {
      used = 0;
      vals_.assign(idx(values_), MatView<T>());
      for (int v = 0; v < values_; ++v)
        if (stored_[idx(v)]) vals_[idx(v)] = take(d, n);
      block_ws_.assign(idx(L), BlockWorkspace{});
      for (int l = 0; l < L; ++l) {
        auto& ws = block_ws_[idx(l)];
        for (const auto& up : blocks_[idx(l)].ups) {
          const Index cols = Index(up.values.size()) * n;
          ws.xn.push_back(take(d, cols));
          ws.h.push_back(take(up.interval.size * hs, cols));
          ws.p.emplace_back();
          for (int j = 0; j < up.interval.size; ++j) ws.p.back().push_back(take(d, cols));
        }
      }
      head_ = take(cp, Index(final_values_.size()) * n);
      per_task(tile_, d, column_task);
      per_task(z_tile_, d, column_task);
      per_task(tile_head_, column_task, config_.classes);
      per_task(logit_tile_, cp, column_task);
      per_task(score_tr_, config_.classes, packet);
      per_task(ubar_, d, column_task * inputs);
      per_task(hu_, cp, column_task * inputs);
      per_task(hp_, cp, column_task * terms);
      per_task(hz_, cp, column_task);
      per_task(uvar_, column_task * inputs, 1);
      if (pass == 0) {
        if (arena_.size() < used) arena_.resize(used);  // grows only: a partial last block reuses it
        base = arena_.data();
      }
    }
    tile_terms_.assign(tasks, {});
    node_jobs_.assign(tasks, {});
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
        terms.push_back(MatView<const T>(ws.p[idx(piece.group)][idx(j - up.interval.first)])
                            .cols_range(Index(piece.slot) * n, n));
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

  /// out = wt v: wt (cp, d), v (d, nj), out (cp, nj), all column-major with leading
  /// dimensions cp, d, cp; cp a multiple of the packet size. A register-blocked product
  /// for the few rows of a head: eight columns at a time (eight independent accumulators
  /// keep both FMA ports busy), one packet of classes times one broadcast value of v per
  /// step, read straight from v (no packing, no zero-fill); each output is one fused
  /// multiply-add chain over r = 0..d-1, the same for any nj.
  static void head_product(const T* wt, Index cp, Index d, const T* v, Index nj, T* out) {
    for (Index rp = 0; rp < cp; rp += packet) {
      Index j = 0;
      for (; j + 8 <= nj; j += 8) head_columns<8>(wt + rp, cp, d, v + j * d, out + j * cp + rp);
      for (; j < nj; ++j) head_columns<1>(wt + rp, cp, d, v + j * d, out + j * cp + rp);
    }
  }

  /// One packet of rows of head_product for NC columns: out[c * cp] = sum_r wt[r * cp] v[c * d + r].
  template <int NC>
  static void head_columns(const T* __restrict wt, Index cp, Index d, const T* __restrict v,
                           T* __restrict out) {
    namespace ei = Eigen::internal;
    Packet acc[NC];  // a plain array: std::array would drop the vector type's attributes
    for (int c = 0; c < NC; ++c) acc[c] = ei::pset1<Packet>(T(0));
    for (Index r = 0; r < d; ++r) {
      const Packet w = ei::ploadu<Packet>(wt + r * cp);
      for (int c = 0; c < NC; ++c) acc[c] = ei::pmadd(w, ei::pset1<Packet>(v[c * d + r]), acc[c]);
    }
    for (int c = 0; c < NC; ++c) ei::pstoreu(out + c * cp, acc[c]);
  }

  /// One tile of one last-block node and up to four of its final streams (final norm).
  struct NodeTile {
    Index d = 0, cp = 0;
    T inv_d = 0, eps = 0, c = 0;                    // c = S / |G|
    const T* beta = nullptr;                        // head^T * final norm bias, (cp)
    int nterms = 0;                                 // the node's centred per-shard products:
    std::array<const T*, std::size_t(S)> terms{};   // (d, tile) each
    std::array<const T*, std::size_t(S)> hterms{};  // and their head products, (cp, tile) each
    int streams = 0;                                // final streams, 1 to 4:
    std::array<T*, 4> out{};                        // its head_ tile, (cp, tile)
    std::array<const T*, 4> hu{};                   // head'(u - mean u), (cp, tile)
    std::array<const T*, 4> u{};                    // u - mean u, (d, tile)
    std::array<const T*, 4> uvar{};                 // var(u), (tile)
  };

  /// Column j of one NodeTile: Z - mean Z = sum of the terms (in their order, in
  /// registers), its squared norm and its dot product with each stream's u - mean u, then
  ///   var(Y) = var(u) + c^2 var(Z) + 2c <u - mean u, Z - mean Z> / d
  ///   out    = rstd * (head'(u - mean u) + c head'(Z - mean Z)) + head^T beta.
  /// The sums go packet-wide (Eigen's SIMD packets, unaligned loads) plus a scalar tail in
  /// a fixed order, so a column's value does not depend on where it sits in memory.
  template <int NP>
  static void node_column(const NodeTile& t, Index j) {
    namespace ei = Eigen::internal;
    const Index d = t.d;
    const Index dv = d / packet * packet;
    const Index o = j * d;
    Packet zz = ei::pset1<Packet>(T(0));
    Packet dp[NP];  // a plain array: std::array would drop the vector type's attributes
    for (int q = 0; q < NP; ++q) dp[q] = zz;
    for (Index r = 0; r < dv; r += packet) {
      Packet z = ei::ploadu<Packet>(t.terms[0] + o + r);
      for (int k = 1; k < t.nterms; ++k) z = ei::padd(z, ei::ploadu<Packet>(t.terms[idx(k)] + o + r));
      zz = ei::pmadd(z, z, zz);
      for (int q = 0; q < NP; ++q) dp[q] = ei::pmadd(ei::ploadu<Packet>(t.u[idx(q)] + o + r), z, dp[q]);
    }
    T zsq = ei::predux(zz);
    T dot[NP];
    for (int q = 0; q < NP; ++q) dot[q] = ei::predux(dp[q]);
    for (Index r = dv; r < d; ++r) {
      T z = t.terms[0][o + r];
      for (int k = 1; k < t.nterms; ++k) z += t.terms[idx(k)][o + r];
      zsq += z * z;
      for (int q = 0; q < NP; ++q) dot[q] += t.u[idx(q)][o + r] * z;
    }
    const T zvar = zsq * t.inv_d;
    T rs[NP];
    for (int q = 0; q < NP; ++q) {
      const T var = t.uvar[idx(q)][j] + t.c * t.c * zvar + T(2) * t.c * dot[q] * t.inv_d;
      rs[q] = T(1) / std::sqrt(var + t.eps);
    }
    const Packet c = ei::pset1<Packet>(t.c);
    const Index h = j * t.cp;
    for (Index cl = 0; cl < t.cp; cl += packet) {
      Packet hz = ei::ploadu<Packet>(t.hterms[0] + h + cl);
      for (int k = 1; k < t.nterms; ++k) hz = ei::padd(hz, ei::ploadu<Packet>(t.hterms[idx(k)] + h + cl));
      const Packet chz = ei::pmul(c, hz);
      const Packet beta = ei::ploadu<Packet>(t.beta + cl);
      for (int q = 0; q < NP; ++q)
        ei::pstoreu(t.out[idx(q)] + h + cl,
                    ei::padd(ei::pmul(ei::pset1<Packet>(rs[q]),
                                      ei::padd(ei::ploadu<Packet>(t.hu[idx(q)] + h + cl), chz)),
                             beta));
    }
  }

  /// Cross-entropy and correct predictions of the nj columns of a padded logits tile lt
  /// ((padded classes, nj)) of logits buffer f, into tile_scores_[tile][f]. Columns go a
  /// packet at a time, transposed into `scratch` ((classes, packet)) so that a
  /// lane is a column and every step is vertical: the maximum, exp (Eigen's SIMD exp in
  /// float), the sum and the first largest logit are computed for `packet` columns at
  /// once, with no horizontal reductions and no data-dependent branches. A last, partial
  /// packet repeats its last column; lanes never mix, so a column's value does not depend
  /// on where it sits in the tile.
  void score_tile(std::size_t f, Index tile, const T* lt, Index nj, std::span<const std::int32_t> labels,
                  T* __restrict scratch) {
    namespace ei = Eigen::internal;
    const Index classes = config_.classes;
    const Index cp = padded_classes();
    T zmax[packet], sum[packet], best[packet];  // per lane (column)
    Score sc;
    for (Index j0 = 0; j0 < nj; j0 += packet) {
      const Index nc = std::min(packet, nj - j0);
      for (Index i = 0; i < packet; ++i) {
        const T* __restrict z = lt + (j0 + std::min(i, nc - 1)) * cp;
        for (Index c = 0; c < classes; ++c) scratch[c * packet + i] = z[c];
      }
      const auto row = [&](Index c) { return ei::ploadu<Packet>(scratch + c * packet); };
      Packet mx = row(0);
      for (Index c = 1; c < classes; ++c) mx = ei::pmax(mx, row(c));
      Packet arg = ei::pset1<Packet>(T(classes - 1));  // the first largest logit, as a value
      for (Index c = classes - 2; c >= 0; --c)
        arg = ei::pselect(ei::pcmp_eq(row(c), mx), ei::pset1<Packet>(T(c)), arg);
      ei::pstoreu(zmax, mx);
      ei::pstoreu(best, arg);
      if constexpr (std::is_same_v<T, float>) {
        Packet acc = ei::pexp(ei::psub(row(0), mx));
        for (Index c = 1; c < classes; ++c) acc = ei::padd(acc, ei::pexp(ei::psub(row(c), mx)));
        ei::pstoreu(sum, ei::plog(acc));
      } else {  // GCC 12 warns inside its AVX-512 intrinsics for Eigen's double pexp
        for (Index i = 0; i < packet; ++i) {
          T acc = 0;
          for (Index c = 0; c < classes; ++c) acc += std::exp(scratch[c * packet + i] - zmax[i]);
          sum[i] = std::log(acc);
        }
      }
      // loss = log(sum exp(z - zmax)) - (z_y - zmax)
      for (Index i = 0; i < nc; ++i) {
        const auto y = static_cast<Index>(labels[idx(int(j0 + i))]);
        sc.loss_sum += double(sum[i] - (lt[(j0 + i) * cp + y] - zmax[i]));
        sc.correct += best[i] == T(y) ? 1 : 0;
      }
    }
    tile_scores_[idx(int(tile))][f] = sc;
  }

  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr Index packet = Eigen::internal::unpacket_traits<Packet>::size;

  /// u = x + b (d values each), centred; returns its variance (mean square after centring,
  /// as the backend's LayerNorm computes it). Two passes: the sum while writing u, then the
  /// centring and the sum of squares. Each sum goes in two packet-wide partial sums (Eigen's
  /// SIMD packets, unaligned loads) plus a scalar tail, combined in a fixed order: fast, and
  /// the same bits wherever the column sits in memory (unlike Eigen's own reductions, which
  /// start at an aligned address).
  static T add_center(const T* __restrict x, const T* __restrict b, T* __restrict u, Index d, T inv_d) {
    namespace ei = Eigen::internal;
    const Packet zero = ei::pset1<Packet>(T(0));
    Packet s0 = zero, s1 = zero;
    Index r = 0;
    for (; r + 2 * packet <= d; r += 2 * packet) {
      const Packet a0 = ei::padd(ei::ploadu<Packet>(x + r), ei::ploadu<Packet>(b + r));
      const Packet a1 = ei::padd(ei::ploadu<Packet>(x + r + packet), ei::ploadu<Packet>(b + r + packet));
      ei::pstoreu(u + r, a0);
      ei::pstoreu(u + r + packet, a1);
      s0 = ei::padd(s0, a0);
      s1 = ei::padd(s1, a1);
    }
    T tail = 0;
    for (; r < d; ++r) {
      u[r] = x[r] + b[r];
      tail += u[r];
    }
    const T mu = (ei::predux(ei::padd(s0, s1)) + tail) * inv_d;
    const Packet m = ei::pset1<Packet>(mu);
    Packet q0 = zero, q1 = zero;
    for (r = 0; r + 2 * packet <= d; r += 2 * packet) {
      const Packet a0 = ei::psub(ei::ploadu<Packet>(u + r), m);
      const Packet a1 = ei::psub(ei::ploadu<Packet>(u + r + packet), m);
      ei::pstoreu(u + r, a0);
      ei::pstoreu(u + r + packet, a1);
      q0 = ei::padd(q0, ei::pmul(a0, a0));
      q1 = ei::padd(q1, ei::pmul(a1, a1));
    }
    T qtail = 0;
    for (; r < d; ++r) {
      u[r] -= mu;
      qtail += u[r] * u[r];
    }
    return (ei::predux(ei::padd(q0, q1)) + qtail) * inv_d;
  }

  /// The backend's LayerNorm (the same Eigen expression, column by column) into a tile.
  static void final_norm(MatView<const T> x, const T* w, const T* b, MatView<T> y, T eps) {
    const Index d = x.rows;
    const auto ww = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(w, d);
    const auto bb = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(b, d);
    for (Index j = 0; j < x.cols; ++j) {
      const auto xc = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(&x(0, j), d);
      const T mu = xc.mean();
      const T var = (xc - mu).square().mean();
      const T rs = T(1) / std::sqrt(var + eps);
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(&y(0, j), d) = (xc - mu) * rs * ww + bb;
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
  std::vector<int> final_inputs_;       // values of the last block's input streams that final pairs read
  std::vector<FinalTerm> final_terms_;  // the last block's per-shard products that final nodes sum
  std::size_t final_pairs_ = 0;  // final streams computed in the tile (sum of finals over final_nodes_)
  std::vector<bool> stored_;     // per value: held in vals_ (not a tile-computed final stream)
  std::vector<int> logits_of_;   // per structure: its logits buffer

  Index batch_ = 0;            // columns of the workspace (one block)
  Index block_ = column_task;  // samples per block of forward(x): by default one tile per thread
  // The workspace of one block of samples: views into arena_ (see ensure_workspace).
  Eigen::Matrix<T, Eigen::Dynamic, 1> arena_;
  std::vector<MatView<T>> vals_;  // per value: (d, block) where stored, else empty
  std::vector<BlockWorkspace> block_ws_;
  MatView<T> head_;                  // (padded classes, final streams * block), padding rows 0
  std::vector<MatView<T>> tile_;     // per column task: normed final streams (d, tile)
  std::vector<EigenMat<T>> logits_;  // per logits buffer (classes, batch), if keep_logits_
  bool keep_logits_ = true;
  std::vector<T> mean_, rstd_;
  std::vector<MatView<T>> tile_head_;                      // per column task: head^T (tile, classes)
  std::vector<MatView<T>> z_tile_;                         // per column task: a node's sum Z (d, tile)
  std::vector<std::vector<MatView<const T>>> tile_terms_;  // per column task
  // The last block's final streams by linearity (see forward()), per column task:
  std::vector<MatView<T>> ubar_;  // centred u = x + b of every final input (d, tile * inputs)
  std::vector<MatView<T>> hu_;    // head'(u) of every final input (padded classes, tile * inputs)
  std::vector<MatView<T>> hp_;    // head'(P_j) of every final term (padded classes, tile * terms)
  std::vector<MatView<T>> hz_;    // head(Z) of one node (padded classes, tile), without final norm
  std::vector<std::vector<NodeTile>> node_jobs_;  // per column task: the last block's nodes, with final norm
  std::vector<MatView<T>> uvar_;                  // var(u) of every final input (tile * inputs, 1)
  std::span<const T> params_;                     // of the last set_params()
  std::vector<MatView<T>> logit_tile_;           // per column task: logits of one tile (padded classes, tile)
  std::vector<MatView<T>> score_tr_;             // per column task: score_tile's scratch (classes, packet)
  std::vector<std::vector<Score>> tile_scores_;  // per column task and logits buffer
  std::vector<Score> scores_;                    // per logits buffer
  typename CpuBackend<T>::PackedTn embed_pack_;
  std::vector<std::vector<typename CpuBackend<T>::PackedTn>> up_pack_;    // per block and up group
  std::vector<std::vector<typename CpuBackend<T>::PackedTn>> down_pack_;  // per block and shard
  EigenMat<T> head_wt_;       // head'^T, (padded classes, d): column r holds row r of head' for every class
  std::vector<T> head_beta_;  // head^T * final norm bias, (padded classes, zeros past classes)
  std::vector<T> head_b_;     // the head's bias, (padded classes, zeros past classes)
};

}  // namespace cpu

/// GEMM FLOPs per sample of both methods for a mask list (walks the plan, computes nothing).
template <Family F>
EvalFlops evaluate_flops(const MlpConfig& config, const std::vector<std::uint64_t>& masks) {
  return cpu::PrefixTreeForward<F, float>(config, masks).flops();
}

/// cpu::MlpModel's all-structure evaluator: the prefix tree.
template <Family F, class T>
struct all_structure_evaluator<cpu::MlpModel<F, T>> {
  using type = cpu::PrefixTreeForward<F, T>;
};

}  // namespace additive
