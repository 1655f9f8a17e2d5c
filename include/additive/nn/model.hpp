// The Model concept: what an engine (train, search, stochastic gating, co-training, ...)
// needs of a model family on a backend, and nothing more. The engines are written against
// it, so a new family or backend plugs in without a copy of any engine: the sharded MLP on
// the CPU (cpu::MlpModel) and on CUDA (cuda::MlpModel) model it, and so does the one-block
// linear family of the tests (tests/toy_model.hpp), which is the proof.
//
// Each requirement says why an engine needs it (stdexec style). Rejection tests sit in
// tests/test_concepts.cpp.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"
#include "additive/nn/cost.hpp"

namespace additive {

/// Called by backward() with each range [begin, end) of the flat gradient buffer as soon
/// as it holds its final values.
template <class Fn>
concept GradientReadyCallback = std::invocable<Fn&, std::size_t, std::size_t>;

namespace detail {
struct IgnoreReady {
  void operator()(std::size_t, std::size_t) const noexcept {}
};
}  // namespace detail

/// A gated model of one family on one backend.
///
/// - `family` is a Family: engines enumerate its 2^n masks, name structures with
///   `family::to_string` and identify checkpoints and results files with `family::describe`.
/// - `scalar_type` is the floating-point type of parameters, gradients and optimizer state.
/// - `mask_type` is the family's mask, a strong type: a structure never travels as a bare
///   integer between an engine and a model.
/// - `config_type` holds the run-time widths. It is equality-comparable and converts to
///   JSON, because checkpoints and results files store it and a resume refuses another one.
/// - `config()`, `layout()`: the flat parameter buffer's named tensors (with their shard
///   axes), from which engines size parameters, gradients and optimizer state, write
///   checkpoints, and cut gradient buckets, without knowing the family.
/// - `M::init_params(config, seed, params)` writes (=) every parameter from a seed: every
///   structure trained with the same seed starts from the same weights, on every backend.
/// - `M::cost(config, mask, batch)`: what a structure costs (forward FLOPs per sample,
///   active parameters, tensor-parallel communication), a trait of the family, so that
///   search reports, routers and budgets price any family alike.
/// - `input_dim()`: rows of one input column, `num_classes()`: logits per sample (labels lie
///   in [0, num_classes())): both checked against the data before any work.
/// - `forward(mask, params, x, labels)` returns the mean loss over the batch and keeps
///   what backward() needs; x is (input_dim, batch), labels one per column.
/// - `backward(params, grads)` writes (=) every element of grads (skipped parameters get
///   exact zeros); `backward(params, grads, on_ready)` reports each finished range of the
///   gradient buffer so that communication can overlap the rest of the backward pass;
///   `ready_ranges()` lists those ranges in that order before any backward, so that an
///   engine can cut its all-reduce buckets without knowing the family's tensors.
/// - `logits()`: (classes, batch) of the last forward, for accuracy and per-sample losses.
template <class M>
concept Model = Family<typename M::family> && std::floating_point<typename M::scalar_type> &&
    std::same_as<typename M::mask_type, typename M::family::mask_type> &&
    std::equality_comparable<typename M::config_type> &&
    requires(M& m, const M& cm, const typename M::config_type& config, typename M::mask_type mask,
             std::span<const typename M::scalar_type> params, std::span<typename M::scalar_type> grads,
             MatView<const typename M::scalar_type> x, std::span<const std::int32_t> labels,
             detail::IgnoreReady on_ready) {
  {nlohmann::json(config)};
  { cm.config() } -> std::same_as<const typename M::config_type&>;
  { cm.layout() } -> std::same_as<const ParamLayout&>;
  M::init_params(config, std::uint64_t{}, grads);
  { M::cost(config, mask, Index{}) } -> std::same_as<StructureCost>;
  { cm.input_dim() } -> std::convertible_to<Index>;
  { cm.num_classes() } -> std::convertible_to<Index>;
  { m.forward(mask, params, x, labels) } -> std::same_as<typename M::scalar_type>;
  m.backward(params, grads);
  m.backward(params, grads, on_ready);
  { cm.ready_ranges() } -> std::same_as<std::vector<std::pair<std::size_t, std::size_t>>>;
  { cm.logits() } -> std::same_as<MatView<const typename M::scalar_type>>;
};

/// A model the CPU engines can build for themselves: from its config and a thread count
/// (the search trains many structures at once, each single-threaded).
template <class M>
concept HostModel = Model<M> && std::constructible_from<M, const typename M::config_type&, int>;

/// The same model in another scalar type (`M::rebind<double>`): the search compares
/// structures' functions in float64, gradient checks run in float64.
template <class M, class U>
using rebind_scalar_t = typename M::template rebind<U>;

template <class M>
concept RebindableModel = HostModel<M> && requires {
  typename M::template rebind<double>;
} && HostModel<rebind_scalar_t<M, double>>;

/// Per-sample gating (experiment 3 with one structure per sample): a family that offers
/// it names, through this trait, the class that runs a batch whose samples each have
/// their own mask. Specialised next to that class (cpu/per_sample.hpp for the MLP).
template <class M>
struct per_sample_model {};

template <class M>
using per_sample_model_t = typename per_sample_model<M>::type;

/// A model with a per-sample path P = per_sample_model_t<M>: built like M,
/// `forward(masks, params, x, labels)` with one mask per column returns the mean loss, and
/// `backward(params, grads)` has M's (=) contract.
template <class M>
concept PerSampleModel = HostModel<M> && requires {
  typename per_sample_model<M>::type;
} && std::constructible_from < per_sample_model_t<M>,
const typename M::config_type&,
    int > &&requires(per_sample_model_t<M>& p, std::span<const typename M::mask_type> masks,
                     std::span<const typename M::scalar_type> params,
                     std::span<typename M::scalar_type> grads, MatView<const typename M::scalar_type> x,
                     std::span<const std::int32_t> labels) {
  { p.forward(masks, params, x, labels) } -> std::same_as<typename M::scalar_type>;
  p.backward(params, grads);
};

/// A family's fast path for evaluating many structures on the same weights (the MLP's
/// prefix tree): specialised next to it as `using type = Evaluator;`, where Evaluator is
/// built from (config, masks, threads) and scores every mask of the list per batch.
template <class M>
struct all_structure_evaluator {};

template <class M>
concept HasAllStructureEvaluator = requires {
  typename all_structure_evaluator<M>::type;
};

/// The type an optional capability's trait names for M (Trait<M>::type), or NoCapability
/// where M lacks it: lets an engine hold a member for a capability it may not use.
struct NoCapability {};
template <template <class> class Trait, class M>
struct capability_or_none {
  using type = NoCapability;
};
template <template <class> class Trait, class M>
requires requires { typename Trait<M>::type; }
struct capability_or_none<Trait, M> {
  using type = typename Trait<M>::type;
};
template <template <class> class Trait, class M>
using capability_or_none_t = typename capability_or_none<Trait, M>::type;

}  // namespace additive
