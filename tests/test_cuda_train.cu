// cuda::Trainer and cuda::ConcurrentTrainer (cuda/train.cuh): batches gathered on the
// device equal the CPU Batcher's bit for bit; the initial weights are the CPU trainer's;
// a graph-replayed step and plain launches give identical parameters; a run stopped and
// resumed from its checkpoint ends bit-identical to the uninterrupted run; concurrent
// training equals training alone. Every case skips without a device.
// CPU <-> GPU checkpoints and CPU-vs-GPU losses are checked through the train driver
// (tests/cli/cuda_train.sh): additive::Trainer does not compile under nvcc 13 (EDG
// rejects std::vector<Mask<N>>::resize in its per-sample path), so no .cu runs both.
#include <doctest/doctest.h>

#include <bit>
#include <cstdint>
#include <filesystem>
#include <random>
#include <vector>

#include "additive/cuda/train.cuh"

#include "cuda_support.cuh"

using namespace additive;

namespace {

using F = MlpFamily<4, 2>;
const MlpConfig model_config{.in_dim = 20, .d = 16, .h = 32, .classes = 4};

/// test_train.cpp's learnable synthetic set: 4x5 images, the label is the brightest quarter.
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
  ImageDataset train_set = synthetic(210, 1);
  ImageDataset val_set = synthetic(64, 2);
  DatasetView train{train_set};
  DatasetView val{val_set};
};

// 210 samples in batches of 40: 5 full batches and a last one of 10 (the tail shape).
const TrainOptions options{.epochs = 3, .batch = 40, .lr = 5e-3, .seed = 9};
const RunOptions quiet{.threads = 1, .eval_batch = 50, .progress = false};

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("additive_test_cuda_train_" + name + ".safetensors");
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i])) return false;
  return true;
}

void check_same_epochs(const TrainResult& a, const TrainResult& b) {
  REQUIRE(a.epochs.size() == b.epochs.size());
  for (std::size_t e = 0; e < a.epochs.size(); ++e) {
    CHECK(a.epochs[e].train_loss == b.epochs[e].train_loss);
    CHECK(a.epochs[e].val.loss == b.epochs[e].val.loss);
    CHECK(a.epochs[e].val.accuracy == b.epochs[e].val.accuracy);
  }
}

}  // namespace

TEST_CASE("device batch gather equals the CPU Batcher bit for bit") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Data d;
  const cuda::DeviceDataset dev(d.train);
  const Batcher<DatasetView> batches(d.train, 40, 1234, 2);
  const auto order = cuda::to_device(batches.order());
  Eigen::MatrixXf x;
  std::vector<std::int32_t> y;
  for (std::int64_t b = 0; b < batches.num_batches(); ++b) {
    batches.batch(b, x, y);
    const auto cols = static_cast<Index>(y.size());
    cuda::DeviceBuffer<float> gx(static_cast<std::size_t>(cols * 20));
    cuda::DeviceBuffer<std::int32_t> gy(static_cast<std::size_t>(cols));
    cuda::gather_batch<float>(dev, order.data(), b * 40, cols, gx.data(), gy.data(), nullptr);
    const auto hx = gx.to_host();
    CHECK(same_bits(hx, std::vector<float>(x.data(), x.data() + x.size())));
    CHECK(gy.to_host() == y);
  }
}

TEST_CASE("a graph-replayed step and plain launches give identical parameters") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Data d;
  for (const std::uint64_t mask : {0xFFULL, 0x6DULL, 0x00ULL}) {
    CAPTURE(mask);
    cuda::Trainer<F> graph(model_config, F::mask_type(mask), options, quiet, {.graphs = true});
    cuda::Trainer<F> plain(model_config, F::mask_type(mask), options, quiet, {.graphs = false});
    REQUIRE(graph.graphs_active());  // needs cuda::MlpModel::forward_async
    REQUIRE_FALSE(plain.graphs_active());
    const auto rg = graph.fit(d.train, d.val);
    const auto rp = plain.fit(d.train, d.val);
    REQUIRE(rg.finished);
    CHECK(rg.steps == 18);
    check_same_epochs(rg, rp);
    CHECK(same_bits(graph.params(), plain.params()));
  }
}

TEST_CASE("the GPU run starts from the CPU trainer's weights and learns") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Data d;
  cuda::Trainer<F> gpu(model_config, F::mask_type(0xAD), options, quiet);
  // additive::Trainer's initial weights, bit for bit (same seed, host init, upload).
  std::vector<float> init(gpu.layout().total());
  init_mlp_params<float>(model_config, F::blocks, training_init_seed(options.seed), std::span<float>(init));
  CHECK(same_bits(gpu.params(), init));
  const auto before = gpu.evaluate(d.val);
  const auto r = gpu.fit(d.train, d.val);
  REQUIRE(r.finished);
  REQUIRE(r.epochs.size() == 3);
  CHECK(r.epochs.back().val.loss < before.loss * 0.5);
  CHECK(r.epochs.back().val.accuracy > 0.9);
  // The same evaluation through a DatasetView and an uploaded DeviceDataset.
  const auto a = gpu.evaluate(d.val);
  const auto b = gpu.evaluate(cuda::DeviceDataset(d.val));
  CHECK(a.loss == b.loss);
  CHECK(a.accuracy == b.accuracy);
  CHECK(a.samples == 64);
}

TEST_CASE("a GPU run stopped and resumed ends bit-identical to the uninterrupted one") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Data d;
  cuda::Trainer<F> full(model_config, F::mask_type(0x6D), options, quiet);
  const auto rf = full.fit(d.train, d.val);
  for (const std::int64_t stop : {4, 6, 9}) {  // mid-epoch (after the tail), epoch boundary, mid-epoch
    CAPTURE(stop);
    const auto path = temp_path("stop" + std::to_string(stop));
    RunOptions first = quiet;
    first.checkpoint = path;
    first.stop_after_steps = stop;
    cuda::Trainer<F> a(model_config, F::mask_type(0x6D), options, first);
    const auto ra = a.fit(d.train, d.val);
    CHECK_FALSE(ra.finished);
    CHECK(ra.steps == stop);
    cuda::Trainer<F> b(model_config, F::mask_type(0x6D), options, quiet);
    b.resume(path);
    CHECK(b.step() == stop);
    const auto rb = b.fit(d.train, d.val);
    REQUIRE(rb.finished);
    CHECK(same_bits(b.params(), full.params()));
    REQUIRE(!rb.epochs.empty());
    CHECK(rb.epochs.back().train_loss == rf.epochs.back().train_loss);
    CHECK(rb.epochs.back().val.loss == rf.epochs.back().val.loss);
    std::filesystem::remove(path);
  }
}

TEST_CASE("concurrent training equals training each structure alone") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  const Data d;
  std::vector<cuda::ConcurrentJob> jobs;
  for (const std::uint64_t mask : {0xFFULL, 0x6DULL, 0x11ULL, 0xADULL, 0x00ULL}) {
    TrainOptions o = options;
    o.seed = options.seed + mask % 3;
    jobs.push_back({mask, o});
  }
  for (const int max_active : {0, 2}) {
    CAPTURE(max_active);
    cuda::ConcurrentTrainer<F> many(model_config, quiet, {}, max_active);
    std::vector<std::size_t> finished;
    const auto results = many.fit(jobs, d.train, d.val,
                                  [&](std::size_t j, const TrainResult&, double) { finished.push_back(j); });
    REQUIRE(results.size() == jobs.size());
    CHECK(finished.size() == jobs.size());
    for (std::size_t j = 0; j < jobs.size(); ++j) {
      CAPTURE(j);
      cuda::Trainer<F> alone(model_config, F::mask_type(jobs[j].mask), jobs[j].train, quiet);
      const auto r = alone.fit(d.train, d.val);
      CHECK(results[j].finished);
      check_same_epochs(results[j], r);
    }
  }
}

TEST_CASE("the CUDA trainer refuses SGD with one clear error") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  TrainOptions sgd = options;
  sgd.optimizer = "sgd";
  CHECK_THROWS_WITH_AS(cuda::Trainer<F>(model_config, F::mask_type(0xFF), sgd, quiet),
                       doctest::Contains("adamw only"), InputError);
}
