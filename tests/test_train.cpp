// The training engine: it learns, the same seed gives bit-identical runs on any thread
// count, and a run stopped and resumed from its checkpoint (mid-epoch or at an epoch
// boundary, AdamW or SGD) ends bit-identical to the uninterrupted run.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <vector>

#include "additive/exp/train.hpp"

using namespace additive;

namespace {

using F = MlpFamily<4, 2>;
const MlpConfig model_config{.in_dim = 20, .d = 16, .h = 32, .classes = 4};

/// A learnable synthetic set: 4x5 "images", the label is which quarter of the image is brightest.
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

const TrainOptions options{.epochs = 3, .batch = 40, .lr = 5e-3, .seed = 9};  // 5 steps per epoch
const RunOptions quiet{.threads = 2, .progress = false};

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("additive_test_train_" + name + ".safetensors");
}

template <class T>
std::vector<T> trained(const Data& d, F::mask_type mask, const TrainOptions& o, RunOptions run,
                       std::vector<EpochRecord>* epochs = nullptr) {
  Trainer<cpu::MlpModel<F, T>> t(model_config, mask, o, run);
  auto r = t.fit(d.train, d.val);
  if (epochs != nullptr) *epochs = r.epochs;
  return {t.params().begin(), t.params().end()};
}

}  // namespace

TEST_CASE("training learns the synthetic task") {
  const Data d;
  Trainer<cpu::MlpModel<F, float>> t(model_config, F::mask_type(0xAD), options, quiet);
  const auto before = t.evaluate(d.val);
  const auto r = t.fit(d.train, d.val);
  REQUIRE(r.finished);
  CHECK(r.epochs.size() == 3);
  CHECK(r.steps == 15);
  CHECK(r.epochs.back().val.loss < before.loss * 0.5);
  CHECK(r.epochs.back().val.accuracy > 0.9);
}

TEST_CASE("evaluate records which samples it classified right, in the view's order, across batches") {
  const Data d;
  // 64 samples in batches of 24: three batches, the last one partial.
  Trainer<cpu::MlpModel<F, float>> t(model_config, F::mask_type(0xAD), options,
                                     RunOptions{.threads = 1, .eval_batch = 24, .progress = false});
  // Untrained (seeded initial weights): about a quarter right, so both outcomes occur.
  // A view in another order than storage, so that "in the view's order" is tested.
  std::vector<std::int64_t> order(64);
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int64_t>((i * 37) % 64);
  const DatasetView shuffled(d.val_set, order);
  const auto all = t.evaluate(shuffled);
  REQUIRE(all.correct.size() == 64);
  CHECK(all.correct.count() == static_cast<std::int64_t>(std::llround(all.accuracy * 64)));
  int wrong = 0, right = 0;
  for (std::int64_t i = 0; i < 64; ++i) {
    const auto one = t.evaluate(subset(shuffled, std::vector<std::int64_t>{i}));  // alone: 1 or 0
    CHECK(all.correct.get(static_cast<std::size_t>(i)) == (one.accuracy == 1.0));
    (one.accuracy == 1.0 ? right : wrong) += 1;
  }
  CHECK(right > 0);  // both outcomes occur, so the bits are not trivially all one value
  CHECK(wrong > 0);
}

TEST_CASE_TEMPLATE("the same seed gives bit-identical training on 1 and 2 threads", T, float, double) {
  const Data d;
  const auto a = trained<T>(d, F::mask_type(0x6D), options, {.threads = 1, .progress = false});
  const auto b = trained<T>(d, F::mask_type(0x6D), options, {.threads = 2, .progress = false});
  const auto c = trained<T>(d, F::mask_type(0x6D), options, {.threads = 2, .progress = false});
  CHECK(a == b);
  CHECK(b == c);
  TrainOptions other = options;
  other.seed = 10;
  CHECK(trained<T>(d, F::mask_type(0x6D), other, quiet) != a);
}

TEST_CASE("a run stopped and resumed from its checkpoint ends bit-identical to the uninterrupted run") {
  const Data d;
  for (const std::string optimizer : {"adamw", "sgd"}) {
    for (const std::int64_t stop : {7, 10}) {  // mid-epoch, and at the end of epoch 2
      CAPTURE(optimizer);
      CAPTURE(stop);
      TrainOptions o = options;
      o.optimizer = optimizer;
      std::vector<EpochRecord> full_epochs, resumed_epochs;
      const auto full = trained<float>(d, F::mask_type(0xDD), o, quiet, &full_epochs);

      const auto path = temp_path(optimizer + std::to_string(stop));
      RunOptions first = quiet;
      first.checkpoint = path;
      first.stop_after_steps = stop;
      Trainer<cpu::MlpModel<F, float>> a(model_config, F::mask_type(0xDD), o, first);
      const auto partial = a.fit(d.train, d.val);
      CHECK_FALSE(partial.finished);
      CHECK(partial.steps == stop);
      REQUIRE(std::filesystem::exists(path));

      RunOptions second = quiet;
      second.threads = 1;  // a different thread count changes nothing
      Trainer<cpu::MlpModel<F, float>> b(model_config, F::mask_type(0xDD), o, second);
      b.resume(path);
      CHECK(b.step() == stop);
      const auto rest = b.fit(d.train, d.val);
      CHECK(rest.finished);
      const std::vector<float> resumed(b.params().begin(), b.params().end());
      CHECK(resumed == full);
      // The epochs finished after the resume report the same numbers as in the full run.
      REQUIRE(!rest.epochs.empty());
      CHECK(rest.epochs.back().val.loss == full_epochs.back().val.loss);
      CHECK(rest.epochs.back().train_loss == full_epochs.back().train_loss);
      std::filesystem::remove(path);
    }
  }
}

TEST_CASE(
    "resume refuses a checkpoint of another structure, width or training options, and changes nothing") {
  const Data d;
  const auto path = temp_path("mismatch");
  RunOptions run = quiet;
  run.checkpoint = path;
  run.stop_after_steps = 3;
  Trainer<cpu::MlpModel<F, float>> a(model_config, F::mask_type(0xDD), options, run);
  a.fit(d.train, d.val);

  Trainer<cpu::MlpModel<F, float>> other_mask(model_config, F::mask_type(0xAD), options, quiet);
  const std::vector<float> before(other_mask.params().begin(), other_mask.params().end());
  CHECK_THROWS_WITH_AS(other_mask.resume(path),
                       doctest::Contains("was written for mask 0xdd, this run uses 0xad"), InputError);
  CHECK(std::vector<float>(other_mask.params().begin(), other_mask.params().end()) == before);
  CHECK(other_mask.step() == 0);

  TrainOptions lr = options;
  lr.lr = 1e-2;
  Trainer<cpu::MlpModel<F, float>> other_lr(model_config, F::mask_type(0xDD), lr, quiet);
  CHECK_THROWS_WITH_AS(other_lr.resume(path), doctest::Contains("training options"), InputError);

  MlpConfig wider = model_config;
  wider.d = 32;
  Trainer<cpu::MlpModel<F, float>> other_width(wider, F::mask_type(0xDD), options, quiet);
  CHECK_THROWS_AS(other_width.resume(path), InputError);  // shapes differ
  std::filesystem::remove(path);
}

TEST_CASE("training options are validated") {
  TrainOptions o = options;
  o.optimizer = "lamb";
  CHECK_THROWS_WITH_AS(o.validate(), doctest::Contains("'lamb'"), InputError);
  o = options;
  o.epochs = 0;
  CHECK_THROWS_AS(o.validate(), InputError);
}
