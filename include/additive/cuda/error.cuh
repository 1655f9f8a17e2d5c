// The CUDA members of the library's error family (core/error.hpp): a failed CUDA runtime
// or cuBLAS call throws a typed exception that carries the status name, the expression,
// the file and the line; running out of device memory names the size asked for.
// Destructors (noexcept) log failures through log_error() instead of throwing.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdio>
#include <string>

#include "additive/core/error.hpp"

namespace additive::cuda {

namespace detail {
inline std::string where(const char* expr, const char* file, int line) {
  return std::string(expr) + " at " + file + ":" + std::to_string(line);
}
inline std::string mib(std::size_t bytes) {
  return std::to_string(static_cast<double>(bytes) / (1024.0 * 1024.0)) + " MiB";
}
}  // namespace detail

/// A CUDA runtime call returned something other than cudaSuccess.
class CudaError : public RuntimeError {
 public:
  CudaError(cudaError_t status, const char* expr, const char* file, int line)
      : RuntimeError(std::string("CUDA error ") + cudaGetErrorName(status) + " (" +
                     cudaGetErrorString(status) + ") in " + detail::where(expr, file, line)),
        status_(status) {}
  [[nodiscard]] cudaError_t status() const noexcept { return status_; }

 protected:
  CudaError(cudaError_t status, const std::string& message) : RuntimeError(message), status_(status) {}

 private:
  cudaError_t status_;
};

/// A device allocation failed: the message names the bytes asked for and what was free.
class DeviceOutOfMemory : public CudaError {
 public:
  DeviceOutOfMemory(std::size_t bytes, std::size_t free_bytes, std::size_t total_bytes)
      : CudaError(cudaErrorMemoryAllocation, "CUDA out of memory: allocating " + std::to_string(bytes) +
                                                 " bytes (" + detail::mib(bytes) +
                                                 ") failed; the device has " + std::to_string(free_bytes) +
                                                 " of " + std::to_string(total_bytes) + " bytes free"),
        bytes_(bytes) {}
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }

 private:
  std::size_t bytes_;
};

/// A cuBLAS or cuBLASLt call returned something other than CUBLAS_STATUS_SUCCESS.
class CublasError : public RuntimeError {
 public:
  CublasError(cublasStatus_t status, const char* expr, const char* file, int line)
      : RuntimeError(std::string("cuBLAS error ") + cublasGetStatusName(status) + " (" +
                     cublasGetStatusString(status) + ") in " + detail::where(expr, file, line)),
        status_(status) {}
  [[nodiscard]] cublasStatus_t status() const noexcept { return status_; }

 private:
  cublasStatus_t status_;
};

namespace detail {
inline void check_cuda(cudaError_t status, const char* expr, const char* file, int line) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so that later calls are not blamed
  throw CudaError(status, expr, file, line);
}
inline void check_cublas(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) throw CublasError(status, expr, file, line);
}
}  // namespace detail

/// For noexcept paths (destructors): prints a failed call to stderr and carries on.
inline void log_error(cudaError_t status, const char* expr, const char* file, int line) noexcept {
  if (status == cudaSuccess) return;
  std::fprintf(stderr, "additive: ignoring CUDA error %s (%s) in %s at %s:%d\n", cudaGetErrorName(status),
               cudaGetErrorString(status), expr, file, line);
}
inline void log_error(cublasStatus_t status, const char* expr, const char* file, int line) noexcept {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "additive: ignoring cuBLAS error %s in %s at %s:%d\n", cublasGetStatusName(status),
               expr, file, line);
}

}  // namespace additive::cuda

/// Throws additive::cuda::CudaError when the CUDA runtime call `expr` fails.
#define ADDITIVE_CUDA_CHECK(expr) ::additive::cuda::detail::check_cuda((expr), #expr, __FILE__, __LINE__)
/// Throws additive::cuda::CublasError when the cuBLAS / cuBLASLt call `expr` fails.
#define ADDITIVE_CUBLAS_CHECK(expr) ::additive::cuda::detail::check_cublas((expr), #expr, __FILE__, __LINE__)
/// Logs (never throws) a failed CUDA or cuBLAS call: for destructors.
#define ADDITIVE_CUDA_LOG(expr) ::additive::cuda::log_error((expr), #expr, __FILE__, __LINE__)
/// Throws CudaError when the last kernel launch failed (bad configuration, no device code).
#define ADDITIVE_CUDA_CHECK_LAUNCH() ADDITIVE_CUDA_CHECK(cudaGetLastError())
