// The sharded MLP family on the CUDA backend: nn/mlp_model.hpp's model over
// cuda::Backend. `CudaMlpOps` adapts the backend (device workspace, cudaMemsetAsync for
// the zero fill, the backend's per-batch buffers, the bf16 weight copy per forward, the
// fused GEMM + bias epilogue). Parameters, gradients, inputs and activations are device
// memory; every primitive runs in order on backend().stream().
//
//   cuda::MlpModel<F, float> model(config);          // owns a stream
//   cuda::MlpModel<F, float> model(config, stream);  // runs on the caller's stream
//   model.backend().set_precision(cuda::Precision::bf16);
//   model.reserve(batch);                            // after set_precision
//   float loss = model.forward(mask, params, x, host_labels);  // waits for the stream
//   model.forward_async(mask, params, x, device_labels, device_loss);  // capturable
//   model.backward(params, grads);                   // asynchronous, capturable
//
// Several models run concurrently on different streams: each owns its backend (stream,
// cuBLASLt handle and workspace, loss and bf16 buffers) and its activations; nothing is
// shared but the read-only parameters a caller may pass to several of them.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <span>

#include "additive/core/view.hpp"
#include "additive/cuda/backend.cuh"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"
#include "additive/nn/mlp.hpp"
#include "additive/nn/mlp_model.hpp"

namespace additive::cuda {

/// BasicMlpModel's adapter for cuda::Backend<T> (see additive::MlpModelOps).
template <class T>
struct CudaMlpOps {
  using backend_type = Backend<T>;
  template <class U>
  using rebind = CudaMlpOps<U>;
  using matrix = DeviceBuffer<T>;  // (rows, capacity), column-major
  using vector = DeviceBuffer<T>;
  static constexpr bool asynchronous = true;

  static matrix make_matrix(Index rows, Index cols) { return matrix(static_cast<std::size_t>(rows * cols)); }
  static vector make_vector(Index n) { return vector(static_cast<std::size_t>(n)); }
  static T* data(DeviceBuffer<T>& m) noexcept { return m.data(); }
  static void zero(backend_type& be, std::span<T> g) { be.zero(g); }
  /// bf16 scratch: the largest activation operand (rows <= max(in_dim, d, h, classes), batch
  /// columns) or weight operand cast there (see Backend::operand16).
  static void reserve(backend_type& be, const MlpConfig& c, Index batch, std::size_t params) {
    const auto ld = [](Index rows) { return backend_type::padded_ld(rows); };
    const Index scratch = std::max({ld(std::max({c.in_dim, c.d, c.h, c.classes})) * batch, ld(c.in_dim) * c.d,
                                    ld(c.d) * c.h, ld(c.h) * c.d, ld(c.d) * c.classes});
    be.reserve(batch, static_cast<std::size_t>(scratch), params);
  }
  static void prepare(backend_type& be, std::span<const T> params) { be.cast_weights(params); }
  static void gemm_tn_bias(backend_type& be, MatView<T> c, MatView<const T> a, MatView<const T> b, T alpha,
                           T beta, const T* bias) {
    be.gemm_tn_bias(c, a, b, alpha, beta, bias);
  }
};

/// The MLP model on the GPU (T = float): MlpModel<F, float> model(config [, stream]).
template <Family F, class T>
using MlpModel = BasicMlpModel<F, T, CudaMlpOps<T>>;

}  // namespace additive::cuda
