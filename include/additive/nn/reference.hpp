// The run-time-gated reference path: the MLP family of DESIGN section 2 written as plain
// loops over any scalar type, reading the mask at run time. It is the oracle the tests
// hold the fast paths to; it makes no attempt to be fast.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/structure.hpp"
#include "additive/nn/mlp.hpp"

namespace additive::reference {

namespace detail {

template <class T>
using Columns = std::vector<T>;  // column-major (rows, batch)

/// Per-column LayerNorm over `rows`.
template <class T>
Columns<T> layernorm(const Columns<T>& x, Index rows, Index batch, const T* w, const T* b, double eps) {
  using std::sqrt;
  Columns<T> y(x.size());
  for (Index j = 0; j < batch; ++j) {
    const T* xc = &x[static_cast<std::size_t>(j * rows)];
    T mean = T(0);
    for (Index i = 0; i < rows; ++i) mean += xc[i];
    mean /= T(rows);
    T var = T(0);
    for (Index i = 0; i < rows; ++i) var += (xc[i] - mean) * (xc[i] - mean);
    var /= T(rows);
    const T rstd = T(1) / sqrt(var + T(eps));
    for (Index i = 0; i < rows; ++i)
      y[static_cast<std::size_t>(j * rows + i)] = (xc[i] - mean) * rstd * w[i] + b[i];
  }
  return y;
}

template <class T>
T gelu(T u) {
  using std::erf;
  using std::sqrt;
  return u * T(0.5) * (T(1) + erf(u / sqrt(T(2))));
}

}  // namespace detail

/// Logits (classes, batch), column-major, of structure m. x: (in_dim, batch) column-major.
template <Family F, class T>
std::vector<T> logits(const MlpConfig& c, typename F::mask_type m, std::span<const T> params,
                      std::span<const T> x, Index batch) {
  using detail::Columns;
  constexpr int S = F::shards;
  const MlpParamViews<const T> p(c, F::blocks, params);
  const Index d = c.d;
  const Index hs = c.h / S;
  const auto at = [](Index i) { return static_cast<std::size_t>(i); };
  if (static_cast<Index>(x.size()) != c.in_dim * batch)
    throw InputError("reference: input size does not match");

  // stream_of[j]: the stream shard j reads, as (d, batch) columns. Initially one stream.
  Columns<T> embedded(at(d * batch));
  for (Index n = 0; n < batch; ++n)
    for (Index i = 0; i < d; ++i) {
      T acc = p.embed_b[i];
      for (Index k = 0; k < c.in_dim; ++k) acc += p.embed_t(k, i) * x[at(n * c.in_dim + k)];
      embedded[at(n * d + i)] = acc;
    }
  std::vector<Columns<T>> stream_of(S, embedded);

  for (int l = 0; l < F::blocks; ++l) {
    const auto gates = F::block(m, l);
    if (!gates.residual()) continue;  // skipped: Y_j = X_j
    const auto& bp = p.blocks[at(l)];
    // H_j = gelu(A_j norm(X_j) + a_j) for every shard, each from its own stream.
    Columns<T> hid(at(c.h * batch));
    for (int j = 0; j < S; ++j) {
      const auto xn = detail::layernorm(stream_of[at(j)], d, batch, bp.norm_w, bp.norm_b, c.norm_eps);
      for (Index n = 0; n < batch; ++n)
        for (Index r = j * hs; r < (j + 1) * hs; ++r) {
          T acc = bp.up_b[r];
          for (Index k = 0; k < d; ++k) acc += bp.up_t(k, r) * xn[at(n * d + k)];
          hid[at(n * c.h + r)] = detail::gelu(acc);
        }
    }
    // Z_G = (S/|G|) sum_{j in G} B_j H_j + b;  Y_j = X_j + Z_seg(j).
    std::vector<Columns<T>> next(S);
    for (const Segment g : gates.segments()) {
      Columns<T> z(at(d * batch));
      const T scale = T(S) / T(g.size);
      for (Index n = 0; n < batch; ++n)
        for (Index i = 0; i < d; ++i) {
          T acc = T(0);
          for (Index r = g.first * hs; r < g.last() * hs; ++r) acc += bp.down_t(r, i) * hid[at(n * c.h + r)];
          z[at(n * d + i)] = scale * acc + bp.down_b[i];
        }
      for (int j = g.first; j < g.last(); ++j) {
        next[at(j)] = stream_of[at(j)];
        for (std::size_t e = 0; e < z.size(); ++e) next[at(j)][e] += z[e];
      }
    }
    stream_of = std::move(next);
  }

  // logits = (1/S) sum_j head(final_norm(Y_j)).
  std::vector<T> out(at(c.classes * batch), T(0));
  for (int j = 0; j < S; ++j) {
    const auto yn = F::final_norm == FinalNorm::per_stream
                        ? detail::layernorm(stream_of[at(j)], d, batch, p.final_w, p.final_b, c.norm_eps)
                        : stream_of[at(j)];
    for (Index n = 0; n < batch; ++n)
      for (Index o = 0; o < c.classes; ++o) {
        T acc = p.head_b[o];
        for (Index k = 0; k < d; ++k) acc += p.head_t(k, o) * yn[at(n * d + k)];
        out[at(n * c.classes + o)] += acc / T(S);
      }
  }
  return out;
}

/// Mean softmax cross-entropy of column-major logits (classes, batch).
template <class T>
T cross_entropy(std::span<const T> logits, std::span<const std::int32_t> labels, Index classes) {
  using std::exp;
  using std::log;
  const auto batch = static_cast<Index>(labels.size());
  T total = T(0);
  for (Index n = 0; n < batch; ++n) {
    const T* z = logits.data() + n * classes;
    T zmax = z[0];
    for (Index o = 1; o < classes; ++o) zmax = z[o] > zmax ? z[o] : zmax;
    T s = T(0);
    for (Index o = 0; o < classes; ++o) s += exp(z[o] - zmax);
    total += log(s) - (z[labels[static_cast<std::size_t>(n)]] - zmax);
  }
  return total / T(batch);
}

}  // namespace additive::reference
