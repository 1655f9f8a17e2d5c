// Co-training (include/additive/exp/cotrain.hpp) on the thread communicator, in float64.
//
// Exactness: K-rank co-training is compared bit for bit with one process that computes
// each structure's gradient on its share itself and averages them in the thread ring's
// order, bucket by bucket (the gradient is all-reduced in the buckets the backward pass
// finishes: head, blocks, embedding; chunk c of each bucket summed along the ring from
// rank c, then divided by K: docs/communicators.md). Bit-for-bit holds because every rank runs the same code
// on the same data and the reference reproduces the reduction order; with K = 3 the order matters (the ring's
// rotations differ from a left-to-right sum in the last bit), so the reference does not use a plain
// sequential sum.
//
// Local SGD with H = 1, inner plain SGD and an outer plain SGD of rate 1 equals
// synchronous co-training with plain SGD up to rounding only: the pseudo-gradient
// anchor - (anchor - lr g) is lr g rounded twice, so the two runs differ by a few ulps of
// the parameters per step; after 4 steps with O(1) parameters 1e-12 is far above that
// (~1e-15) and far below what an algorithmic difference gives (AdamW inside: > 1e-4).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "additive/dist/thread_comm.hpp"
#include "additive/exp/cotrain.hpp"
#include "additive/exp/train.hpp"

using namespace additive;

namespace {

using Fam = MlpFamily<4, 2, GateLayout::merge_only>;
using FMask = Fam::mask_type;
const MlpConfig small{.in_dim = 12, .d = 8, .h = 12, .classes = 3};

ImageDataset make_data(std::int64_t n, std::uint64_t seed) {
  ImageDataset d{.count = n, .rows = 3, .cols = 4, .num_classes = 3, .pixels = {}, .labels = {}};
  std::mt19937_64 gen(seed);
  d.pixels.resize(static_cast<std::size_t>(n * 12));
  for (auto& p : d.pixels) p = static_cast<std::uint8_t>(gen() & 0xff);
  d.labels.resize(static_cast<std::size_t>(n));
  for (auto& l : d.labels) l = static_cast<std::uint8_t>(gen() % 3);
  return d;
}

/// The global batch of step s: positions s*B .. s*B+B-1 (mod n) of the view.
std::vector<std::int64_t> batch_of(std::int64_t s, std::int64_t b, std::int64_t n) {
  std::vector<std::int64_t> pos(static_cast<std::size_t>(b));
  for (std::int64_t i = 0; i < b; ++i) pos[static_cast<std::size_t>(i)] = (s * b + i) % n;
  return pos;
}

const std::vector<double> lrs{1e-2, 2e-2, 1.5e-2, 5e-3};

/// Co-trains masks[r] on rank r for lrs.size() steps of global batch B; returns each
/// rank's parameters.
std::vector<std::vector<double>> cotrain(const std::vector<std::uint64_t>& masks, std::int64_t B,
                                         const TrainOptions& train, const CoTrainOptions& co,
                                         const DatasetView& data, std::vector<CommStats>* stats = nullptr) {
  const int K = static_cast<int>(masks.size());
  std::vector<std::vector<double>> out(masks.size());
  if (stats) stats->assign(masks.size(), {});
  dist::run_threads(K, [&](dist::ThreadComm& comm) {
    CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm> t(
        comm, small, FMask(masks[std::size_t(comm.rank())]), train, co);
    for (std::size_t s = 0; s < lrs.size(); ++s)
      t.train_step(data, batch_of(std::int64_t(s), B, data.size()), lrs[s]);
    t.synchronize();
    out[std::size_t(comm.rank())].assign(t.params().begin(), t.params().end());
    if (stats) (*stats)[std::size_t(comm.rank())] = t.comm_stats();
  });
  return out;
}

/// The gradient buckets: [0, block 0), [block l, block l+1) ..., [final norm, end).
std::vector<std::pair<std::size_t, std::size_t>> buckets(const ParamLayout& layout) {
  std::vector<std::size_t> cut{0};
  for (int l = 0; l < Fam::blocks; ++l)
    cut.push_back(layout.find("blocks." + std::to_string(l) + ".norm.weight").offset);
  cut.push_back(layout.find("final_norm.weight").offset);
  cut.push_back(layout.total());
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (std::size_t i = 0; i + 1 < cut.size(); ++i) out.emplace_back(cut[i], cut[i + 1]);
  return out;
}

/// One process: each structure's gradient on its share, scaled as CoTrainer does for an
/// uneven split, summed in the ring's order, divided by K; one optimizer step.
std::vector<double> reference(const std::vector<std::uint64_t>& masks, std::int64_t B,
                              const TrainOptions& train, bool same_batch, const DatasetView& data) {
  const auto K = masks.size();
  cpu::MlpModel<Fam, double> model(small, 1);
  const std::size_t n = model.layout().total();
  std::vector<double> params(n);
  init_mlp_params<double>(small, Fam::blocks, training_init_seed(train.seed), params);
  AdamW<double> adamw(model.layout(), AdamWConfig{.weight_decay = train.weight_decay});
  Sgd<double> sgd(
      model.layout(),
      SgdConfig{.momentum = train.momentum, .nesterov = train.nesterov, .weight_decay = train.weight_decay});
  std::vector<std::vector<double>> g(K, std::vector<double>(n));
  std::vector<double> avg(n);
  Eigen::MatrixXd x;
  std::vector<std::int32_t> y;
  for (std::size_t s = 0; s < lrs.size(); ++s) {
    const auto batch = batch_of(std::int64_t(s), B, data.size());
    for (std::size_t r = 0; r < K; ++r) {
      const auto c = dist::detail::chunk(batch.size(), K, r);
      const auto mine = same_batch ? std::span<const std::int64_t>(batch)
                                   : std::span<const std::int64_t>(batch).subspan(c.begin, c.end - c.begin);
      if (mine.empty()) {
        std::fill(g[r].begin(), g[r].end(), 0.0);
        continue;
      }
      data.gather(mine, x, y);
      model.forward(FMask(masks[r]), params, MatView<const double>(x.data(), x.rows(), x.cols()), y);
      model.backward(params, g[r]);
      if (!same_batch && batch.size() % K != 0) {
        const double w = double(mine.size()) * double(K) / double(batch.size());
        for (auto& v : g[r]) v *= w;
      }
    }
    for (const auto& [b, e] : buckets(model.layout()))
      for (std::size_t c = 0; c < K; ++c) {  // the ring order: chunk c of the bucket from rank c
        const auto ch = dist::detail::chunk(e - b, K, c);
        for (std::size_t i = b + ch.begin; i < b + ch.end; ++i) {
          double sum = g[c][i];
          for (std::size_t k = 1; k < K; ++k) sum += g[(c + k) % K][i];
          avg[i] = sum / double(K);
        }
      }
    if (train.optimizer == "sgd")
      sgd.step(params, avg, lrs[s]);
    else
      adamw.step(params, avg, lrs[s]);
  }
  return params;
}

void check_equal_to_reference(const std::vector<std::uint64_t>& masks, std::int64_t B, bool same_batch,
                              const std::string& optimizer = "adamw") {
  const ImageDataset set = make_data(40, 7);
  const DatasetView data(set);
  TrainOptions train{.batch = B, .optimizer = optimizer, .weight_decay = 0.01, .seed = 3};
  const auto want = reference(masks, B, train, same_batch, data);
  for (const bool overlap : {true, false}) {  // all-reduces on a helper thread during backward, or after
    CAPTURE(overlap);
    const auto got =
        cotrain(masks, B, train,
                CoTrainOptions{.same_batch = same_batch, .checksum_every = 1, .overlap = overlap}, data);
    for (std::size_t r = 0; r < got.size(); ++r) CHECK(got[r] == want);  // bit for bit, every rank
  }
  // Not vacuous: the weights moved, and differently from co-training one structure.
  std::vector<double> init(want.size());
  init_mlp_params<double>(small, Fam::blocks, training_init_seed(train.seed), init);
  CHECK(want != init);
  const auto solo = reference(std::vector<std::uint64_t>(masks.size(), masks[0]), B, train, same_batch, data);
  CHECK(solo != want);
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST_CASE("co-training equals one process averaging the structures' gradients in ring order") {
  SUBCASE("K=2 data-parallel") { check_equal_to_reference({0x3f, 0x15}, 8, false); }
  SUBCASE("K=3 data-parallel") { check_equal_to_reference({0x3f, 0x15, 0x00}, 9, false); }
  SUBCASE("K=3 data-parallel, batch not divisible") {
    check_equal_to_reference({0x3f, 0x15, 0x2a}, 10, false);
  }
  SUBCASE("K=3 batch smaller than K: an empty share") {
    check_equal_to_reference({0x3f, 0x15, 0x2a}, 2, false);
  }
  SUBCASE("K=2 same batch") { check_equal_to_reference({0x3f, 0x15}, 8, true); }
  SUBCASE("K=3 same batch, SGD") { check_equal_to_reference({0x3f, 0x15, 0x07}, 6, true, "sgd"); }
}

TEST_CASE("one-rank co-training fit() equals Trainer::fit bit for bit") {
  const ImageDataset set = make_data(50, 11);
  const DatasetView train(set,
                          {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                           20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39});
  const DatasetView val(set, {40, 41, 42, 43, 44, 45, 46, 47, 48, 49});
  const TrainOptions opts{.epochs = 2, .batch = 7, .lr = 1e-2, .warmup = 0.2, .seed = 5};
  Trainer<cpu::MlpModel<Fam, double>> solo(small, FMask(0x15), opts, RunOptions{.progress = false});
  const auto solo_result = solo.fit(train, val);
  std::vector<double> co_params;
  CoTrainResult co_result;
  dist::run_threads(1, [&](dist::ThreadComm& comm) {
    CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm> t(comm, small, FMask(0x15), opts);
    co_result = t.fit(train, val);
    co_params.assign(t.params().begin(), t.params().end());
  });
  CHECK(co_params == std::vector<double>(solo.params().begin(), solo.params().end()));
  REQUIRE(co_result.epochs.size() == 2);
  CHECK(co_result.steps == solo_result.steps);
  CHECK(co_result.epochs[1].train_loss == solo_result.epochs[1].train_loss);
  CHECK(co_result.epochs[1].val.accuracy == solo_result.epochs[1].val.accuracy);
  CHECK(co_result.epochs[1].val.loss == doctest::Approx(solo_result.epochs[1].val.loss).epsilon(1e-12));
}

TEST_CASE("a mismatch of the setup between ranks is detected at start") {
  auto run = [](auto&& tweak) {
    std::string message;
    try {
      dist::run_threads(3, [&](dist::ThreadComm& comm) {
        MlpConfig cfg = small;
        TrainOptions train{.batch = 6};
        CoTrainOptions co;
        if (comm.rank() == 2) tweak(cfg, train, co);
        CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm> t(comm, cfg, FMask(0x3f), train, co);
      });
    } catch (const CommError& e) {
      message = e.what();
    }
    return message;
  };
  const auto shape = run([](MlpConfig& c, TrainOptions&, CoTrainOptions&) { c.d = 12; });
  CHECK(shape.find("co-training setup differs between ranks: ranks {0,1} agree; ranks {2} agree") !=
        std::string::npos);
  const auto opt = run([](MlpConfig&, TrainOptions& t, CoTrainOptions&) { t.optimizer = "sgd"; });
  CHECK(opt.find("co-training setup differs between ranks") != std::string::npos);
  const auto mode = run([](MlpConfig&, TrainOptions&, CoTrainOptions& c) { c.same_batch = true; });
  CHECK(mode.find("co-training setup differs between ranks") != std::string::npos);
  // Different masks are the point: no error.
  CHECK_NOTHROW(dist::run_threads(2, [&](dist::ThreadComm& comm) {
    CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm> t(comm, small, FMask(comm.rank() ? 0x15 : 0x3f),
                                                              TrainOptions{});
  }));
}

TEST_CASE("a replica that diverges is detected by the checksum, naming the step") {
  const ImageDataset set = make_data(40, 7);
  const DatasetView data(set);
  std::string message;
  try {
    dist::run_threads(3, [&](dist::ThreadComm& comm) {
      CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm> t(
          comm, small, FMask(0x3f), TrainOptions{.batch = 6}, CoTrainOptions{.checksum_every = 1});
      for (std::int64_t s = 0; s < 2; ++s) t.train_step(data, batch_of(s, 6, 40), 1e-2);
      if (comm.rank() == 1) t.params()[5] = std::nextafter(t.params()[5], 1e9);  // one ulp
      t.train_step(data, batch_of(2, 6, 40), 1e-2);
    });
  } catch (const CommError& e) {
    message = e.what();
  }
  CHECK(message.find("co-training replicas diverged at step 3: the parameters of rank(s) {1} differ") !=
        std::string::npos);
}

TEST_CASE("local SGD: H=1, inner SGD, outer SGD of rate 1 equals synchronous SGD to rounding") {
  const ImageDataset set = make_data(40, 7);
  const DatasetView data(set);
  const std::vector<std::uint64_t> masks{0x3f, 0x15, 0x2a};
  const TrainOptions sgd{.batch = 9, .optimizer = "sgd", .weight_decay = 0, .momentum = 0, .seed = 1};
  std::vector<CommStats> sync_stats, local_stats;
  const auto sync = cotrain(masks, 9, sgd, CoTrainOptions{}, data, &sync_stats);
  const CoTrainOptions local{.checksum_every = 1, .local_steps = 1, .outer_lr = 1.0, .outer_momentum = 0.0};
  const auto loc = cotrain(masks, 9, sgd, local, data, &local_stats);
  for (std::size_t r = 1; r < loc.size(); ++r) CHECK(loc[r] == loc[0]);
  std::vector<double> init(sync[0].size());
  init_mlp_params<double>(small, Fam::blocks, training_init_seed(sgd.seed), init);
  CHECK(max_abs_diff(sync[0], init) > 1e-4);  // the runs moved
  CHECK(max_abs_diff(loc[0], sync[0]) <= 1e-12);
  CHECK(local_stats[0].payload_bytes == sync_stats[0].payload_bytes);  // H = 1: one all-reduce per step

  SUBCASE("AdamW inside: the two differ, by design") {
    TrainOptions adam = sgd;
    adam.optimizer = "adamw";
    const auto a_sync = cotrain(masks, 9, adam, CoTrainOptions{}, data);
    const auto a_loc = cotrain(masks, 9, adam, local, data);
    CHECK(max_abs_diff(a_sync[0], a_loc[0]) > 1e-4);
  }
  SUBCASE("H=2: half the payload, replicas still identical, outer Nesterov momentum") {
    std::vector<CommStats> h2;
    const auto l2 = cotrain(masks, 9, sgd, CoTrainOptions{.checksum_every = 1, .local_steps = 2}, data, &h2);
    for (std::size_t r = 1; r < l2.size(); ++r) CHECK(l2[r] == l2[0]);
    CHECK(h2[0].all_reduces == 2);
    CHECK(h2[0].payload_bytes * 2 == sync_stats[0].payload_bytes);
    CHECK(max_abs_diff(l2[0], sync[0]) > 1e-6);
  }
}

TEST_CASE("local-SGD fit(): a last partial period is synchronised, the replicas agree") {
  const ImageDataset set = make_data(50, 13);
  std::vector<std::int64_t> train_idx(40), val_idx(10);
  for (std::int64_t i = 0; i < 40; ++i) train_idx[std::size_t(i)] = i;
  for (std::int64_t i = 0; i < 10; ++i) val_idx[std::size_t(i)] = 40 + i;
  const DatasetView train(set, train_idx), val(set, val_idx);
  const TrainOptions opts{.epochs = 2, .batch = 7, .lr = 1e-2, .seed = 2};  // 6 steps per epoch, 12 in all
  std::vector<std::vector<double>> params(2);
  std::vector<CoTrainResult> results(2);
  dist::run_threads(2, [&](dist::ThreadComm& comm) {
    CoTrainer<cpu::MlpModel<Fam, double>, dist::ThreadComm> t(comm, small, FMask(comm.rank() ? 0x15 : 0x3f),
                                                              opts, CoTrainOptions{.local_steps = 5});
    results[std::size_t(comm.rank())] = t.fit(train, val);
    CHECK(t.in_sync());
    params[std::size_t(comm.rank())].assign(t.params().begin(), t.params().end());
  });
  CHECK(params[0] == params[1]);
  CHECK(results[0].steps == 12);
  CHECK(results[0].comm.all_reduces == 3);  // outer steps after 5, 10 and the last 2 steps
  REQUIRE(results[0].epochs.size() == 2);
  CHECK(results[0].epochs[1].val.samples == 10);  // evaluated: the replicas were in sync
  CHECK(results[0].epochs[0].val.samples == 0);   // mid-period after step 6: not evaluated
  CHECK(results[0].epochs[1].train_loss == results[1].epochs[1].train_loss);  // averaged over ranks
}
