// The engines are generic over the Model concept: a second family that shares nothing with
// the MLP but the concept (tests/toy_model.hpp) trains, resumes, is searched, gated and
// evaluated through the same Trainer, StructureSearch, StochasticGating and
// evaluate_structures. Its own gradients are checked first (float64 central differences),
// so the engine tests below run on a correct model.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <set>
#include <vector>

#include "additive/exp/evaluate_all.hpp"
#include "additive/exp/search.hpp"
#include "additive/exp/stochastic.hpp"
#include "additive/exp/train.hpp"
#include "additive/nn/model.hpp"

#include "test_support.hpp"
#include "toy_model.hpp"

using namespace additive;
using test::ToyConfig;
using test::ToyFamily;
using test::ToyModel;

namespace {

const ToyConfig config{.in_dim = 20, .d = 5, .classes = 4};

ImageDataset synthetic(std::int64_t count, std::uint64_t seed) { return test::synthetic_images(count, seed); }

struct Data {
  ImageDataset train_set = synthetic(240, 1);
  ImageDataset val_set = synthetic(80, 2);
  DatasetView train{train_set};
  DatasetView val{val_set};
};

}  // namespace

// ---- the concepts accept what they should and reject what they should ----

struct NotAModel {};
struct ModelWithoutBackward {  // everything but backward
  using family = ToyFamily;
  using scalar_type = float;
  using mask_type = ToyFamily::mask_type;
  using config_type = ToyConfig;
};

static_assert(Model<cpu::MlpModel<MlpFamily<4, 2>, float>>);
static_assert(PerSampleModel<cpu::MlpModel<MlpFamily<4, 2>, float>>);
static_assert(RebindableModel<cpu::MlpModel<MlpFamily<4, 2, GateLayout::merge_only>, float>>);
static_assert(HasAllStructureEvaluator<cpu::MlpModel<MlpFamily<4, 2>, float>>);
static_assert(Model<ToyModel<double>>);
static_assert(!HasAllStructureEvaluator<ToyModel<float>>);
static_assert(!Model<NotAModel>);
static_assert(!Model<ModelWithoutBackward>);
static_assert(!Model<int>);
static_assert(!PerSampleModel<ToyModel<double>>);

TEST_CASE("toy model: float64 central differences match backward for every structure") {
  const ToyConfig c{.in_dim = 4, .d = 3, .classes = 3};
  ToyModel<double> model(c, 1);
  const Index batch = 5;
  std::vector<double> params(model.layout().total());
  ToyModel<double>::init_params(c, 17, params);
  for (auto& p : params) p *= 2;  // larger weights: the tanh is not near-linear
  const auto x = test::random_inputs<double>(c.in_dim, batch, 3);
  const auto y = test::random_labels(batch, c.classes, 4);
  const MatView<const double> xv(x.data(), c.in_dim, batch);
  REQUIRE(test::max_abs<double>(params) > 0.1);
  for (std::uint64_t bits = 0; bits < ToyFamily::mask_type::count; ++bits) {
    CAPTURE(bits);
    const ToyFamily::mask_type m(bits);
    std::vector<double> grads(params.size());
    model.forward(m, params, xv, y);
    model.backward(params, grads);
    const double h = 1e-6;
    double worst = 0;
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto p = params;
      p[i] = params[i] + h;
      const double up = model.forward(m, p, xv, y);
      p[i] = params[i] - h;
      const double down = model.forward(m, p, xv, y);
      worst = std::max(worst, std::abs((up - down) / (2 * h) - grads[i]) / std::max(1.0, std::abs(grads[i])));
    }
    CHECK(worst < 1e-8);
    // A skipped block's weights get exact zeros; an active one's do not.
    const auto& b = model.layout().find("block.weight");
    double block_grad = 0;
    for (std::size_t i = 0; i < b.size; ++i) block_grad = std::max(block_grad, std::abs(grads[b.offset + i]));
    if (ToyFamily::block(m, 0).residual())
      CHECK(block_grad > 1e-6);
    else
      CHECK(block_grad == 0.0);
  }
}

TEST_CASE("Trainer<M>: the toy model learns, and a resumed run equals the uninterrupted one") {
  const Data d;
  const TrainOptions options{.epochs = 3, .batch = 40, .lr = 2e-2, .seed = 5};
  const auto mask = ToyFamily::mask_type(0b11);
  Trainer<ToyModel<float>> full(config, mask, options, RunOptions{.progress = false});
  const auto before = full.evaluate(d.val);
  const auto r = full.fit(d.train, d.val);
  REQUIRE(r.finished);
  CHECK(r.steps == 18);
  CHECK(r.epochs.back().val.loss < before.loss - 0.1);
  CHECK(r.epochs.back().val.accuracy > 0.5);  // chance: 0.25

  const auto path = std::filesystem::temp_directory_path() / "additive_test_generic_toy.safetensors";
  std::filesystem::remove(path);
  {
    Trainer<ToyModel<float>> first(config, mask, options,
                                   RunOptions{.checkpoint = path, .stop_after_steps = 7, .progress = false});
    CHECK_FALSE(first.fit(d.train, d.val).finished);
  }
  Trainer<ToyModel<float>> second(config, mask, options, RunOptions{.progress = false});
  second.resume(path);
  CHECK(second.step() == 7);
  second.fit(d.train, d.val);
  const auto a = full.params(), b = second.params();
  CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
  std::filesystem::remove(path);

  // A family without a per-sample path refuses per-sample gating, by name.
  CHECK_THROWS_WITH_AS(Trainer<ToyModel<float>>(config, mask, options, {}, GatingOptions{.per_sample = true}),
                       doctest::Contains("toy-linear S=2 L=1 has no per-sample gating"), InputError);
}

TEST_CASE("StructureSearch<M>: every toy structure, equivalent ones found, same results for any workers") {
  const Data d;
  const TrainOptions train{.epochs = 2, .batch = 40, .lr = 2e-2, .seed = 8};
  StructureSearch<ToyModel<float>> search(config, train, {.workers = 1});
  // 4 masks, 3 functions: with the branch gate off, the merge gate does nothing.
  const auto groups = search.equivalence_groups(search.candidates());
  REQUIRE(groups.size() == 3);
  CHECK(groups[0] == std::vector<std::uint64_t>{0b00, 0b01});
  const auto one = search.run(d.train, d.val, {}, false, nlohmann::json::object(), false);
  StructureSearch<ToyModel<float>> two_workers(config, train, {.workers = 2});
  const auto two = two_workers.run(d.train, d.val, {}, false, nlohmann::json::object(), false);
  REQUIRE(one.entries.size() == 3);
  REQUIRE(two.entries.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(one.entries[i].mask == two.entries[i].mask);
    CHECK(one.entries[i].acc_mean == two.entries[i].acc_mean);
    CHECK(one.entries[i].loss_mean == two.entries[i].loss_mean);
    // The costs come from the model's trait: a skipped block costs less.
    const auto g = ToyFamily::block(ToyFamily::mask_type(one.entries[i].mask), 0);
    CHECK(one.entries[i].cost.flops_per_sample ==
          ToyModel<float>::cost(config, ToyFamily::mask_type(one.entries[i].mask), 40).flops_per_sample);
    if (!g.residual())
      CHECK(one.entries[i].cost.flops_per_sample < one.entries[0].cost.flops_per_sample + 200);
  }
  // Each run is the Trainer's run with the same seed.
  Trainer<ToyModel<float>> alone(config, ToyFamily::mask_type(one.entries[0].mask), train,
                                 {.progress = false});
  CHECK(alone.fit(d.train, d.val).epochs.back().val.accuracy == one.entries[0].acc_mean);
}

TEST_CASE("evaluate_structures<M> and StochasticGating<M> on a family without a fast path") {
  const Data d;
  const TrainOptions train{.epochs = 2, .batch = 40, .lr = 2e-2, .seed = 4};
  Trainer<ToyModel<float>> t(config, ToyFamily::mask_type(0b11), train, {.progress = false});
  t.fit(d.train, d.val);
  const auto evals = evaluate_structures<ToyModel<float>>(config, std::span<const float>(t.params()), d.val,
                                                          {0, 1, 2, 3}, {.chunk = 30});
  REQUIRE(evals.size() == 4);
  const auto alone = t.evaluate(d.val);
  CHECK(evals[3].accuracy == alone.accuracy);
  CHECK(evals[3].loss == doctest::Approx(alone.loss).epsilon(1e-6));
  CHECK(evals[0].loss == evals[1].loss);  // equivalent structures

  StochasticGating<ToyModel<float>> gating(
      config, train, {.gating = {.p = 0.7}, .dense_baseline = true, .threads = 1, .progress = false});
  const auto r = gating.run(d.train, d.val);
  CHECK(r.entries.size() == 4);
  CHECK(r.family == "toy-linear S=2 L=1");
  REQUIRE(r.dense_alone.has_value());
  CHECK(r.dense_alone->accuracy == alone.accuracy);  // the same seed trains the same dense run
}
