// SGD with momentum with the exact semantics of torch.optim.SGD (dampening = 0,
// maximize=False); L2 weight decay applied only to tensors with `decay = true`.
#pragma once

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
#include "additive/optim/optimizer.hpp"

namespace additive {

struct SgdConfig {
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
};

/// Throws `InputError` naming the first bad field. Momentum must lie in [0, 1) (PyTorch
/// accepts any value >= 0; 1 and above never forget a gradient and diverge), and
/// Nesterov needs momentum > 0, as in PyTorch.
inline void validate(const SgdConfig& c) {
  auto fail = [](const std::string& what) { throw InputError("SGD: " + what); };
  if (!(c.momentum >= 0.0 && c.momentum < 1.0))
    fail("momentum = " + detail::format_number(c.momentum) + ", expected a value in [0, 1)");
  if (c.nesterov && c.momentum == 0.0) fail("nesterov = true with momentum = 0, expected momentum > 0");
  if (!(c.weight_decay >= 0.0) || !std::isfinite(c.weight_decay))
    fail("weight_decay = " + detail::format_number(c.weight_decay) + ", expected a finite value >= 0");
}

/// State: the momentum buffer "momentum". With momentum = 0 there is no buffer and
/// `state()` is empty (PyTorch keeps no momentum_buffer then either), so a checkpoint
/// of plain SGD holds only the step count. Per step and element, as torch.optim.SGD:
///
///     g'  = g + wd*p                       (wd = 0 for no-decay tensors)
///     buf = momentum*buf + g'
///     u   = nesterov ? g' + momentum*buf : buf        (u = g' when momentum = 0)
///     p  -= lr*u
///
/// PyTorch sets buf = g' on the first step; with dampening 0 that is exactly the
/// update above applied to the zero-initialised buffer, so no first-step branch exists
/// and `steps()` only counts (for checkpoints).
template <std::floating_point T>
class Sgd {
 public:
  Sgd(ParamLayout layout, SgdConfig config = {}) : layout_(std::move(layout)), config_(config) {
    validate(config_);
    if (config_.momentum != 0.0) buf_.assign(layout_.total(), T(0));
  }

  void step(std::span<T> params, std::span<const T> grads, T lr) {
    detail::check_step_args("SGD", layout_, params, grads, lr);
    const bool use_momentum = !buf_.empty();
    const bool nesterov = config_.nesterov;
    const T mu = static_cast<T>(config_.momentum);
    const T wd_all = static_cast<T>(config_.weight_decay);

    for (const TensorSpec& spec : layout_.tensors()) {
      // wd = 0 adds exactly 0*p = 0 (p finite): a no-decay tensor sees its raw gradient.
      const T wd = spec.decay ? wd_all : T(0);
      T* p = params.data() + spec.offset;
      const T* g = grads.data() + spec.offset;
      if (!use_momentum) {
        for (std::size_t i = 0; i < spec.size; ++i) p[i] -= lr * (g[i] + wd * p[i]);
        continue;
      }
      T* b = buf_.data() + spec.offset;
      // `nesterov` is loop-invariant: the select vectorizes as a blend.
      for (std::size_t i = 0; i < spec.size; ++i) {
        const T gi = g[i] + wd * p[i];
        const T bi = mu * b[i] + gi;
        b[i] = bi;
        p[i] -= lr * (nesterov ? gi + mu * bi : bi);
      }
    }
    ++steps_;
  }

  [[nodiscard]] OptimizerState<T> state() {
    if (buf_.empty()) return {};
    return {{"momentum", std::span<T>(buf_)}};
  }

  [[nodiscard]] std::int64_t steps() const noexcept { return steps_; }
  void set_steps(std::int64_t steps) {
    detail::check_set_steps("SGD", steps);
    steps_ = steps;
  }

  [[nodiscard]] std::string_view name() const noexcept { return "sgd"; }
  [[nodiscard]] const ParamLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const SgdConfig& config() const noexcept { return config_; }

 private:
  ParamLayout layout_;
  SgdConfig config_;
  std::vector<T> buf_;  // (layout.total()), or empty when momentum = 0
  std::int64_t steps_ = 0;
};

}  // namespace additive
