// Shared helpers of the GPU benchmarks (benchmarks/bench_cuda_*.cu): synthetic data, a
// tiny flag parser, wall-clock timing and JSON lines. Not a benchmark itself (no main).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "additive/cuda/train.cuh"  // first: sets fmt up for nvcc
#include "additive/data/dataset.hpp"

namespace additive::bench {

/// `count` random 28x28 images with 10 random labels (the pixels' content does not change
/// the cost of a step).
inline ImageDataset random_images(std::int64_t count, std::uint64_t seed) {
  ImageDataset ds;
  ds.count = count;
  ds.rows = 28;
  ds.cols = 28;
  ds.num_classes = 10;
  std::mt19937_64 rng(seed);
  ds.pixels.resize(static_cast<std::size_t>(count * 784));
  ds.labels.resize(static_cast<std::size_t>(count));
  for (auto& p : ds.pixels) p = static_cast<std::uint8_t>(rng() & 0xff);
  for (auto& l : ds.labels) l = static_cast<std::uint8_t>(rng() % 10);
  return ds;
}

/// "--name value" from argv, or `fallback`.
inline std::string flag(int argc, char** argv, const char* name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return fallback;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Appends one JSON object (a line) to `path` when it is not empty.
inline void json_line(const std::string& path, const std::string& object) {
  if (path.empty()) return;
  if (std::FILE* f = std::fopen(path.c_str(), "a")) {
    std::fprintf(f, "%s\n", object.c_str());
    std::fclose(f);
  }
}

/// Exits 0 with a message where there is no device (CI builds these and may run them).
inline void require_device(const char* name) {
  if (cuda::device_count() > 0) return;
  std::printf("%s: skipped: no CUDA device\n", name);
  std::exit(0);
}

}  // namespace additive::bench
