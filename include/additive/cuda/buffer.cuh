// DeviceBuffer<T>: an owned, move-only array in device memory with an explicit deep copy
// (clone) and host transfers. Running out of memory throws DeviceOutOfMemory naming the
// size asked for; the destructor never throws (a failed cudaFree is logged).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/view.hpp"
#include "additive/cuda/error.cuh"

namespace additive::cuda {

template <class T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>,
                "DeviceBuffer<T>: T must be trivially copyable (it is moved by cudaMemcpy)");

 public:
  DeviceBuffer() = default;
  /// n elements, uninitialised.
  explicit DeviceBuffer(std::size_t n) : size_(n) {
    if (n == 0) return;
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes());
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      std::size_t free_bytes = 0, total_bytes = 0;
      if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) (void)cudaGetLastError();
      size_ = 0;
      throw DeviceOutOfMemory(n * sizeof(T), free_bytes, total_bytes);
    }
    if (status != cudaSuccess) size_ = 0;
    ADDITIVE_CUDA_CHECK(status);
    data_ = static_cast<T*>(p);
  }
  ~DeviceBuffer() { release(); }

  DeviceBuffer(const DeviceBuffer&) = delete;             // deep copies are explicit: clone()
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;  // ditto
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  /// A new buffer with the same contents (ordered on `stream`; returns after it is done).
  [[nodiscard]] DeviceBuffer clone(cudaStream_t stream = nullptr) const {
    DeviceBuffer copy(size_);
    if (size_ > 0) {
      ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(copy.data_, data_, bytes(), cudaMemcpyDeviceToDevice, stream));
      ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    return copy;
  }

  /// Copies host.size() == size() elements in; returns when the copy is done.
  void upload(std::span<const T> host, cudaStream_t stream = nullptr) {
    check_same_size(host.size(), "upload");
    if (size_ == 0) return;
    ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(data_, host.data(), bytes(), cudaMemcpyHostToDevice, stream));
    ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  /// Copies size() elements out into host (same size); returns when the copy is done.
  void download(std::span<T> host, cudaStream_t stream = nullptr) const {
    check_same_size(host.size(), "download");
    if (size_ == 0) return;
    ADDITIVE_CUDA_CHECK(cudaMemcpyAsync(host.data(), data_, bytes(), cudaMemcpyDeviceToHost, stream));
    ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  [[nodiscard]] std::vector<T> to_host(cudaStream_t stream = nullptr) const {
    std::vector<T> host(size_);
    download(host, stream);
    return host;
  }
  /// Sets every byte to zero (all-zero bits: 0 for float, bf16 and integers), on `stream`.
  void zero(cudaStream_t stream = nullptr) {
    if (size_ > 0) ADDITIVE_CUDA_CHECK(cudaMemsetAsync(data_, 0, bytes(), stream));
  }

  [[nodiscard]] T* data() noexcept { return data_; }
  [[nodiscard]] const T* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return size_ * sizeof(T); }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::span<T> span() noexcept { return {data_, size_}; }  // device memory
  [[nodiscard]] std::span<const T> span() const noexcept { return {data_, size_}; }

  /// The buffer seen as a column-major (rows, cols) matrix; rows * cols == size().
  [[nodiscard]] MatView<T> view(Index rows, Index cols) {
    check_same_size(static_cast<std::size_t>(rows * cols), "view");
    return MatView<T>(data_, rows, cols);
  }
  [[nodiscard]] MatView<const T> view(Index rows, Index cols) const {
    check_same_size(static_cast<std::size_t>(rows * cols), "view");
    return MatView<const T>(data_, rows, cols);
  }

 private:
  void release() noexcept {
    if (data_ != nullptr) ADDITIVE_CUDA_LOG(cudaFree(data_));
    data_ = nullptr;
    size_ = 0;
  }
  void check_same_size(std::size_t n, const char* what) const {
    if (n != size_)
      throw RuntimeError(std::string("DeviceBuffer::") + what + ": " + std::to_string(n) +
                         " elements given, the buffer has " + std::to_string(size_));
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// A device copy of host memory.
template <class T>
[[nodiscard]] DeviceBuffer<T> to_device(std::span<const T> host, cudaStream_t stream = nullptr) {
  DeviceBuffer<T> buffer(host.size());
  buffer.upload(host, stream);
  return buffer;
}
template <class T>
[[nodiscard]] DeviceBuffer<T> to_device(const std::vector<T>& host, cudaStream_t stream = nullptr) {
  return to_device(std::span<const T>(host), stream);
}

}  // namespace additive::cuda
