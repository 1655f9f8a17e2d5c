// The flat parameter buffer: every model keeps all its parameters in one contiguous
// array (one all-reduce, one optimizer loop, one checkpoint), described by a layout of
// named tensors. Gradients and optimizer state use the same layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"

namespace additive {

/// Which axis of a tensor is cut into the model's shards (shard j owns the j-th equal
/// slice along it), or none (`axis = -1`: the tensor is replicated, every shard reads all
/// of it). Tensor parallelism, gradient buckets and shard assembly read this, not names.
struct ShardAxis {
  int axis = -1;
  int shards = 1;
  [[nodiscard]] constexpr bool sharded() const noexcept { return axis >= 0; }
  friend constexpr bool operator==(ShardAxis, ShardAxis) = default;
};

/// One named tensor inside a flat buffer.
struct TensorSpec {
  std::string name;                 ///< safetensors name, e.g. "blocks.0.up.weight"
  std::vector<std::int64_t> shape;  ///< PyTorch order, row-major
  std::size_t offset = 0;           ///< first element in the flat buffer
  std::size_t size = 0;             ///< number of elements
  bool decay = true;                ///< weight decay applies (false for norms and biases)
  ShardAxis shard{};                ///< the axis cut into shards, if any
};

/// Named tensors laid end to end. Offsets are assigned in insertion order.
class ParamLayout {
 public:
  std::size_t add(std::string name, std::vector<std::int64_t> shape, bool decay, ShardAxis shard = {}) {
    if (shard.sharded()) {
      const auto axis = static_cast<std::size_t>(shard.axis);
      if (axis >= shape.size() || shard.shards < 1 || shape[axis] % shard.shards != 0)
        throw RuntimeError("parameter layout: tensor '" + name + "' cannot be cut into " +
                           std::to_string(shard.shards) + " shards along axis " + std::to_string(shard.axis));
    }
    std::size_t n =
        std::accumulate(shape.begin(), shape.end(), std::size_t{1},
                        [](std::size_t a, std::int64_t b) { return a * static_cast<std::size_t>(b); });
    TensorSpec t{std::move(name), std::move(shape), total_, n, decay, shard};
    total_ += n;
    tensors_.push_back(std::move(t));
    return tensors_.back().offset;
  }

  [[nodiscard]] std::size_t total() const noexcept { return total_; }
  [[nodiscard]] const std::vector<TensorSpec>& tensors() const noexcept { return tensors_; }

  [[nodiscard]] const TensorSpec& find(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return t;
    throw RuntimeError("parameter layout has no tensor named '" + name + "'");
  }

  friend bool operator==(const ParamLayout& a, const ParamLayout& b) {
    if (a.total_ != b.total_ || a.tensors_.size() != b.tensors_.size()) return false;
    for (std::size_t i = 0; i < a.tensors_.size(); ++i) {
      const auto& x = a.tensors_[i];
      const auto& y = b.tensors_[i];
      if (x.name != y.name || x.shape != y.shape || x.offset != y.offset || x.decay != y.decay ||
          x.shard != y.shard)
        return false;
    }
    return true;
  }

 private:
  std::vector<TensorSpec> tensors_;
  std::size_t total_ = 0;
};

}  // namespace additive
