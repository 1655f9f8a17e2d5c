// The sharded MLP family of DESIGN section 2: its compile-time gate structure, its
// run-time widths, the layout of its flat parameter buffer and a seeded initialisation.
// Backends (cpu/, cuda/) and the reference path (nn/reference.hpp) read parameters
// through `MlpParamViews`, so every implementation sees the same tensors.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"

namespace additive {

/// Whether the model norms each final stream before the head. `none` exists to show
/// why the shipped families have the norm: without it, the last block's merge gates
/// cancel out (DESIGN property 3) and the structure search finds the duplicates.
enum class FinalNorm { per_stream, none };

/// The MLP family: S shards, L blocks, gate layout, final norm (see docs/design-notes.md).
template <int S, int L, GateLayout Layout = GateLayout::merge_and_branch,
          FinalNorm Final = FinalNorm::per_stream>
struct MlpFamily : ShardedGates<S, L, Layout> {
  static constexpr const char* name = "mlp";
  static constexpr FinalNorm final_norm = Final;

  /// "mlp S=4 L=2 merge_only", the text checkpoints and reports identify the family by.
  static std::string describe() {
    return std::string(name) + " S=" + std::to_string(S) + " L=" + std::to_string(L) +
           (Layout == GateLayout::merge_only ? " merge_only" : " merge_and_branch") +
           (Final == FinalNorm::none ? " no_final_norm" : "");
  }
};

/// Run-time widths of an MLP model. h must divide into S shards.
struct MlpConfig {
  Index in_dim = 784;
  Index d = 256;
  Index h = 1024;
  Index classes = 10;
  double norm_eps = 1e-5;

  void validate(int shards) const {
    auto bad = [](const std::string& what) { throw InputError("model config: " + what); };
    if (in_dim < 1 || d < 1 || h < 1 || classes < 2) bad("in_dim, d and h must be >= 1 and classes >= 2");
    if (h % shards != 0)
      bad("h = " + std::to_string(h) + " does not split into " + std::to_string(shards) + " equal shards");
    if (!(norm_eps > 0)) bad("norm_eps must be > 0");
  }

  friend bool operator==(const MlpConfig&, const MlpConfig&) = default;
};

inline void to_json(nlohmann::json& j, const MlpConfig& c) {
  j = nlohmann::json{
      {"in_dim", c.in_dim}, {"d", c.d}, {"h", c.h}, {"classes", c.classes}, {"norm_eps", c.norm_eps}};
}
inline void from_json(const nlohmann::json& j, MlpConfig& c) {
  j.at("in_dim").get_to(c.in_dim);
  j.at("d").get_to(c.d);
  j.at("h").get_to(c.h);
  j.at("classes").get_to(c.classes);
  j.at("norm_eps").get_to(c.norm_eps);
}

/// The flat layout, in the order and with the names of docs/design-notes.md. With
/// `shards`, the tensors cut into shards say so: up.weight and up.bias along their rows
/// (shard j's hidden units), down.weight along its columns.
inline ParamLayout mlp_layout(const MlpConfig& c, int blocks, int shards = 1) {
  const ShardAxis hidden_rows{0, shards}, hidden_cols{1, shards};
  ParamLayout p;
  p.add("embed.weight", {c.d, c.in_dim}, true);
  p.add("embed.bias", {c.d}, false);
  for (int l = 0; l < blocks; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    p.add(b + "norm.weight", {c.d}, false);
    p.add(b + "norm.bias", {c.d}, false);
    p.add(b + "up.weight", {c.h, c.d}, true, hidden_rows);
    p.add(b + "up.bias", {c.h}, false, hidden_rows);
    p.add(b + "down.weight", {c.d, c.h}, true, hidden_cols);
    p.add(b + "down.bias", {c.d}, false);
  }
  p.add("final_norm.weight", {c.d}, false);
  p.add("final_norm.bias", {c.d}, false);
  p.add("head.weight", {c.classes, c.d}, true);
  p.add("head.bias", {c.classes}, false);
  return p;
}

/// Views of one block's tensors. Row-major (out, in) weights are seen column-major as
/// their transposes, so shard slices are column ranges of up_t and row ranges of down_t.
template <class T>
struct MlpBlockViews {
  T* norm_w;          // (d)
  T* norm_b;          // (d)
  MatView<T> up_t;    // A^T: (d, h), shard j = columns [j*hs, (j+1)*hs)
  T* up_b;            // a: (h)
  MatView<T> down_t;  // B^T: (h, d), shard j = rows [j*hs, (j+1)*hs)
  T* down_b;          // b: (d)
};

/// Views of every tensor of an MLP model inside a flat buffer (parameters or gradients).
template <class T>
struct MlpParamViews {
  MatView<T> embed_t;  // W_in^T: (in_dim, d)
  T* embed_b;          // (d)
  std::vector<MlpBlockViews<T>> blocks;
  T* final_w;         // (d)
  T* final_b;         // (d)
  MatView<T> head_t;  // W_out^T: (d, classes)
  T* head_b;          // (classes)

  MlpParamViews(const MlpConfig& c, int nblocks, std::span<T> flat) {
    const auto need = mlp_layout(c, nblocks).total();
    if (flat.size() != need)
      throw RuntimeError("MLP parameter buffer has " + std::to_string(flat.size()) +
                         " elements, layout needs " + std::to_string(need));
    T* p = flat.data();
    auto take = [&p](Index n) {
      T* q = p;
      p += n;
      return q;
    };
    embed_t = MatView<T>(take(c.d * c.in_dim), c.in_dim, c.d);
    embed_b = take(c.d);
    blocks.reserve(static_cast<std::size_t>(nblocks));
    for (int l = 0; l < nblocks; ++l) {
      MlpBlockViews<T> b{};
      b.norm_w = take(c.d);
      b.norm_b = take(c.d);
      b.up_t = MatView<T>(take(c.h * c.d), c.d, c.h);
      b.up_b = take(c.h);
      b.down_t = MatView<T>(take(c.d * c.h), c.h, c.d);
      b.down_b = take(c.d);
      blocks.push_back(b);
    }
    final_w = take(c.d);
    final_b = take(c.d);
    head_t = MatView<T>(take(c.classes * c.d), c.d, c.classes);
    head_b = take(c.classes);
  }
};

/// Standard normal draws that are the same on every standard library (Box-Muller over
/// the 53 high bits of mt19937_64), unlike std::normal_distribution.
class NormalStream {
 public:
  explicit NormalStream(std::uint64_t seed) : rng_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(rng_() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(rng_() >> 11) * 0x1.0p-53;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::mt19937_64 rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

/// Seeded initialisation of docs/design-notes.md: weights N(0, 1/fan_in), down.weight
/// N(0, 1/(h * 2L)), biases 0, norm weights 1. Writes (=) every element of `flat`.
template <class T>
void init_mlp_params(const MlpConfig& c, int nblocks, std::uint64_t seed, std::span<T> flat) {
  const ParamLayout layout = mlp_layout(c, nblocks);
  if (flat.size() != layout.total())
    throw RuntimeError("init_mlp_params: buffer size does not match the layout");
  NormalStream normal(seed);
  for (const auto& t : layout.tensors()) {
    T* p = flat.data() + t.offset;
    const bool is_norm_weight = t.name.ends_with("norm.weight");
    if (t.shape.size() == 1) {
      std::fill(p, p + t.size, is_norm_weight ? T(1) : T(0));
      continue;
    }
    const double fan_in = static_cast<double>(t.shape[1]);
    const double stddev = t.name.ends_with("down.weight")
                              ? std::sqrt(1.0 / (static_cast<double>(c.h) * 2.0 * nblocks))
                              : std::sqrt(1.0 / fan_in);
    for (std::size_t i = 0; i < t.size; ++i) p[i] = static_cast<T>(stddev * normal());
  }
}

/// Throws InputError unless x has the model's in_dim rows.
template <class T>
void check_mlp_input(const MlpConfig& c, MatView<const T> x) {
  if (x.rows != c.in_dim)
    throw InputError("input has " + std::to_string(x.rows) + " features, the model expects " +
                     std::to_string(c.in_dim));
}

/// Throws InputError unless x is (in_dim, batch >= 1) with one label in [0, classes) per sample.
template <class T>
void check_mlp_batch(const MlpConfig& c, MatView<const T> x, std::span<const std::int32_t> labels) {
  check_mlp_input(c, x);
  if (x.cols < 1 || static_cast<Index>(labels.size()) != x.cols)
    throw InputError("batch of " + std::to_string(x.cols) + " inputs has " + std::to_string(labels.size()) +
                     " labels");
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= c.classes)
      throw InputError("label " + std::to_string(labels[i]) + " of sample " + std::to_string(i) +
                       " is outside [0, " + std::to_string(c.classes) + ")");
}

}  // namespace additive
