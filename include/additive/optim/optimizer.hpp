// What every optimizer provides: one step over the flat parameter buffer, named state
// buffers for checkpoints, and a step counter that survives a resume.
#pragma once

#include <cmath>
#include <concepts>
#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"

namespace additive {

/// Named state buffers of an optimizer, each laid out like the parameters.
template <class T>
using OptimizerState = std::vector<std::pair<std::string, std::span<T>>>;

// clang-format off
/// An optimizer over a flat buffer of `T` described by a `ParamLayout`.
template <class O, class T>
concept Optimizer =
    // Parameters, gradients and state are real numbers of one precision; the optimizer
    // is a template over it, not over an arbitrary type.
    std::floating_point<T> &&
    requires(O& opt, const O& copt, std::span<T> params, std::span<const T> grads, T lr,
             std::int64_t steps) {
      // One update in place. The learning rate comes with each step, so schedules
      // live outside the optimizer and a resumed run asks its schedule for step k.
      // Gradients are read only: several optimizers may be compared on one gradient.
      opt.step(params, grads, lr);
      // Every buffer a resume needs, by name ("m", "v", ...), each of the layout's
      // size: checkpoints save buffer `name` of tensor `t` as `optim.<name>.<t>` and
      // load into the same mutable spans. Names must be unique.
      { opt.state() } -> std::same_as<OptimizerState<T>>;
      // The number of steps taken. AdamW's bias corrections depend on it, so a resume
      // must restore it with the buffers.
      { copt.steps() } -> std::convertible_to<std::int64_t>;
      opt.set_steps(steps);
      // A short identifier written into checkpoints, so a resume with a different
      // optimizer fails loudly instead of misreading the state.
      { copt.name() } -> std::convertible_to<std::string_view>;
    };
// clang-format on

namespace detail {

/// A number in an error message: short for round values, exact enough for the rest.
inline std::string format_number(double x) {
  std::ostringstream os;
  os.precision(12);
  os << x;
  return os.str();
}

/// Throws `InputError` unless `params` and `grads` both have `layout.total()` elements.
template <class T>
void check_step_args(std::string_view who, const ParamLayout& layout, std::span<T> params,
                     std::span<const T> grads, T lr) {
  auto fail = [&](const std::string& what) { throw InputError(std::string(who) + ": " + what); };
  if (params.size() != layout.total())
    fail("params has " + std::to_string(params.size()) + " elements, expected the layout's " +
         std::to_string(layout.total()));
  if (grads.size() != layout.total())
    fail("grads has " + std::to_string(grads.size()) + " elements, expected the layout's " +
         std::to_string(layout.total()));
  if (!(lr >= T(0)) || !std::isfinite(lr))
    fail("lr = " + format_number(static_cast<double>(lr)) + ", expected a finite value >= 0");
}

inline void check_set_steps(std::string_view who, std::int64_t steps) {
  if (steps < 0)
    throw InputError(std::string(who) + ": steps = " + std::to_string(steps) + ", expected >= 0");
}

}  // namespace detail
}  // namespace additive
