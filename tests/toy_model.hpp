// A second model family, for tests only: one gated block of two linear shards with a tanh
// before the head. It shares nothing with the MLP but the Model concept, so an engine that
// trains and searches it unchanged is generic over the model (issue: one engine for every
// model). Scalar loops, no backend: it is small on purpose.
//
//   e   = E x                                   (d)       embedding
//   P_j = B_j e                                 (d)       shard j's product, j = 0, 1
//   merge gate on:  y_0 = y_1 = e + (P_0 + P_1)  (one stream; S/|G| = 1)
//   merge gate off: y_j = e + 2 P_j               (two streams; S/|G| = 2)
//   branch gate off: y_0 = y_1 = e              (nothing computed)
//   logits = 1/2 sum_j (W tanh(y_j) + c)        (classes)
//
// With the merge gate on, the streams are equal; the tanh makes the merge gate matter.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"
#include "additive/nn/cost.hpp"
#include "additive/nn/model.hpp"

namespace additive::test {

struct ToyFamily : ShardedGates<2, 1, GateLayout::merge_and_branch> {
  static constexpr const char* name = "toy";
  static std::string describe() { return "toy-linear S=2 L=1"; }
};

struct ToyConfig {
  Index in_dim = 4;
  Index d = 3;
  Index classes = 3;
  friend bool operator==(const ToyConfig&, const ToyConfig&) = default;
};

inline void to_json(nlohmann::json& j, const ToyConfig& c) {
  j = nlohmann::json{{"in_dim", c.in_dim}, {"d", c.d}, {"classes", c.classes}};
}

template <class T>
class ToyModel {
 public:
  using family = ToyFamily;
  using scalar_type = T;
  using mask_type = ToyFamily::mask_type;
  using config_type = ToyConfig;
  template <class U>
  using rebind = ToyModel<U>;

  ToyModel(const ToyConfig& c, int /*threads*/) : config_(c), layout_(make_layout(c)) {}

  static ParamLayout make_layout(const ToyConfig& c) {
    ParamLayout p;
    p.add("embed.weight", {c.d, c.in_dim}, true);
    p.add("block.weight", {2, c.d, c.d}, true, ShardAxis{0, 2});
    p.add("head.weight", {c.classes, c.d}, true);
    p.add("head.bias", {c.classes}, false);
    return p;
  }

  static void init_params(const ToyConfig& c, std::uint64_t seed, std::span<T> flat) {
    const ParamLayout layout = make_layout(c);
    if (flat.size() != layout.total()) throw RuntimeError("ToyModel::init_params: wrong buffer size");
    std::mt19937_64 rng(seed);
    for (const auto& t : layout.tensors()) {
      const double scale = t.shape.size() == 1 ? 0.0 : 1.0 / std::sqrt(double(t.shape.back()));
      for (std::size_t i = 0; i < t.size; ++i)
        flat[t.offset + i] = static_cast<T>(scale * (double(rng() >> 11) * 0x1.0p-53 * 2 - 1));
    }
  }

  static StructureCost cost(const ToyConfig& c, mask_type m, Index) {
    const auto g = ToyFamily::block(m, 0);
    StructureCost s;
    const double dd = double(c.d);
    s.flops_per_sample = 2 * dd * double(c.in_dim) + (g.residual() ? 4 * dd * dd : 0) +
                         2 * dd * double(c.classes) * (g.residual() && g.cuts() ? 2 : 1);
    s.active_params = static_cast<std::int64_t>(c.d * c.in_dim + (g.residual() ? 2 * c.d * c.d : 0) +
                                                c.classes * c.d + c.classes);
    return s;
  }

  [[nodiscard]] const ToyConfig& config() const noexcept { return config_; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] Index input_dim() const noexcept { return config_.in_dim; }
  [[nodiscard]] Index num_classes() const noexcept { return config_.classes; }
  [[nodiscard]] std::vector<std::pair<std::size_t, std::size_t>> ready_ranges() const {
    return {{std::size_t{0}, layout_.total()}};
  }
  [[nodiscard]] MatView<const T> logits() const noexcept {
    return MatView<const T>(logits_.data(), config_.classes, batch_);
  }

  T forward(mask_type m, std::span<const T> params, MatView<const T> x,
            std::span<const std::int32_t> labels) {
    const Index d = config_.d, k = config_.classes;
    if (x.rows != config_.in_dim || static_cast<Index>(labels.size()) != x.cols || x.cols < 1)
      throw InputError("toy model: batch does not match the model");
    mask_ = m;
    batch_ = x.cols;
    x_.resize(static_cast<std::size_t>(x.rows * x.cols));  // (in_dim, batch), packed
    for (Index s = 0; s < x.cols; ++s)
      for (Index c = 0; c < x.rows; ++c) x_[static_cast<std::size_t>(s * x.rows + c)] = x(c, s);
    labels_.assign(labels.begin(), labels.end());
    e_.assign(static_cast<std::size_t>(d * batch_), T(0));
    t_.assign(static_cast<std::size_t>(2 * d * batch_), T(0));
    logits_.assign(static_cast<std::size_t>(k * batch_), T(0));
    dlogits_.assign(logits_.size(), T(0));
    const auto g = ToyFamily::block(m, 0);
    double loss = 0;
    for (Index s = 0; s < batch_; ++s) {
      T* e = &e_[static_cast<std::size_t>(s * d)];
      for (Index i = 0; i < d; ++i) {
        T acc = 0;
        for (Index c = 0; c < config_.in_dim; ++c) acc += E(params, i, c) * x(c, s);
        e[i] = acc;
      }
      for (int j = 0; j < 2; ++j) {
        T* t = &t_[static_cast<std::size_t>((2 * s + j) * d)];
        for (Index i = 0; i < d; ++i) {
          T y = e[i];
          if (g.residual()) {
            if (g.cuts() == 0) {
              for (Index c = 0; c < d; ++c) y += (B(params, 0, i, c) + B(params, 1, i, c)) * e[c];
            } else {
              for (Index c = 0; c < d; ++c) y += 2 * B(params, j, i, c) * e[c];
            }
          }
          t[i] = std::tanh(y);
        }
      }
      T* z = &logits_[static_cast<std::size_t>(s * k)];
      for (Index o = 0; o < k; ++o) {
        T acc = 0;
        for (int j = 0; j < 2; ++j)
          for (Index i = 0; i < d; ++i)
            acc += W(params, o, i) * t_[static_cast<std::size_t>((2 * s + j) * d + i)];
        z[o] = acc / 2 + params[c_offset() + static_cast<std::size_t>(o)];
      }
      T mx = *std::max_element(z, z + k);
      double sum = 0;
      for (Index o = 0; o < k; ++o) sum += std::exp(double(z[o] - mx));
      const std::int32_t y = labels_[static_cast<std::size_t>(s)];
      loss += std::log(sum) + double(mx) - double(z[y]);
      for (Index o = 0; o < k; ++o)
        dlogits_[static_cast<std::size_t>(s * k + o)] =
            static_cast<T>((std::exp(double(z[o] - mx)) / sum - (o == y ? 1.0 : 0.0)) / double(batch_));
    }
    return static_cast<T>(loss / double(batch_));
  }

  /// Contract: writes (=) every element of grads; one ready range, the whole buffer.
  template <GradientReadyCallback OnReady>
  void backward(std::span<const T> params, std::span<T> grads, OnReady&& on_ready) {
    if (batch_ == 0) throw RuntimeError("ToyModel::backward called before forward");
    std::fill(grads.begin(), grads.end(), T(0));
    const Index d = config_.d, k = config_.classes;
    const auto g = ToyFamily::block(mask_, 0);
    std::vector<T> dy(static_cast<std::size_t>(2 * d)), de(static_cast<std::size_t>(d));
    for (Index s = 0; s < batch_; ++s) {
      const T* dz = &dlogits_[static_cast<std::size_t>(s * k)];
      for (Index o = 0; o < k; ++o) grads[c_offset() + static_cast<std::size_t>(o)] += dz[o];
      for (int j = 0; j < 2; ++j)
        for (Index i = 0; i < d; ++i) {
          const T t = t_[static_cast<std::size_t>((2 * s + j) * d + i)];
          T dt = 0;
          for (Index o = 0; o < k; ++o) {
            dt += W(params, o, i) * dz[o] / 2;
            grads[w_offset() + static_cast<std::size_t>(o * d + i)] += dz[o] * t / 2;
          }
          dy[static_cast<std::size_t>(j * d + i)] = dt * (1 - t * t);
        }
      const T* e = &e_[static_cast<std::size_t>(s * d)];
      for (Index i = 0; i < d; ++i)
        de[static_cast<std::size_t>(i)] =
            dy[static_cast<std::size_t>(i)] + dy[static_cast<std::size_t>(d + i)];
      if (g.residual()) {
        for (int j = 0; j < 2; ++j)
          for (Index i = 0; i < d; ++i) {
            // merged: y_0 = y_1 = e + sum_j B_j e, so dP_j = dy_0 + dy_1; split: dP_j = 2 dy_j
            const T dp = g.cuts() == 0 ? dy[static_cast<std::size_t>(i)] + dy[static_cast<std::size_t>(d + i)]
                                       : 2 * dy[static_cast<std::size_t>(j * d + i)];
            for (Index c = 0; c < d; ++c) {
              grads[b_offset() + static_cast<std::size_t>((j * d + i) * d + c)] += dp * e[c];
              de[static_cast<std::size_t>(c)] += dp * B(params, j, i, c);
            }
          }
      }
      for (Index i = 0; i < d; ++i)
        for (Index c = 0; c < config_.in_dim; ++c)
          grads[static_cast<std::size_t>(i * config_.in_dim + c)] +=
              de[static_cast<std::size_t>(i)] * x_[static_cast<std::size_t>(s * config_.in_dim + c)];
    }
    on_ready(std::size_t{0}, grads.size());
  }

  void backward(std::span<const T> params, std::span<T> grads) {
    backward(params, grads, [](std::size_t, std::size_t) {});
  }

 private:
  [[nodiscard]] std::size_t b_offset() const { return static_cast<std::size_t>(config_.d * config_.in_dim); }
  [[nodiscard]] std::size_t w_offset() const {
    return b_offset() + static_cast<std::size_t>(2 * config_.d * config_.d);
  }
  [[nodiscard]] std::size_t c_offset() const {
    return w_offset() + static_cast<std::size_t>(config_.classes * config_.d);
  }
  T E(std::span<const T> p, Index i, Index c) const {
    return p[static_cast<std::size_t>(i * config_.in_dim + c)];
  }
  T B(std::span<const T> p, int j, Index i, Index c) const {
    return p[b_offset() + static_cast<std::size_t>((j * config_.d + i) * config_.d + c)];
  }
  T W(std::span<const T> p, Index o, Index i) const {
    return p[w_offset() + static_cast<std::size_t>(o * config_.d + i)];
  }

  ToyConfig config_;
  ParamLayout layout_;
  mask_type mask_{};
  Index batch_ = 0;
  std::vector<T> x_, e_, t_, logits_, dlogits_;
  std::vector<std::int32_t> labels_;
};

static_assert(HostModel<ToyModel<float>>);
static_assert(RebindableModel<ToyModel<float>>);
static_assert(!PerSampleModel<ToyModel<float>>, "the toy family has no per-sample path");

}  // namespace additive::test
