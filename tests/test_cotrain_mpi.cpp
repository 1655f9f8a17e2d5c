// ADDITIVE_TEST_LABELS: mpi
// ADDITIVE_TEST_MPI_NP: 2 3
// Co-training over MPI ranks (include/additive/exp/cotrain.hpp on dist::MpiComm), float64:
// the replicas stay bit-identical; the result equals the same co-training on the thread
// communicator (run inside rank 0's process), bit for bit with 2 ranks (the all-reduce is
// one addition per element whatever the algorithm) and to rounding with 3 (Open MPI picks
// its own reduction order: per step the averaged gradients differ by a few ulps; with
// plain SGD and O(1) weights that stays ~1e-15 after 4 steps, so 1e-12 is ample and far
// below the O(1e-3) a wrong gradient gives); a setup mismatch is a CommError on every rank.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "additive/dist/mpi_comm.hpp"
#include "additive/dist/thread_comm.hpp"
#include "additive/exp/cotrain.hpp"

using namespace additive;
using additive::dist::MpiComm;

namespace {

using Fam = MlpFamily<4, 2, GateLayout::merge_only>;
using FMask = Fam::mask_type;
const MlpConfig small{.in_dim = 12, .d = 8, .h = 12, .classes = 3};
const std::uint64_t masks[] = {0x3f, 0x15, 0x2a, 0x07};

ImageDataset make_data(std::int64_t n, std::uint64_t seed) {
  ImageDataset d{.count = n, .rows = 3, .cols = 4, .num_classes = 3, .pixels = {}, .labels = {}};
  std::mt19937_64 gen(seed);
  d.pixels.resize(static_cast<std::size_t>(n * 12));
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(gen() & 0xff);
  d.labels.resize(static_cast<std::size_t>(n));
  for (auto& l : d.labels) l = static_cast<std::uint8_t>(gen() % 3);
  return d;
}

std::vector<std::int64_t> batch_of(std::int64_t s, std::int64_t b, std::int64_t n) {
  std::vector<std::int64_t> pos(static_cast<std::size_t>(b));
  for (std::int64_t i = 0; i < b; ++i) pos[static_cast<std::size_t>(i)] = (s * b + i) % n;
  return pos;
}

template <class Comm>
std::vector<double> train(Comm& comm, const TrainOptions& opts, const DatasetView& data) {
  CoTrainer<cpu::MlpModel<Fam, double>, Comm> t(comm, small, FMask(masks[comm.rank() % 4]), opts,
                                                CoTrainOptions{.checksum_every = 1});
  for (std::int64_t s = 0; s < 4; ++s) t.train_step(data, batch_of(s, opts.batch, data.size()), 1e-2);
  t.verify_replicas();
  return {t.params().begin(), t.params().end()};
}

}  // namespace

TEST_CASE("co-training on MPI ranks equals co-training on as many threads") {
  MpiComm comm = MpiComm::world();
  const ImageDataset set = make_data(40, 7);
  const DatasetView data(set);
  const TrainOptions opts{.batch = 9, .optimizer = comm.size() == 2 ? "adamw" : "sgd", .seed = 4};
  const auto got = train(comm, opts, data);  // verify_replicas: bit-identical on every rank
  if (comm.rank() == 0) {
    std::vector<double> want;
    dist::run_threads(comm.size(), [&](dist::ThreadComm& tc) {
      auto p = train(tc, opts, data);
      if (tc.rank() == 0) want = std::move(p);
    });
    REQUIRE(want.size() == got.size());
    if (comm.size() == 2) {
      CHECK(got == want);
    } else {
      double diff = 0;
      for (std::size_t i = 0; i < got.size(); ++i) diff = std::max(diff, std::abs(got[i] - want[i]));
      CHECK(diff <= 1e-12);
    }
  }
}

TEST_CASE("a setup mismatch between MPI ranks is a CommError on every rank") {
  MpiComm comm = MpiComm::world();
  MlpConfig cfg = small;
  if (comm.rank() == comm.size() - 1) cfg.d = 12;
  std::string message;
  try {
    CoTrainer<cpu::MlpModel<Fam, double>, MpiComm> t(comm, cfg, FMask(0x3f), TrainOptions{.batch = 8});
  } catch (const CommError& e) {
    message = e.what();
  }
  CHECK(message.find("co-training setup differs between ranks") != std::string::npos);
}
