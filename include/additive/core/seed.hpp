// Seed domains: every random stream of the library is one splitmix64 derivation of the
// user's seed, a domain constant (its name in ASCII) and an index. This is the ONE list of
// domains: the CPU trainer, the CUDA runner, co-training and the search all draw from
// here, which is what makes their runs with the same seed start alike.
//
//     derive_seed(seed, domain, k) = splitmix64(splitmix64(splitmix64(seed) ^ domain) ^ k)
//
// `std::mt19937_64` is specified bit for bit by the standard, so a stream seeded from
// here is the same on every standard library (the distributions are ours: data/dataset.hpp
// and nn/mlp.hpp's NormalStream).
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"

namespace additive {

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

constexpr std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t domain, std::uint64_t k) noexcept {
  return splitmix64(splitmix64(splitmix64(seed) ^ domain) ^ k);
}

/// The domains, by what they seed.
namespace seed_domain {
inline constexpr std::uint64_t shuffle = 0x73687566666C6500ULL;  ///< "shuffle": epoch orders (k = epoch)
inline constexpr std::uint64_t split = 0x76616C73706C6974ULL;    ///< "valsplit": validation split (k = n)
inline constexpr std::uint64_t train = 0x747261696EULL;          ///< "train": a trainer's RNG (epoch seeds)
inline constexpr std::uint64_t init = 0x696E6974ULL;             ///< "init": initial weights
inline constexpr std::uint64_t gates = 0x6761746573ULL;     ///< "gates": stochastic gate draws (k = step)
inline constexpr std::uint64_t sample = 0x73616D706C65ULL;  ///< "sample": a search's structure sample
inline constexpr std::uint64_t probe =
    0x70726F6265ULL;  ///< "probe": equivalence probes (k = 0 weights, 1 inputs)
inline constexpr std::uint64_t resample =
    0x726573616D706C65ULL;  ///< "resample": bootstrap resamples of the statistics (k = replicate)
inline constexpr std::uint64_t router =
    0x726F75746572ULL;  ///< "router": a router's weights (k = 0), epoch orders (1 + epoch)
inline constexpr std::uint64_t random_route =
    0x726E64726F757465ULL;  ///< "rndroute": random per-sample routings (k = replicate)
}  // namespace seed_domain

/// The seed of the initial weights of a run with training seed `seed`: every structure
/// trained with the same seed starts from the same weights.
constexpr std::uint64_t training_init_seed(std::uint64_t seed) noexcept {
  return derive_seed(seed, seed_domain::init, 0);
}

/// The seed of a trainer's RNG (it gives each epoch's order seed) for training seed `seed`.
constexpr std::uint64_t training_rng_seed(std::uint64_t seed) noexcept {
  return derive_seed(seed, seed_domain::train, 0);
}

/// The seed of the gate draws of step `step` of a run with training seed `seed`.
constexpr std::uint64_t gate_seed(std::uint64_t seed, std::int64_t step) noexcept {
  return derive_seed(seed, seed_domain::gates, static_cast<std::uint64_t>(step));
}

/// The seed of a search's structure sample.
constexpr std::uint64_t structure_sample_seed(std::uint64_t sample_seed) noexcept {
  return derive_seed(sample_seed, seed_domain::sample, 0);
}

/// A uniform integer in `[0, bound)`, `bound >= 1`, without bias: draws below
/// `2^64 mod bound` are rejected, so every residue is hit by the same number of draws.
inline std::uint64_t bounded_rand(std::mt19937_64& gen, std::uint64_t bound) {
  if (bound == 0) throw RuntimeError("bounded_rand: bound must be >= 1");
  const std::uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    const std::uint64_t r = gen();
    if (r >= threshold) return r % bound;
  }
}

/// The structures an engine considers: all `count` masks, or a seeded sample of `sample`
/// distinct ones (sample >= 1; -1: all), in increasing mask order. The sample is a partial
/// Fisher-Yates shuffle of [0, count) drawn from structure_sample_seed(sample_seed).
inline std::vector<std::uint64_t> structure_sample(std::uint64_t count, std::int64_t sample,
                                                   std::uint64_t sample_seed) {
  std::vector<std::uint64_t> all(count);
  for (std::uint64_t m = 0; m < count; ++m) all[m] = m;
  if (sample < 0) return all;
  std::mt19937_64 rng(structure_sample_seed(sample_seed));
  const auto k = std::min(static_cast<std::size_t>(sample), all.size());
  for (std::size_t i = 0; i < k; ++i)  // partial Fisher-Yates: the first k are the sample
    std::swap(all[i], all[i + bounded_rand(rng, all.size() - i)]);
  all.resize(k);
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace additive
