// Mixture of structure experts (experiment 4, phase 1): per-sample losses agree with
// evaluate_structures and do not depend on the thread count; the oracle and the
// cost-aware oracle on hand-made tables; the strategy evaluator fed the oracle's
// assignment gives the oracle's numbers; the router's gradients (both objectives) match
// central differences in float64; routed execution equals running each sample alone with
// its structure; router training is deterministic and lowers its objective; bad options
// are one clear InputError.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "additive/exp/evaluate_all.hpp"
#include "additive/exp/moe.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

using F = MlpFamily<4, 2, GateLayout::merge_only>;
using Net = cpu::MlpModel<F, float>;
const MlpConfig config{.in_dim = 20, .d = 8, .h = 16, .classes = 4};

std::vector<float> random_params(std::uint64_t seed) {
  return test::random_params<float>(Net(config, 1).layout(), seed);
}

std::vector<std::uint64_t> all_masks() {
  std::vector<std::uint64_t> m(F::mask_type::count);
  std::iota(m.begin(), m.end(), std::uint64_t{0});
  return m;
}

/// The message of the InputError `fn` throws ("" if none).
template <class Fn>
std::string input_error(Fn&& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  }
  return {};
}

/// A table from rows of losses and correctness (K rows of N).
SampleTable table(const std::vector<std::vector<double>>& loss,
                  const std::vector<std::vector<int>>& correct) {
  SampleTable t;
  t.samples = static_cast<std::int64_t>(loss[0].size());
  for (std::size_t k = 0; k < loss.size(); ++k) {
    t.masks.push_back(k);
    for (std::size_t i = 0; i < loss[k].size(); ++i) {
      t.loss.push_back(loss[k][i]);
      t.correct.push_back(static_cast<std::uint8_t>(correct[k][i]));
    }
  }
  t.labels.assign(static_cast<std::size_t>(t.samples), 0);
  return t;
}

}  // namespace

TEST_CASE("per-sample losses average to evaluate_structures' losses, for any thread count") {
  const auto images = test::synthetic_images(150, 3);
  const DatasetView data(images);
  const auto params = random_params(11);
  const auto masks = all_masks();
  const auto t1 = per_sample_losses<Net>(config, params, data, masks, 1, 64);  // 150 = 64 + 64 + 22
  const auto t3 = per_sample_losses<Net>(config, params, data, masks, 3, 64);
  CHECK(t1.loss == t3.loss);
  CHECK(t1.correct == t3.correct);
  CHECK(t1.labels == t3.labels);
  // Another chunk size changes no sample's loss beyond rounding.
  const auto t_other = per_sample_losses<Net>(config, params, data, masks, 2, 7);
  double worst_chunk = 0;
  for (std::size_t c = 0; c < t1.loss.size(); ++c)
    worst_chunk = std::max(worst_chunk, std::abs(t1.loss[c] - t_other.loss[c]));
  CHECK(worst_chunk < 1e-5);

  const std::span<const float> p(params);
  const auto naive =
      evaluate_structures<Net>(config, p, data, masks, EvalAllOptions{.method = EvalMethod::naive});
  const auto tree = evaluate_structures<Net>(config, p, data, masks, EvalAllOptions{.threads = 2});
  std::vector<double> means;
  for (std::size_t k = 0; k < masks.size(); ++k) {
    double sum = 0;
    std::int64_t correct = 0;
    for (std::int64_t i = 0; i < t1.samples; ++i) {
      sum += t1.loss_of(k, i);
      correct += t1.correct_of(k, i) ? 1 : 0;
    }
    const double mean = sum / double(t1.samples);
    means.push_back(mean);
    CHECK(mean == doctest::Approx(naive[k].loss).epsilon(1e-5));
    CHECK(mean == doctest::Approx(tree[k].loss).epsilon(1e-5));
    CHECK(correct == std::llround(naive[k].accuracy * double(t1.samples)));
  }
  // The structures differ (the comparison is not of one number 64 times).
  CHECK(*std::max_element(means.begin(), means.end()) - *std::min_element(means.begin(), means.end()) > 1e-3);
}

TEST_CASE("oracle and cost-aware oracle on hand-made tables") {
  // 3 candidates x 5 samples.
  const auto t = table({{0.5, 0.2, 0.9, 0.3, 1.0},  //
                        {0.4, 0.2, 0.8, 0.6, 2.0},  //
                        {0.1, 0.7, 0.8, 0.3, 3.0}},
                       {{0, 1, 0, 1, 0},  //
                        {1, 1, 1, 0, 0},  //
                        {1, 0, 1, 1, 0}});
  // Lowest loss, ties to the lower index: sample 1 (0.2 twice) -> 0, sample 2 (0.8 twice) -> 1,
  // sample 3 (0.3 twice) -> 0.
  CHECK(oracle_assignment(t) == Assignment{2, 0, 1, 0, 0});
  const std::vector<double> cost{3.0, 1.0, 1.0};
  // Sample 0: right are 1, 2 (both cost 1): lower loss 2. Sample 1: right are 0, 1: cheaper 1.
  // Sample 2: right are 1, 2 (cost 1, loss 0.8 both): lower index 1. Sample 3: right are 0, 2:
  // cheaper 2. Sample 4: none right: the lowest loss, 0.
  CHECK(cost_aware_oracle_assignment(t, cost) == Assignment{2, 1, 1, 2, 0});
  const std::vector<double> flat{1.0, 1.0, 1.0};
  // Equal costs: the lowest-loss right candidate.
  CHECK(cost_aware_oracle_assignment(t, flat) == Assignment{2, 0, 1, 0, 0});

  const auto s = evaluate_assignment(t, Assignment{2, 1, 1, 2, 0}, cost, "x");
  CHECK(s.accuracy == doctest::Approx(0.8));
  CHECK(s.loss == doctest::Approx((0.1 + 0.2 + 0.8 + 0.3 + 1.0) / 5));
  CHECK(s.cost == doctest::Approx((1 + 1 + 1 + 1 + 3) / 5.0));
  CHECK(s.load == std::vector<std::int64_t>{1, 2, 2});
  CHECK(best_single_candidate(t) == 1);  // 1 and 2 are right 3 times; 1 has the lower total loss (4.0 < 4.9)
  CHECK(input_error([&] {
          (void)cost_aware_oracle_assignment(t, std::span<const double>(flat).subspan(0, 2));
        }).find("2 costs") != std::string::npos);
}

TEST_CASE("the router's gradients match central differences in float64") {
  const Index in = 5, hidden = 4, K = 3, B = 6;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(-1, 1);
  moe_detail::Matrix<double> x(in, B);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = u(rng);
  RouterTargets targets;
  targets.loss.resize(K, 10);
  for (Index i = 0; i < targets.loss.size(); ++i) targets.loss.data()[i] = 1.5 + u(rng);
  targets.penalty = {0.1, 0.3, 0.05};
  const std::vector<std::int64_t> cols{7, 2, 0, 9, 4, 4};  // x column j is target column cols[j]
  for (const auto act : {RouterActivation::gelu, RouterActivation::relu})
    for (const auto obj : {RouterObjective::supervised, RouterObjective::expected_loss}) {
      CAPTURE(to_string(act));
      CAPTURE(to_string(obj));
      Router<double> r(in, hidden, K, act);
      r.init(3);
      // Non-zero biases, so that their gradients are tested away from the initial point.
      for (auto& v : r.params()) v += 0.3 * u(rng);
      std::vector<double> g(r.params().size());
      const double f0 = r.objective(x, targets, cols, obj, 0.4, g);
      CHECK(std::isfinite(f0));
      const double h = 1e-6;
      double worst = 0;
      for (std::size_t i = 0; i < g.size(); ++i) {
        const double keep = r.params()[i];
        r.params()[i] = keep + h;
        const double fp = r.objective(x, targets, cols, obj, 0.4);
        r.params()[i] = keep - h;
        const double fm = r.objective(x, targets, cols, obj, 0.4);
        r.params()[i] = keep;
        const double fd = (fp - fm) / (2 * h);
        worst = std::max(worst, std::abs(fd - g[i]) / std::max(std::abs(g[i]), 1e-3));
      }
      CHECK(worst < 1e-6);
      // The gradient is not trivially zero.
      CHECK(test::max_abs(std::span<const double>(g)) > 1e-3);
    }
}

TEST_CASE("router training is deterministic and lowers the supervised objective") {
  const auto images = test::synthetic_images(120, 4);
  const DatasetView data(images);
  const auto params = random_params(12);
  const std::vector<std::uint64_t> masks{0x3f, 0x00, 0x15, 0x2a};
  const auto t = per_sample_losses<Net>(config, params, data, masks);
  const auto x = moe_detail::gather_all<double>(data);
  RouterOptions o{.hidden = 8, .temperature = 0.05, .epochs = 8, .batch = 16, .lr = 1e-2, .seed = 2};
  const std::vector<double> cost{4, 1, 2, 2};
  const auto targets = router_targets(t, cost, o);
  Router<double> a(20, 8, 4), b(20, 8, 4), c(20, 8, 4);
  const auto fa = train_router(a, x, targets, o);
  const auto fb = train_router(b, x, targets, o);
  CHECK(fa.objective == fb.objective);
  CHECK(std::vector<double>(a.params().begin(), a.params().end()) ==
        std::vector<double>(b.params().begin(), b.params().end()));
  REQUIRE(fa.objective.size() == 9);
  CHECK(fa.objective.back() < fa.objective.front() - 0.05);
  o.seed = 3;
  (void)train_router(c, x, targets, o);
  CHECK(std::vector<double>(a.params().begin(), a.params().end()) !=
        std::vector<double>(c.params().begin(), c.params().end()));
  // The expected-loss objective trains too, and in float.
  o.objective = RouterObjective::expected_loss;
  o.lambda = 0.5;
  const auto te = router_targets(t, cost, o);
  CHECK(te.penalty == std::vector<double>{0.5, 0.125, 0.25, 0.25});  // lambda * cost / max cost
  Router<float> f(20, 8, 4), f2(20, 8, 4);
  const auto xf = moe_detail::gather_all<float>(data);
  const auto ff = train_router(f, xf, te, o);
  CHECK(ff.objective.back() < ff.objective.front());
  CHECK(train_router(f2, xf, te, o).objective == ff.objective);
}

TEST_CASE("routed execution equals each sample run alone with its structure") {
  const auto images = test::synthetic_images(41, 6);
  const DatasetView data(images);
  const auto params = random_params(13);
  const std::vector<std::uint64_t> masks{0x3f, 0x00, 0x15, 0x2a, 0x07};
  Assignment a(41);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::int32_t>(i % masks.size());
  std::mt19937_64 rng(1);
  std::shuffle(a.begin(), a.end(), rng);
  const auto logits = routed_logits<Net>(config, params, data, masks, a, 2, 4);
  const auto logits1 = routed_logits<Net>(config, params, data, masks, a, 1, 4);
  CHECK(logits == logits1);
  Net m(config, 1);
  Eigen::MatrixXf x;
  std::vector<std::int32_t> y;
  double worst = 0, worst_loss = 0;
  for (std::int64_t i = 0; i < data.size(); ++i) {
    const std::vector<std::int64_t> pos{i};
    data.gather(pos, x, y);
    const float loss =
        m.forward(F::mask_type(masks[static_cast<std::size_t>(a[static_cast<std::size_t>(i)])]), params,
                  MatView<const float>(x.data(), x.rows(), x.cols()), y);
    const auto alone = m.logits();
    for (Index c = 0; c < alone.rows; ++c)
      worst = std::max(worst, double(std::abs(alone(c, 0) - logits(c, i))));
    const auto [routed_loss, ok] =
        moe_detail::column_loss(MatView<const float>(logits.data(), logits.rows(), logits.cols()), i, y[0]);
    (void)ok;
    worst_loss = std::max(worst_loss, std::abs(routed_loss - double(loss)));
  }
  CHECK(worst < 1e-5);
  CHECK(worst_loss < 1e-5);
  // Routing matters: a different assignment gives different logits.
  Assignment other = a;
  std::rotate(other.begin(), other.begin() + 1, other.end());
  CHECK(routed_logits<Net>(config, params, data, masks, other) != logits);
  // The timing runs (its numbers are reported, never asserted).
  const auto timing = time_routed_execution<Net>(config, params, data, masks, a, 1, 16, 1);
  CHECK(timing.routed_seconds >= 0);
  CHECK(timing.dense_flops_per_sample > 0);
}

TEST_CASE(
    "the engine: the oracle's assignment gives the oracle's numbers; results do not depend on threads") {
  const auto train_images = test::synthetic_images(240, 7);
  const auto router_images = test::synthetic_images(160, 8);
  const auto test_images = test::synthetic_images(120, 9);
  const DatasetView shared_train(train_images), router_train(router_images), test_split(test_images);
  const std::vector<std::uint64_t> masks{0x00, 0x15, 0x2a, 0x07, 0x38};  // dense (0x3f) not a candidate
  MoeOptions o{.candidates = masks,
               .router = RouterOptions{.hidden = 8, .temperature = 0.1, .epochs = 5, .batch = 32, .seed = 1},
               .random_replicates = 20,
               .threads = 1,
               .chunk = 50};
  MixtureOfStructures<Net> e1(config, o);
  e1.train_shared(TrainOptions{.epochs = 2, .batch = 40, .lr = 5e-3, .seed = 4}, GatingOptions{.p = 0.5},
                  shared_train, test_split);
  const auto r = e1.run(router_train, test_split);
  REQUIRE(r.strategies.size() == 7);
  const auto& t = e1.test_table();
  const auto& costs = e1.costs();
  CHECK(costs.size() == masks.size());

  const auto oracle = oracle_assignment(t);
  CHECK(evaluate_assignment(t, oracle, costs, "oracle", true) == r.strategy("oracle"));
  CHECK(evaluate_assignment(t, cost_aware_oracle_assignment(t, costs), costs, "cost_aware_oracle", true) ==
        r.strategy("cost_aware_oracle"));
  CHECK(evaluate_assignment(t, e1.router_assignment(), costs, "router") == r.strategy("router"));
  // The cost-aware oracle is right wherever any candidate is; the oracle has the lowest loss.
  std::int64_t any = 0;
  for (std::int64_t i = 0; i < t.samples; ++i) {
    bool ok = false;
    for (std::size_t k = 0; k < t.candidates(); ++k) ok = ok || t.correct_of(k, i);
    any += ok ? 1 : 0;
  }
  CHECK(r.strategy("cost_aware_oracle").accuracy == double(any) / double(t.samples));
  for (const auto& s : r.strategies) {
    CAPTURE(s.name);
    if (s.name != "dense") {
      CHECK(s.loss >= r.strategy("oracle").loss);
      CHECK(s.accuracy <= r.strategy("cost_aware_oracle").accuracy);
      CHECK(std::accumulate(s.load.begin(), s.load.end(), std::int64_t{0}) == t.samples);
    }
  }
  CHECK(r.strategy("best_single").load[r.best_single] == t.samples);
  // Random routings: replicate 0 is the typical one; the best of 20 on the test split is
  // at least as accurate and is that replicate's evaluation.
  CHECK(evaluate_assignment(t, random_assignment(masks.size(), t.samples, o.random_seed, 0), costs,
                            "random") == r.strategy("random"));
  CHECK(evaluate_assignment(t, random_assignment(masks.size(), t.samples, o.random_seed, r.best_random),
                            costs, "best_random", true) == r.strategy("best_random"));
  for (std::uint64_t rep = 0; rep < 20; ++rep)
    CHECK(evaluate_assignment(t, random_assignment(masks.size(), t.samples, o.random_seed, rep), costs)
              .accuracy <= r.strategy("best_random").accuracy);
  // Dense is evaluated separately when not a candidate: its loss is the mean of its table.
  const auto dense = per_sample_losses<Net>(config, e1.shared(), test_split, {0x3f});
  CHECK(r.strategy("dense").loss ==
        doctest::Approx(std::accumulate(dense.loss.begin(), dense.loss.end(), 0.0) / double(dense.samples)));
  CHECK(r.router_entropy >= 0);
  CHECK(r.router_entropy <= std::log(double(masks.size())) + 1e-12);
  if (r.gap_closed_accuracy) {
    const auto& b = r.strategy("best_single");
    CHECK(*r.gap_closed_accuracy == doctest::Approx((r.strategy("router").accuracy - b.accuracy) /
                                                    (r.strategy("oracle").accuracy - b.accuracy)));
  }

  // Same report with 3 threads (but the seconds).
  o.threads = 3;
  MixtureOfStructures<Net> e3(config, o);
  e3.set_shared(e1.shared());
  auto r3 = e3.run(router_train, test_split);
  CHECK(r3.strategies == r.strategies);
  CHECK(r3.router_objective == r.router_objective);
  CHECK(r3.best_random == r.best_random);
  CHECK(r3.router_entropy == r.router_entropy);

  // Outputs.
  const auto dir = std::filesystem::temp_directory_path() / "additive_test_moe";
  std::filesystem::create_directories(dir);
  write_moe_outputs(dir, r);
  std::ifstream in(dir / "moe.json");
  const auto j = nlohmann::json::parse(in);
  CHECK(j.at("format") == "additive-moe-1");
  CHECK(j.at("strategies").size() == 7);
  CHECK(j.at("candidates").size() == masks.size());
  std::ifstream csv(dir / "moe.csv");
  std::string line;
  int lines = 0;
  while (std::getline(csv, line)) ++lines;
  CHECK(lines == 8);  // header + 7 strategies
  std::ifstream svg(dir / "moe.svg");
  std::stringstream ss;
  ss << svg.rdbuf();
  CHECK(ss.str().find("cost_aware_oracle") != std::string::npos);
  CHECK(ss.str().find("</svg>") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("bad options are one clear InputError") {
  const auto make = [](MoeOptions o) { MixtureOfStructures<Net> e(config, o); };
  const auto error = [&](MoeOptions o) { return input_error([&] { make(o); }); };
  const MoeOptions good{.candidates = {0, 1}};
  CHECK(error(good).empty());
  auto o = good;
  o.candidates.clear();
  CHECK(error(o).find("candidate set is empty") != std::string::npos);
  o = good;
  o.candidates = {0, 64};
  CHECK(error(o).find("0x40 is not a structure") != std::string::npos);
  o = good;
  o.candidates = {3, 3};
  CHECK(error(o).find("listed twice") != std::string::npos);
  o = good;
  o.router.temperature = 0;
  CHECK(error(o).find("temperature") != std::string::npos);
  o.router.temperature = std::nan("");
  CHECK(error(o).find("temperature") != std::string::npos);
  o = good;
  o.router.lambda = -1;
  CHECK(error(o).find("lambda") != std::string::npos);
  o.router.lambda = std::numeric_limits<double>::infinity();
  CHECK(error(o).find("lambda") != std::string::npos);
  o = good;
  o.costs = {1.0};
  CHECK(error(o).find("1 costs for 2 candidates") != std::string::npos);
  o.costs = {1.0, -2.0};
  CHECK(error(o).find("costs must be finite") != std::string::npos);
  o = good;
  o.random_replicates = 0;
  CHECK(error(o).find("random replicates") != std::string::npos);
  o = good;
  o.router.hidden = 0;
  CHECK(error(o).find("hidden width") != std::string::npos);
  o = good;
  o.threads = 0;
  CHECK(error(o).find("threads") != std::string::npos);
  // Every message is one line.
  o = good;
  o.candidates = {0, 64};
  CHECK(error(o).find('\n') == std::string::npos);
  // No shared weights yet.
  MixtureOfStructures<Net> e(config, good);
  const auto images = test::synthetic_images(10, 1);
  const DatasetView d(images);
  CHECK(input_error([&] { (void)e.run(d, d); }).find("no shared weights") != std::string::npos);
  // The router refuses targets of the wrong shape.
  Router<double> router(20, 4, 2);
  RouterTargets targets{moe_detail::Matrix<double>::Zero(3, 4), {0.0, 0.0, 0.0}};
  const moe_detail::Matrix<double> x = moe_detail::Matrix<double>::Zero(20, 2);
  const std::vector<std::int64_t> cols{0, 1};
  CHECK(input_error([&] {
          (void)router.objective(x, targets, cols, RouterObjective::supervised, 1.0);
        }).find("targets for 3 candidates, the router has 2") != std::string::npos);
  Router<double> router3(20, 4, 3);
  CHECK(input_error([&] {
          (void)router3.objective(x, targets, std::vector<std::int64_t>{0}, RouterObjective::supervised, 1.0);
        }).find("1 target columns for 2 inputs") != std::string::npos);
  CHECK(input_error([&] {
          (void)router3.objective(x, targets, std::vector<std::int64_t>{0, 4}, RouterObjective::supervised,
                                  1.0);
        }).find("target column 4 outside") != std::string::npos);
  CHECK(input_error([&] {
          (void)router3.objective(x, targets, cols, RouterObjective::supervised, 1.0);
        }).empty());
  // A shared buffer of the wrong size.
  e.set_shared(std::vector<float>(5));
  CHECK(input_error([&] { (void)e.run(d, d); }).find("parameter buffer has 5 elements") != std::string::npos);
}
