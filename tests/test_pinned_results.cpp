// Pins the numbers of a small search and of single training runs (AdamW and SGD, float
// and double, stochastic gating per batch and per sample) to the values the code wrote
// BEFORE the engines became generic over the Model concept (tests/golden/pinned_results.json,
// written by this test with ADDITIVE_PIN_WRITE=<path> at commit d49208d). A refactor that
// changes a seed domain, the data order, the initialisation or the optimizer fails here.
//
// The tolerance: bit identity holds per machine, and the CPU may differ from the one that
// wrote the file (AVX-512 there, perhaps AVX2 here: other GEMM kernels, other rounding).
// Losses after a few float32 steps then move by about 1e-6 relative, while any change of
// behaviour (another seed, order or formula) moves them by 1e-3 or more, so numbers are
// compared to 1e-4 relative; structure groups, masks and step counts are exact. On the
// machine that wrote the file the drivers' outputs were also compared bit for bit.
//
// ADDITIVE_TEST_LABELS: pinned
// (The sanitizer run skips the label: a Debug build rounds differently from the Release
// build the numbers were pinned with.)
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/exp/search.hpp"
#include "additive/exp/train.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

using Branch = MlpFamily<4, 2>;  // 256 masks, 81 functions
const MlpConfig model{.in_dim = 20, .d = 8, .h = 16, .classes = 4};

ImageDataset synthetic(std::int64_t count, std::uint64_t seed) { return test::synthetic_images(count, seed); }

struct Data {
  ImageDataset train_set = synthetic(160, 11);
  ImageDataset val_set = synthetic(64, 12);
  DatasetView train{train_set};
  DatasetView val{val_set};
};

nlohmann::json search_numbers(const Data& d) {
  const TrainOptions train{.epochs = 2, .batch = 32, .lr = 5e-3, .seed = 7};
  StructureSearch<cpu::MlpModel<Branch, float>> search(model, train, {.seeds = 2, .workers = 2});
  const auto report = search.run(d.train, d.val, {}, false, nlohmann::json::object(), false);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& e : report.entries)
    out.push_back(
        {{"mask", e.mask}, {"equivalent", e.equivalent}, {"acc", e.acc_mean}, {"loss", e.loss_mean}});
  return out;
}

template <class T>
nlohmann::json train_numbers(const Data& d, std::uint64_t mask, const TrainOptions& o,
                             std::optional<GatingOptions> gating = std::nullopt) {
  Trainer<cpu::MlpModel<Branch, T>> trainer(model, Branch::mask_type(mask), o,
                                            RunOptions{.threads = 2, .progress = false}, gating);
  const auto r = trainer.fit(d.train, d.val);
  nlohmann::json epochs = nlohmann::json::array();
  for (const auto& e : r.epochs) epochs.push_back({e.train_loss, e.val.loss, e.val.accuracy});
  double sum = 0, sum_sq = 0;
  for (const T v : trainer.params()) {
    sum += double(v);
    sum_sq += double(v) * double(v);
  }
  return {{"steps", r.steps}, {"epochs", epochs}, {"param_sum", sum}, {"param_sum_sq", sum_sq}};
}

nlohmann::json all_numbers() {
  const Data d;
  const TrainOptions adamw{.epochs = 2, .batch = 32, .lr = 5e-3, .seed = 3};
  const TrainOptions sgd{
      .epochs = 2, .batch = 32, .optimizer = "sgd", .lr = 2e-2, .nesterov = true, .seed = 4};
  return {{"search", search_numbers(d)},
          {"train_float_adamw_0xad", train_numbers<float>(d, 0xad, adamw)},
          {"train_double_sgd_0x6d", train_numbers<double>(d, 0x6d, sgd)},
          {"gated_batch", train_numbers<float>(d, 0xff, adamw, GatingOptions{.p = 0.7})},
          {"gated_sample",
           train_numbers<float>(d, 0xff, adamw, GatingOptions{.p = 0.8, .p_end = 0.5, .per_sample = true})}};
}

/// Whether `where` names an accuracy: the search's "acc", or entry 2 of an epoch record.
bool is_accuracy(const std::string& where) {
  return where.ends_with(".acc") || (where.find(".epochs[") != std::string::npos && where.ends_with("][2]"));
}

/// a and b: the same shape; numbers within `rel` of each other (relative to max(1, |b|)),
/// accuracies within one of the 64 validation samples (an argmax may flip on a sample
/// whose two largest logits are within rounding of each other on another CPU).
void check_close(const nlohmann::json& a, const nlohmann::json& b, const std::string& where, double rel) {
  if (b.is_number_float() || a.is_number_float()) {
    REQUIRE_MESSAGE(a.is_number(), where);
    const double x = a.get<double>(), y = b.get<double>();
    const double tolerance = is_accuracy(where) ? 1.0 / 64 + 1e-12 : rel * std::max(1.0, std::abs(y));
    CHECK_MESSAGE(std::abs(x - y) <= tolerance, where, ": ", x, " now, ", y, " pinned");
    return;
  }
  if (b.is_array() || b.is_object()) {
    REQUIRE_MESSAGE(a.type() == b.type(), where);
    REQUIRE_MESSAGE(a.size() == b.size(), where, ": ", a.size(), " entries now, ", b.size(), " pinned");
    if (b.is_array())
      for (std::size_t i = 0; i < b.size(); ++i)
        check_close(a[i], b[i], where + "[" + std::to_string(i) + "]", rel);
    else
      for (const auto& item : b.items()) {  // no structured binding: clang 14 cannot capture those
        const std::string& k = item.key();
        REQUIRE_MESSAGE(a.contains(k), where, ".", k);
        check_close(a.at(k), item.value(), where + "." + k, rel);
      }
    return;
  }
  CHECK_MESSAGE(a == b, where, ": ", a.dump(), " now, ", b.dump(), " pinned");
}

}  // namespace

TEST_CASE("the engines write the numbers the pre-refactor code wrote") {
  const auto now = all_numbers();
  if (const char* out = std::getenv("ADDITIVE_PIN_WRITE")) {
    std::ofstream(out) << now.dump(1) << "\n";
    MESSAGE("wrote " << out);
  }
  const auto path = std::filesystem::path(ADDITIVE_SOURCE_DIR) / "tests/golden/pinned_results.json";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path.string());
  const auto pinned = nlohmann::json::parse(in);
  // Non-trivial: the search ranks distinct functions, the runs learned something.
  REQUIRE(pinned.at("search").size() == 81);
  REQUIRE(pinned.at("train_float_adamw_0xad").at("epochs").at(1).at(2).get<double>() > 0.3);  // chance: 0.25
  check_close(now, pinned, "pinned", 1e-4);
}
