// Every structure of a family evaluated on the same (shared) weights: the mean loss and
// accuracy of each mask of a list on a data set. A family with a fast path names it through
// the all_structure_evaluator trait (the MLP's prefix tree, cpu/prefix_tree.hpp, which walks
// the tree of shared prefixes: docs/evaluate-all.md); any other Model is evaluated with one
// forward pass per structure.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "additive/core/error.hpp"
#include "additive/cpu/prefix_tree.hpp"
#include "additive/data/dataset.hpp"
#include "additive/exp/progress.hpp"
#include "additive/nn/model.hpp"

namespace additive {

struct StructureEval {
  std::uint64_t mask = 0;
  double loss = 0;
  double accuracy = 0;
};

enum class EvalMethod { prefix_tree, naive };

struct EvalAllOptions {
  int threads = 1;
  Index chunk = 256;
  EvalMethod method = EvalMethod::prefix_tree;
  bool show_progress = false;
  /// prefix_tree only: samples it computes at once, a multiple of 64, or 0 for 64 per
  /// thread. Small blocks keep a block's tensors in cache; the results do not depend on it.
  Index tree_block = 0;
};

namespace detail {

/// Adds the number of samples whose first largest logit is their label.
template <class T>
void count_correct(MatView<const T> logits, std::span<const std::int32_t> labels, std::int64_t& correct) {
  for (Index j = 0; j < logits.cols; ++j) {
    Index best = 0;
    for (Index c = 1; c < logits.rows; ++c)
      if (logits(c, j) > logits(best, j)) best = c;
    correct += best == labels[static_cast<std::size_t>(j)] ? 1 : 0;
  }
}

}  // namespace detail

/// Mean softmax cross-entropy and accuracy of every mask in `masks` (result in the same order)
/// on `data`, all with the same parameters `params` (M's layout).
/// Data are processed in chunks of `options.chunk` samples; accuracy counts the first
/// largest logit, as Trainer::evaluate does.
/// `method` prefix_tree takes M's all_structure_evaluator where it has one (and is the
/// naive method otherwise).
template <HostModel M>
std::vector<StructureEval> evaluate_structures(const typename M::config_type& config,
                                               std::span<const typename M::scalar_type> params,
                                               const DatasetView& data,
                                               const std::vector<std::uint64_t>& masks,
                                               const EvalAllOptions& options = {}) {
  using T = typename M::scalar_type;
  using mask_type = typename M::mask_type;
  if (masks.empty()) throw InputError("evaluate_structures: no structures to evaluate");
  if (data.size() == 0) throw InputError("evaluate_structures: the data set is empty");
  if (options.chunk < 1) throw InputError("evaluate_structures: chunk must be >= 1");
  if (options.threads < 1) throw InputError("evaluate_structures: threads must be >= 1");
  const bool tree = options.method == EvalMethod::prefix_tree && HasAllStructureEvaluator<M>;
  std::optional<M> model;
  model.emplace(config, options.threads);  // validates the config
  if (const auto need = model->layout().total(); params.size() != need)
    throw InputError("evaluate_structures: parameter buffer has " + std::to_string(params.size()) +
                     " elements, the model needs " + std::to_string(need));
  if (data.input_dim() != model->input_dim())
    throw InputError("evaluate_structures: the data have " + std::to_string(data.input_dim()) +
                     " features, the model expects " + std::to_string(model->input_dim()));
  if (data.num_classes() > model->num_classes())
    throw InputError("evaluate_structures: the data have " + std::to_string(data.num_classes()) +
                     " classes, the model has " + std::to_string(model->num_classes()));
  std::vector<mask_type> ms;
  for (const auto b : masks) ms.push_back(mask_type(b));  // throws InputError on bits beyond the gates

  using Evaluator = capability_or_none_t<all_structure_evaluator, M>;
  std::optional<Evaluator> forest;
  if constexpr (HasAllStructureEvaluator<M>) {
    if (tree) {
      model.reset();
      forest.emplace(config, masks, options.threads);
      forest->keep_logits(false);  // only the scores are needed
      // Throws InputError unless a positive multiple of 64.
      forest->set_block_cols(options.tree_block > 0 ? options.tree_block
                                                    : cpu::column_task * options.threads);
    }
  }

  // Structure s reads score entry score_of(s): one per distinct logits buffer of the tree.
  const auto score_of = [&](std::size_t s) -> std::size_t {
    if constexpr (HasAllStructureEvaluator<M>)
      if (tree) return static_cast<std::size_t>(forest->logits_id(s));
    return s;
  };
  const std::size_t nscore = [&]() -> std::size_t {
    if constexpr (HasAllStructureEvaluator<M>)
      if (tree) return static_cast<std::size_t>(forest->distinct_logits());
    return masks.size();
  }();
  std::vector<double> loss(nscore, 0.0);
  std::vector<std::int64_t> correct(nscore, 0);
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> x;
  std::vector<std::int32_t> y;
  std::vector<std::int64_t> pos;
  const std::int64_t chunks = (data.size() + options.chunk - 1) / options.chunk;
  std::optional<ProgressBar> bar;
  if (options.show_progress)
    bar.emplace("evaluate", chunks, double(options.chunk) * double(masks.size()), "structure-samples");
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t c0 = c * options.chunk;
    const std::int64_t n = std::min<std::int64_t>(options.chunk, data.size() - c0);
    pos.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = c0 + i;
    data.gather(pos, x, y);
    const MatView<const T> xv(x.data(), x.rows(), x.cols());
    bool scored = false;
    if constexpr (HasAllStructureEvaluator<M>) {
      if (tree) {
        if (c == 0) forest->set_params(params);
        forest->forward(xv, y);
        std::vector<bool> done(nscore, false);
        for (std::size_t s = 0; s < masks.size(); ++s) {
          const auto f = score_of(s);
          if (done[f]) continue;
          done[f] = true;
          const auto score = forest->score(s);
          loss[f] += score.loss_sum;
          correct[f] += score.correct;
        }
        scored = true;
      }
    }
    if (!scored)
      for (std::size_t s = 0; s < masks.size(); ++s) {
        loss[s] += double(model->forward(ms[s], params, xv, y)) * double(n);
        detail::count_correct(model->logits(), y, correct[s]);
      }
    if (bar) bar->update(c + 1);
  }
  std::vector<StructureEval> out(masks.size());
  for (std::size_t s = 0; s < masks.size(); ++s) {
    const auto f = score_of(s);
    out[s] = StructureEval{masks[s], loss[f] / double(data.size()), double(correct[f]) / double(data.size())};
  }
  return out;
}

}  // namespace additive
