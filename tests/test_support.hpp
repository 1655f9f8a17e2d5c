// Shared helpers for the model tests: random parameters, inputs and labels that make
// every term of the model matter (no near-zero residual branches, no unit norms).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "additive/core/view.hpp"
#include "additive/data/dataset.hpp"
#include "additive/nn/mlp.hpp"

namespace additive::test {

/// Uniform(-scale, scale) everywhere, norm weights around 1: a "random model".
template <class T>
std::vector<T> random_params(const ParamLayout& layout, std::uint64_t seed, double scale = 0.5) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<T> p(layout.total());
  for (const auto& t : layout.tensors())
    for (std::size_t i = 0; i < t.size; ++i)
      p[t.offset + i] = static_cast<T>(t.name.ends_with("norm.weight") ? 1.0 + u(rng) : u(rng));
  return p;
}

template <class T>
std::vector<T> random_inputs(Index rows, Index batch, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> x(static_cast<std::size_t>(rows * batch));
  for (auto& v : x) v = static_cast<T>(u(rng));
  return x;
}

inline std::vector<std::int32_t> random_labels(Index batch, Index classes, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> y(static_cast<std::size_t>(batch));
  for (auto& v : y) v = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(classes));
  return y;
}

template <class T>
double max_abs_diff(std::span<const T> a, std::span<const T> b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

template <class T>
double max_abs(std::span<const T> a) {
  double m = 0;
  for (auto v : a) m = std::max(m, std::abs(double(v)));
  return m;
}

/// A learnable synthetic image set for the engine tests: `count` 4x5 "images" of 4 classes,
/// the label is which quarter of the pixels (p % 4) is brighter by `bright`.
inline ImageDataset synthetic_images(std::int64_t count, std::uint64_t seed, int bright = 90) {
  ImageDataset ds{count, 4, 5, 4, {}, {}};
  std::mt19937_64 rng(seed);
  for (std::int64_t i = 0; i < count; ++i) {
    const auto label = static_cast<std::uint8_t>(rng() % 4);
    for (int p = 0; p < 20; ++p)
      ds.pixels.push_back(static_cast<std::uint8_t>(rng() % 128 + ((p % 4) == label ? bright : 0)));
    ds.labels.push_back(label);
  }
  return ds;
}

/// Logits of a view as a column-major vector.
template <class T>
std::vector<T> to_vector(MatView<const T> v) {
  std::vector<T> out;
  out.reserve(static_cast<std::size_t>(v.rows * v.cols));
  for (Index j = 0; j < v.cols; ++j)
    for (Index i = 0; i < v.rows; ++i) out.push_back(v(i, j));
  return out;
}

}  // namespace additive::test
