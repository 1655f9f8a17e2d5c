// Co-training checkpoints (CoTrainer::save / resume, include/additive/exp/cotrain.hpp) on
// the thread communicator, float64: a run stopped after k steps (mid-epoch, mid local-SGD
// period, or at an epoch end) and resumed from its checkpoint ends with parameters,
// epoch losses and communication counters == an uninterrupted run's on every rank, in
// synchronous and local-SGD modes; a checkpoint of other settings, or none, is the same
// InputError on every rank and changes nothing.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "additive/dist/thread_comm.hpp"
#include "additive/exp/cotrain.hpp"

using namespace additive;

namespace {

using Fam = MlpFamily<4, 2, GateLayout::merge_only>;
using FMask = Fam::mask_type;
using Co = CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm>;
const MlpConfig small{.in_dim = 12, .d = 8, .h = 12, .classes = 3};
const std::uint64_t masks[] = {0x3f, 0x15, 0x2a};

ImageDataset make_data(std::int64_t n, std::uint64_t seed) {
  ImageDataset d{.count = n, .rows = 3, .cols = 4, .num_classes = 3, .pixels = {}, .labels = {}};
  std::mt19937_64 gen(seed);
  d.pixels.resize(static_cast<std::size_t>(n * 12));
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(gen() & 0xff);
  d.labels.resize(static_cast<std::size_t>(n));
  for (auto& l : d.labels) l = static_cast<std::uint8_t>(gen() % 3);
  return d;
}

struct Outcome {
  std::vector<std::vector<double>> params;  ///< per rank
  std::vector<double> last_loss;            ///< per rank: the last epoch's mean train loss
  std::vector<CommStats> comm;              ///< per rank
};

/// K ranks co-train; with `stop` >= 0 the run first stops there (checkpoint at `path`),
/// and fresh trainers resume from the checkpoint and finish.
Outcome run(int K, const TrainOptions& train, const CoTrainOptions& co, const ImageDataset& set,
            std::int64_t stop, const std::filesystem::path& path) {
  const DatasetView data(set);
  Outcome out{std::vector<std::vector<double>>(static_cast<std::size_t>(K)),
              std::vector<double>(static_cast<std::size_t>(K)),
              std::vector<CommStats>(static_cast<std::size_t>(K))};
  const DatasetView none(set, {});
  dist::run_threads(K, [&](dist::ThreadComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    CoTrainResult result;
    if (stop >= 0) {
      Co first(comm, small, FMask(masks[r]), train, co);
      const auto part =
          first.fit(data, none, false, {}, CoRunOptions{.checkpoint = path, .stop_after_steps = stop});
      CHECK_FALSE(part.finished);
      CHECK(part.steps == stop);
      Co second(comm, small, FMask(masks[r]), train, co);
      second.resume(path);
      CHECK(second.step() == stop);
      result = second.fit(data, none);
      out.params[r].assign(second.params().begin(), second.params().end());
    } else {
      Co whole(comm, small, FMask(masks[r]), train, co);
      result = whole.fit(data, none);
      out.params[r].assign(whole.params().begin(), whole.params().end());
    }
    CHECK(result.finished);
    out.last_loss[r] = result.epochs.back().train_loss;
    out.comm[r] = result.comm;
  });
  return out;
}

}  // namespace

TEST_CASE("a co-training stopped and resumed from its checkpoint equals an uninterrupted one") {
  const ImageDataset set = make_data(40, 7);
  // 40 samples, batch 9: 5 steps per epoch, 10 in all.
  const TrainOptions train{.epochs = 2, .batch = 9, .lr = 2e-2, .seed = 4};
  const auto dir = std::filesystem::temp_directory_path();
  struct Mode {
    const char* name;
    CoTrainOptions co;
  };
  for (const Mode& mode : {Mode{"synchronous", CoTrainOptions{.checksum_every = 2}},
                           Mode{"local SGD H 3", CoTrainOptions{.checksum_every = 1, .local_steps = 3}}}) {
    for (const int K : {2, 3}) {
      const auto whole = run(K, train, mode.co, set, -1, {});
      // Not trivial: training moved the weights; the replicas agree at the end.
      std::vector<double> init;
      dist::run_threads(1, [&](dist::ThreadComm& comm) {
        Co c(comm, small, FMask(masks[0]), train, mode.co);
        init.assign(c.params().begin(), c.params().end());
      });
      CHECK(whole.params[0] != init);
      CHECK(whole.params[0] == whole.params[1]);
      for (const std::int64_t stop : {4, 5, 7}) {  // mid-epoch and mid-period; epoch end; period end + 1
        CAPTURE(mode.name);
        CAPTURE(K);
        CAPTURE(stop);
        const auto path = dir / ("additive_test_cotrain_resume_" + std::to_string(K) + "_" +
                                 std::to_string(stop) + ".safetensors");
        const auto resumed = run(K, train, mode.co, set, stop, path);
        for (int r = 0; r < K; ++r) {
          const auto q = static_cast<std::size_t>(r);
          CHECK(resumed.params[q] == whole.params[q]);
          CHECK(resumed.last_loss[q] == whole.last_loss[q]);
          CHECK(resumed.comm[q].all_reduces == whole.comm[q].all_reduces);
          CHECK(resumed.comm[q].payload_bytes == whole.comm[q].payload_bytes);
          CHECK(resumed.comm[q].checksums == whole.comm[q].checksums);
        }
        std::filesystem::remove(path);
      }
    }
  }
}

TEST_CASE("resume refuses a checkpoint of other settings, or none, on every rank, changing nothing") {
  const ImageDataset set = make_data(40, 7);
  const DatasetView data(set);
  const TrainOptions train{.epochs = 2, .batch = 9, .lr = 2e-2, .seed = 4};
  const CoTrainOptions co{.local_steps = 2};
  const auto path =
      std::filesystem::temp_directory_path() / "additive_test_cotrain_resume_refuse.safetensors";
  dist::run_threads(2, [&](dist::ThreadComm& comm) {
    Co first(comm, small, FMask(masks[comm.rank()]), train, co);
    first.fit(data, DatasetView(set, {}), false, {}, CoRunOptions{.checkpoint = path, .stop_after_steps = 3});
  });
  std::vector<std::string> errors(2), missing(2);
  std::vector<int> unchanged(2, 0);
  dist::run_threads(2, [&](dist::ThreadComm& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    TrainOptions other = train;
    other.lr = 1e-2;
    Co second(comm, small, FMask(masks[r]), other, co);
    const std::vector<double> before(second.params().begin(), second.params().end());
    try {
      second.resume(path);
    } catch (const InputError& e) {
      errors[r] = e.what();
    }
    try {
      second.resume(path.string() + ".missing");
    } catch (const InputError& e) {
      missing[r] = e.what();
    }
    unchanged[r] =
        second.step() == 0 && std::vector<double>(second.params().begin(), second.params().end()) == before;
  });
  for (std::size_t r = 0; r < 2; ++r) {
    CHECK(errors[r].find("other co-training settings") != std::string::npos);
    CHECK(errors[r].find("train.lr 0.02 there, 0.01 now") != std::string::npos);
    CHECK(!missing[r].empty());
    CHECK(unchanged[r] == 1);
  }
  std::filesystem::remove(path);
}
