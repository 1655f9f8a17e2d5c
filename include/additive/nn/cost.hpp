// What a structure of the MLP family costs: parameters it uses, forward GEMM FLOPs per
// sample, and the communication of S-way tensor parallelism (DESIGN section 5), counted
// from the same plan the backends execute (segments, streams, skipped blocks).
#pragma once

#include <cstdint>

#include "additive/core/structure.hpp"
#include "additive/nn/mlp.hpp"

namespace additive {

/// The link between the shards' devices, for the alpha-beta model of a ring all-reduce.
struct LinkModel {
  double bandwidth = 25e9;  ///< bytes per second per device
  double latency = 5e-6;    ///< seconds per message
};

struct StructureCost {
  std::int64_t active_params = 0;  ///< parameters that receive a gradient
  double flops_per_sample = 0;     ///< forward GEMM FLOPs (2 m n k) per sample
  std::int64_t allreduces = 0;     ///< all-reduces per training step (forward + backward)
  double comm_bytes = 0;           ///< bytes each device sends per training step
  double comm_seconds = 0;         ///< alpha-beta time of those all-reduces
};

/// Ring all-reduce of `bytes` among p devices: 2(p-1)/p * bytes sent per device and
/// 2(p-1) latency steps (DESIGN section 5). Zero for p = 1.
inline void add_ring_allreduce(StructureCost& c, int p, double bytes, const LinkModel& link) {
  if (p <= 1) return;
  const double sent = 2.0 * (p - 1) / p * bytes;
  ++c.allreduces;
  c.comm_bytes += sent;
  c.comm_seconds += sent / link.bandwidth + 2.0 * (p - 1) * link.latency;
}

/// Costs of structure m at a given batch, in elements of `element_bytes` bytes.
///
/// Communication, shard j on device j (dist::TensorParallelMlp executes exactly this): the
/// forward pass all-reduces each segment's partial sums Z_G among its |G| devices, and the
/// backward pass all-reduces dZ_G = sum_{i in G} dY_i among the same devices (each device
/// holds only its own stream's gradient, and Z_G feeds every stream of the segment). Both
/// are (d, batch) tensors; a one-shard segment and a skipped block communicate nothing.
/// The logits average and the gradients of replicated parameters (embedding, norms,
/// biases, head) are left out: they are the same for every structure of the family.
template <Family F>
StructureCost mlp_cost(const MlpConfig& c, typename F::mask_type m, Index batch, int element_bytes = 4,
                       const LinkModel& link = {}) {
  constexpr int S = F::shards;
  StructureCost cost;
  const double act = double(c.d) * double(batch) * element_bytes;
  const auto cuts = F::stream_cuts(m);
  cost.active_params = c.d * c.in_dim + c.d + c.classes * c.d + c.classes;
  if constexpr (F::final_norm == FinalNorm::per_stream) cost.active_params += 2 * c.d;
  cost.flops_per_sample = 2.0 * double(c.in_dim) * double(c.d);
  for (int l = 0; l < F::blocks; ++l) {
    const auto g = F::block(m, l);
    if (!g.residual()) continue;
    cost.active_params += 2 * c.d + 2 * c.h * c.d + c.h + c.d;
    cost.flops_per_sample += 4.0 * double(c.d) * double(c.h);
    for (const Segment seg : g.segments()) {
      add_ring_allreduce(cost, seg.size, act, link);  // forward: Z_G
      add_ring_allreduce(cost, seg.size, act, link);  // backward: dZ_G
    }
  }
  const auto finals = intervals_from_cuts<S>(cuts[F::blocks]).size();
  cost.flops_per_sample += 2.0 * double(c.d) * double(c.classes) * finals;
  return cost;
}

}  // namespace additive
