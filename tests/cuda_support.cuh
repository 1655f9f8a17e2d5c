// Shared helpers of the CUDA tests: the device check every GPU test case starts with, and
// relative comparisons of device results against the CPU backend's.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "additive/cuda/stream.cuh"

namespace additive::test {

/// True when a CUDA device exists; otherwise logs why the calling test case is skipped.
inline bool cuda_device_or_skip() {
  if (cuda::device_count() > 0) return true;
  MESSAGE("skipped: no CUDA device (cudaGetDeviceCount reports none); this GPU test passes vacuously");
  return false;
}

/// Skips the rest of the current test case where there is no device.
#define ADDITIVE_REQUIRE_CUDA_DEVICE() \
  if (!::additive::test::cuda_device_or_skip()) return

/// max |a - b| / max |b|; requires b to be non-trivial so that the comparison can fail.
template <class T>
double relative_error(std::span<const T> a, std::span<const T> b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  REQUIRE(scale > 0);
  return diff / scale;
}
template <class T>
double relative_error(const std::vector<T>& a, const std::vector<T>& b) {
  return relative_error(std::span<const T>(a), std::span<const T>(b));
}

}  // namespace additive::test
