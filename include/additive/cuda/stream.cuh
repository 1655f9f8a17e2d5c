// RAII for CUDA streams and events, and the device query the GPU tests skip on.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "additive/cuda/error.cuh"

namespace additive::cuda {

/// Number of usable devices; 0 (never an exception) when there is no device or driver.
[[nodiscard]] inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// An owned non-blocking stream (does not synchronise with the legacy default stream).
class Stream {
 public:
  Stream() { ADDITIVE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (stream_ != nullptr) ADDITIVE_CUDA_LOG(cudaStreamDestroy(stream_));
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept {
    if (this != &other) {
      if (stream_ != nullptr) ADDITIVE_CUDA_LOG(cudaStreamDestroy(stream_));
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }

  [[nodiscard]] cudaStream_t get() const noexcept { return stream_; }
  operator cudaStream_t() const noexcept { return stream_; }  // NOLINT: a handle converts
  void synchronize() const { ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

/// An owned event; `timing` events can measure elapsed time, the others are cheaper.
class Event {
 public:
  explicit Event(bool timing = false) {
    ADDITIVE_CUDA_CHECK(
        cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  }
  ~Event() {
    if (event_ != nullptr) ADDITIVE_CUDA_LOG(cudaEventDestroy(event_));
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept {
    if (this != &other) {
      if (event_ != nullptr) ADDITIVE_CUDA_LOG(cudaEventDestroy(event_));
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }

  [[nodiscard]] cudaEvent_t get() const noexcept { return event_; }
  void record(cudaStream_t stream) { ADDITIVE_CUDA_CHECK(cudaEventRecord(event_, stream)); }
  /// Orders `stream` after this event's last record, without blocking the host.
  void make_wait(cudaStream_t stream) const { ADDITIVE_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }
  void synchronize() const { ADDITIVE_CUDA_CHECK(cudaEventSynchronize(event_)); }
  /// Milliseconds from `start` to this event (both timing events, both completed).
  [[nodiscard]] float elapsed_ms_since(const Event& start) const {
    float ms = 0;
    ADDITIVE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace additive::cuda
