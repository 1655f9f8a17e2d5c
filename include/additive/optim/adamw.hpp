// AdamW with the exact semantics of torch.optim.AdamW (amsgrad=False, maximize=False),
// decoupled weight decay applied only to tensors whose layout entry has `decay = true`.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/cpu/parallel.hpp"
#include "additive/optim/adamw_math.hpp"
#include "additive/optim/optimizer.hpp"

namespace additive {

/// Throws `InputError` naming the first bad field (NaN is always rejected).
inline void validate(const AdamWConfig& c) {
  auto fail = [](const std::string& what) { throw InputError("AdamW: " + what); };
  if (!(c.beta1 >= 0.0 && c.beta1 < 1.0))
    fail("beta1 = " + detail::format_number(c.beta1) + ", expected a value in [0, 1)");
  if (!(c.beta2 >= 0.0 && c.beta2 < 1.0))
    fail("beta2 = " + detail::format_number(c.beta2) + ", expected a value in [0, 1)");
  if (!(c.eps > 0.0) || !std::isfinite(c.eps))
    fail("eps = " + detail::format_number(c.eps) + ", expected a finite value > 0");
  if (!(c.weight_decay >= 0.0) || !std::isfinite(c.weight_decay))
    fail("weight_decay = " + detail::format_number(c.weight_decay) + ", expected a finite value >= 0");
}

/// State: first moment "m" and second moment "v", both zero before the first step.
/// Per step t (counted from 1) and element, as torch.optim.AdamW:
///
///     p *= 1 - lr*wd                      (decay tensors only)
///     m  = b1*m + (1-b1)*g
///     v  = b2*v + (1-b2)*g*g
///     p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
///
/// The last line is `lr * m_hat / (sqrt(v_hat) + eps)` written the way PyTorch
/// evaluates it. Bias corrections and the per-step scalars are computed in double and
/// rounded once to `T`. The element loop is branch-free and purely elementwise, so the
/// result does not depend on vectorization; GCC and Clang vectorize it only under
/// -fno-math-errno (otherwise std::sqrt may have to set errno). It is deliberately not
/// written with Eigen arrays: under EIGEN_FAST_MATH (Eigen's default) the AVX-512 packet
/// square root is an approximation, and which elements get it depends on alignment
/// (benchmarks/RESULTS.md, note 4).
template <std::floating_point T>
class AdamW {
 public:
  AdamW(ParamLayout layout, AdamWConfig config = {}) : layout_(std::move(layout)), config_(config) {
    validate(config_);
    m_.assign(layout_.total(), T(0));
    v_.assign(layout_.total(), T(0));
    for (const TensorSpec& spec : layout_.tensors())
      for (std::size_t first = 0; first < spec.size; first += chunk_elements)
        chunks_.push_back({spec.offset + first, std::min(chunk_elements, spec.size - first), spec.decay});
  }

  void step(std::span<T> params, std::span<const T> grads, T lr) {
    detail::check_step_args("AdamW", layout_, params, grads, lr);
    ++steps_;
    const auto s = AdamWScalars<T>::make(config_, steps_, static_cast<double>(lr));

    // Fixed chunks (bounds from the layout alone) on up to threads_ threads: every element
    // sees the same operations whichever thread runs it, so the result is bit-identical
    // for any thread count.
    cpu::parallel_tasks(threads_, static_cast<Index>(chunks_.size()), [&](Index task) {
      const Chunk& c = chunks_[static_cast<std::size_t>(task)];
      // Multiplying by exactly 1 leaves a no-decay tensor bit-identical.
      const T keep = c.decay ? s.decayed : T(1);
      T* p = params.data() + c.offset;
      const T* g = grads.data() + c.offset;
      T* m = m_.data() + c.offset;
      T* v = v_.data() + c.offset;
      for (std::size_t i = 0; i < c.size; ++i) adamw_element<T>(p[i], g[i], m[i], v[i], s, keep);
    });
  }

  /// Threads of step() (default 1). Results do not depend on it.
  void set_threads(int threads) noexcept { threads_ = threads < 1 ? 1 : threads; }
  [[nodiscard]] int threads() const noexcept { return threads_; }

  [[nodiscard]] OptimizerState<T> state() { return {{"m", std::span<T>(m_)}, {"v", std::span<T>(v_)}}; }

  [[nodiscard]] std::int64_t steps() const noexcept { return steps_; }
  void set_steps(std::int64_t steps) {
    detail::check_set_steps("AdamW", steps);
    steps_ = steps;
  }

  [[nodiscard]] std::string_view name() const noexcept { return "adamw"; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const AdamWConfig& config() const noexcept { return config_; }

 private:
  /// A piece of one tensor: the unit of work of step().
  struct Chunk {
    std::size_t offset = 0;
    std::size_t size = 0;
    bool decay = false;
  };
  static constexpr std::size_t chunk_elements = 32768;

  ParamLayout layout_;
  AdamWConfig config_;
  std::vector<T> m_;  // (layout.total())
  std::vector<T> v_;  // (layout.total())
  std::vector<Chunk> chunks_;
  std::int64_t steps_ = 0;
  int threads_ = 1;
};

}  // namespace additive
