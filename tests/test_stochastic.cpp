// Stochastic gating (experiment 3): with p = 1 the gated trainer (per batch and per sample)
// is bit-for-bit the dense Trainer; p < 1 trains other weights, reproducibly on any thread
// count; a gated run stopped and resumed ends bit-identical; a checkpoint of another
// gating is refused; the mask draws keep each gate with probability p on the linear
// schedule; the engine evaluates every structure and reads a search's results file.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "additive/exp/stochastic.hpp"

using namespace additive;

namespace {

/// The engines over family F, in float on the CPU.
template <class F>
using Gating = StochasticGating<cpu::MlpModel<F, float>>;
template <class F>
using FloatTrainer = Trainer<cpu::MlpModel<F, float>>;

using F = MlpFamily<4, 2>;
const MlpConfig model_config{.in_dim = 20, .d = 16, .h = 32, .classes = 4};

ImageDataset synthetic(std::int64_t count, std::uint64_t seed) {
  ImageDataset ds;
  ds.count = count;
  ds.rows = 4;
  ds.cols = 5;
  ds.num_classes = 4;
  std::mt19937_64 rng(seed);
  ds.pixels.resize(static_cast<std::size_t>(count * 20));
  ds.labels.resize(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const auto label = static_cast<std::uint8_t>(rng() % 4);
    for (int p = 0; p < 20; ++p)
      ds.pixels[static_cast<std::size_t>(i * 20 + p)] =
          static_cast<std::uint8_t>(rng() % 128 + ((p % 4) == label ? 100 : 0));
    ds.labels[static_cast<std::size_t>(i)] = label;
  }
  return ds;
}

struct Data {
  ImageDataset train_set = synthetic(200, 1);
  ImageDataset val_set = synthetic(64, 2);
  DatasetView train{train_set};
  DatasetView val{val_set};
};

const TrainOptions options{.epochs = 2, .batch = 40, .lr = 5e-3, .seed = 9};  // 5 steps per epoch

struct Run {
  std::vector<float> params;
  std::vector<double> losses;  // per-epoch train loss and validation loss
  bool operator==(const Run&) const = default;
};

Run train(const Data& d, std::optional<GatingOptions> gating, int threads = 2,
          const TrainOptions& o = options) {
  FloatTrainer<F> t(model_config, F::mask_type::all(), o, RunOptions{.threads = threads, .progress = false},
                    gating);
  const auto r = t.fit(d.train, d.val);
  Run out{{t.params().begin(), t.params().end()}, {}};
  for (const auto& e : r.epochs) {
    out.losses.push_back(e.train_loss);
    out.losses.push_back(e.val.loss);
  }
  return out;
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("additive_test_stochastic_" + name);
}

}  // namespace

TEST_CASE("gating with p = 1 equals dense training bit for bit, per batch and per sample") {
  const Data d;
  const Run dense = train(d, std::nullopt);
  REQUIRE(dense.params.size() > 100);
  CHECK(train(d, GatingOptions{.p = 1.0}) == dense);
  CHECK(train(d, GatingOptions{.p = 1.0, .per_sample = true}) == dense);
  // A gated run is not trivially the dense one: p < 1 trains other weights.
  CHECK(train(d, GatingOptions{.p = 0.5}).params != dense.params);
  CHECK(train(d, GatingOptions{.p = 0.5, .per_sample = true}).params != dense.params);
  CHECK(train(d, GatingOptions{.p = 1.0, .p_end = 0.5}).params != dense.params);
}

TEST_CASE("gated training is reproducible and independent of the thread count") {
  const Data d;
  for (const bool per_sample : {false, true}) {
    const GatingOptions g{.p = 0.6, .p_end = 0.9, .per_sample = per_sample};
    const Run a = train(d, g, 1);
    CHECK(train(d, g, 2) == a);
    CHECK(train(d, g, 2) == a);
  }
}

TEST_CASE("a gated run stopped and resumed ends bit-identical; other gating is refused") {
  const Data d;
  for (const bool per_sample : {false, true}) {
    const GatingOptions g{.p = 0.5, .p_end = 0.8, .per_sample = per_sample};
    const Run whole = train(d, g);
    const auto ckpt = temp_path(per_sample ? "sample.safetensors" : "batch.safetensors");
    {
      FloatTrainer<F> t(
          model_config, F::mask_type::all(), options,
          RunOptions{.threads = 2, .checkpoint = ckpt, .stop_after_steps = 7, .progress = false}, g);
      t.fit(d.train, d.val);
    }
    FloatTrainer<F> t(model_config, F::mask_type::all(), options, RunOptions{.threads = 1, .progress = false},
                      g);
    t.resume(ckpt);
    CHECK(t.step() == 7);
    t.fit(d.train, d.val);
    CHECK(std::vector<float>(t.params().begin(), t.params().end()) == whole.params);

    GatingOptions other = g;
    other.p = 0.4;
    FloatTrainer<F> wrong(model_config, F::mask_type::all(), options, RunOptions{.progress = false}, other);
    CHECK_THROWS_WITH_AS(wrong.resume(ckpt), doctest::Contains("gating"), InputError);
    FloatTrainer<F> ungated(model_config, F::mask_type::all(), options, RunOptions{.progress = false});
    CHECK_THROWS_WITH_AS(ungated.resume(ckpt), doctest::Contains("gating"), InputError);
    std::filesystem::remove(ckpt);
  }
}

TEST_CASE("mask draws keep each gate with probability p; the schedule is linear per step") {
  std::mt19937_64 rng(3);
  for (const double p : {0.2, 0.5, 0.9}) {
    std::int64_t kept = 0;
    constexpr int draws = 20000;
    for (int i = 0; i < draws; ++i) kept += draw_mask<F::mask_type>(rng, p).active();
    CHECK(double(kept) / (draws * F::gates) == doctest::Approx(p).epsilon(0.03));
  }
  for (int i = 0; i < 100; ++i) CHECK(draw_mask<F::mask_type>(rng, 1.0) == F::mask_type::all());
  const GatingOptions g{.p = 0.4, .p_end = 1.0};
  CHECK(g.at(0, 11) == 0.4);
  CHECK(g.at(5, 11) == doctest::Approx(0.7));
  CHECK(g.at(10, 11) == 1.0);
  CHECK(GatingOptions{.p = 0.3}.at(7, 11) == 0.3);
}

TEST_CASE("bad gating options are one clear error") {
  for (const double p : {0.0, -0.5, 1.5, std::nan("")}) {
    CHECK_THROWS_WITH_AS(GatingOptions{.p = p}.validate(), doctest::Contains("(0, 1]"), InputError);
    CHECK_THROWS_WITH_AS((GatingOptions{.p = 0.5, .p_end = p}.validate()), doctest::Contains("p_end"),
                         InputError);
  }
  const auto make = [] {
    FloatTrainer<F> t(model_config, F::mask_type::all(), options, {}, GatingOptions{.p = 0});
  };
  CHECK_THROWS_AS(make(), InputError);
  CHECK_THROWS_AS(Gating<F>(model_config, options, StochasticOptions{.sample = 0}), InputError);
  CHECK_THROWS_AS(Gating<F>(model_config, options, StochasticOptions{.sample = 257}), InputError);
}

TEST_CASE("quartiles interpolate between order statistics") {
  const auto d = distribution({4, 1, 3, 2, 5});
  CHECK(d.min == 1);
  CHECK(d.q1 == 2);
  CHECK(d.median == 3);
  CHECK(d.q3 == 4);
  CHECK(d.max == 5);
  CHECK(d.mean == 3);
  CHECK(distribution({1, 2}).median == 1.5);
}

TEST_CASE("the engine evaluates every structure and compares with a search's results") {
  const Data d;
  // A results file as the search writes it: two representatives, one with an equivalent mask.
  const auto results = temp_path("results.json");
  {
    nlohmann::json j{{"format", "additive-search-1"},
                     {"family", F::describe()},
                     {"complete", true},
                     {"report",
                      {{"entries",
                        {{{"mask", 255}, {"acc_mean", 0.9}, {"equivalent", nlohmann::json::array()}},
                         {{"mask", 0}, {"acc_mean", 0.5}, {"equivalent", {8, 16}}}}}}}};
    std::ofstream(results) << j.dump();
  }
  Gating<F> engine(model_config, options,
                   StochasticOptions{.gating = {.p = 0.7}, .threads = 2, .progress = false});
  const auto r = engine.run(d.train, d.val, results);
  REQUIRE(r.entries.size() == 256);
  CHECK(r.accuracy.count == 256);
  CHECK(r.accuracy.min <= r.accuracy.q1);
  CHECK(r.accuracy.q3 <= r.accuracy.max);
  CHECK(r.dense_gated.accuracy == r.entries.back().accuracy);
  REQUIRE(r.dense_alone);
  CHECK(r.dense_alone->loss == train(d, std::nullopt).losses.back());
  REQUIRE(r.search);
  CHECK(r.search->matched == 4);
  CHECK(r.search->ranked == 2);
  CHECK(r.entries[8].search_accuracy == 0.5);
  CHECK_FALSE(r.entries[1].search_accuracy);
  CHECK(stochastic_csv(r).starts_with("mask,structure,accuracy,loss,search_accuracy\n0x0,"));
  CHECK(stochastic_svg(r).find("id=\"scatter\"") != std::string::npos);

  // The same engine without gating noise: the dense structure of the gated model (p = 1) is
  // the dense model trained alone.
  Gating<F> exact(model_config, options, StochasticOptions{.sample = 5, .threads = 1, .progress = false});
  const auto e = exact.run(d.train, d.val);
  CHECK(e.entries.size() == 5);
  REQUIRE(e.dense_alone);
  CHECK(e.dense_gated.accuracy == e.dense_alone->accuracy);
  CHECK(e.dense_gated.loss == doctest::Approx(e.dense_alone->loss).epsilon(1e-6));

  // Results of another family, or not a results file at all: one clear error.
  std::ofstream(results) << R"({"format": "additive-search-1", "family": "mlp S=4 L=2 merge_only"})";
  CHECK_THROWS_WITH_AS(engine.run(d.train, d.val, results), doctest::Contains("family"), InputError);
  std::ofstream(results) << "{ not json";
  CHECK_THROWS_WITH_AS(engine.run(d.train, d.val, results), doctest::Contains("not a search results file"),
                       InputError);
  std::filesystem::remove(results);
  CHECK_THROWS_WITH_AS(engine.run(d.train, d.val, results), doctest::Contains("cannot be read"), InputError);
}
