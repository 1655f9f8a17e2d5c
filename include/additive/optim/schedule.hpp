// Learning-rate schedules: pure functions of the step (counted from 0), kept outside
// the optimizers so a resumed run gets the same rate for step k as an unbroken one.
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <numbers>
#include <string>

#include "additive/core/error.hpp"
#include "additive/optim/optimizer.hpp"

namespace additive {

/// A schedule maps a step (0-based, >= 0) to a learning rate. It is const and has no
/// state, so workers and resumed runs can ask for any step in any order.
template <class S>
concept LrSchedule = requires(const S& s, std::int64_t step) {
  { s.lr(step) } -> std::convertible_to<double>;
};

namespace detail {
inline void check_step(const char* who, std::int64_t step) {
  if (step < 0) throw InputError(std::string(who) + ": step = " + std::to_string(step) + ", expected >= 0");
}
}  // namespace detail

/// The same rate at every step.
class ConstantLr {
 public:
  explicit ConstantLr(double lr) : lr_(lr) {
    if (!(lr >= 0.0) || !std::isfinite(lr))
      throw InputError("ConstantLr: lr = " + detail::format_number(lr) + ", expected a finite value >= 0");
  }
  [[nodiscard]] double lr(std::int64_t step) const {
    detail::check_step("ConstantLr", step);
    return lr_;
  }

 private:
  double lr_;
};

/// Linear warmup, then cosine decay:
///
///     step < W:        base * (step + 1) / W          (base/W at step 0, base at W-1)
///     W <= step < T:   min + (base - min) * (1 + cos(pi * (step - W) / (T - W))) / 2
///     step >= T:       min
///
/// with W = warmup_steps, T = total_steps. Step W is base again (the cosine starts
/// there), so the peak lasts two steps. W = 0 means no warmup; W = T means no decay
/// phase (the rate drops to min at T).
class WarmupCosine {
 public:
  WarmupCosine(double base_lr, std::int64_t warmup_steps, std::int64_t total_steps, double min_lr = 0.0)
      : base_(base_lr), min_(min_lr), warmup_(warmup_steps), total_(total_steps) {
    auto fail = [](const std::string& what) { throw InputError("WarmupCosine: " + what); };
    if (!(base_lr > 0.0) || !std::isfinite(base_lr))
      fail("base_lr = " + detail::format_number(base_lr) + ", expected a finite value > 0");
    if (warmup_steps < 0) fail("warmup_steps = " + std::to_string(warmup_steps) + ", expected >= 0");
    if (total_steps < warmup_steps || total_steps < 1)
      fail("total_steps = " + std::to_string(total_steps) +
           ", expected >= max(1, warmup_steps = " + std::to_string(warmup_steps) + ")");
    if (!(min_lr >= 0.0 && min_lr <= base_lr))
      fail("min_lr = " + detail::format_number(min_lr) +
           ", expected a value in [0, base_lr = " + detail::format_number(base_lr) + "]");
  }

  [[nodiscard]] double lr(std::int64_t step) const {
    detail::check_step("WarmupCosine", step);
    if (step < warmup_) return base_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
    if (step >= total_) return min_;
    const double progress = static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
    return min_ + (base_ - min_) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  }

  [[nodiscard]] double base_lr() const noexcept { return base_; }
  [[nodiscard]] double min_lr() const noexcept { return min_; }
  [[nodiscard]] std::int64_t warmup_steps() const noexcept { return warmup_; }
  [[nodiscard]] std::int64_t total_steps() const noexcept { return total_; }

 private:
  double base_, min_;
  std::int64_t warmup_, total_;
};

}  // namespace additive
