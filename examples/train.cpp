// train: trains one structure of the default MLP family (S = 4 shards, L = 2 blocks,
// merge and branch gates: n = 8) on an IDX image dataset, Fashion-MNIST by default.
// Bad input of any kind is one line on stderr and exit code 2.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "additive/additive.hpp"

#include "flags.hpp"

#ifdef ADDITIVE_HAS_CUDA
#include "cuda/device_runner.hpp"
#endif

namespace {

using additive::flags::big;
using additive::flags::within;
using additive::flags::writable_path;

using Family = additive::MlpFamily<4, 2>;

struct Flags {
  std::string mask = "0xff";
  std::string data = additive::default_data_dir().string();
  std::int64_t val = 5000;
  std::int64_t limit = 0;
  std::int64_t d = 256;
  std::int64_t h = 1024;
  std::string dtype = "float";
  int threads = additive::cpu::hardware_threads();
  std::string checkpoint;
  std::int64_t checkpoint_every = 0;
  std::string resume;
  std::string json;
  std::int64_t stop_after = -1;
  std::int64_t seed = 0;
  bool quiet = false;
  std::string device = "cpu";
  bool no_graphs = false;
  std::string precision = "fp32";
};

/// --device cuda is possible here: this build has the CUDA backend and the machine a GPU.
void check_device(const Flags& f) {
  if (f.device != "cuda") return;
#ifdef ADDITIVE_HAS_CUDA
  if (f.dtype != "float")
    throw additive::InputError("--device cuda: --dtype " + f.dtype +
                               " is not supported (the CUDA trainer is fp32)");
  additive::examples::require_cuda_device();
#else
  throw additive::InputError(
      "--device cuda: this build has no CUDA backend (configure with ADDITIVE_CUDA=ON)");
#endif
}

template <class T>
int run(const Flags& f, const additive::TrainOptions& train) {
  using namespace additive;
  const auto mask = Family::mask_type::parse(f.mask);
  const MlpConfig model{.in_dim = 784, .d = f.d, .h = f.h, .classes = 10};
  flags::check_model_fits(model, Family::blocks, sizeof(T), 4);  // parameters, gradients, 2 moments

  const ImageDataset train_set = load_idx_dataset(f.data, "train");
  const ImageDataset test_set = load_idx_dataset(f.data, "test");
  if (train_set.input_dim() != model.in_dim)
    throw InputError(
        fmt::format("{}: images are {}x{}, the model expects 28x28", f.data, train_set.rows, train_set.cols));
  if (f.val < 0 || f.val >= train_set.count)
    throw InputError(fmt::format("--val {} must be in [0, {}) (samples carved from the training set)", f.val,
                                 train_set.count));
  auto [train_idx, val_idx] = split_validation(train_set, f.val, train.seed);
  DatasetView train_view = subset(train_set, std::move(train_idx));
  if (f.limit > 0) train_view = limit(train_view, f.limit);
  const DatasetView val_view = subset(train_set, std::move(val_idx));
  const DatasetView test_view(test_set);

  RunOptions run_opts{.threads = f.threads,
                      .checkpoint = f.checkpoint,
                      .checkpoint_every = f.checkpoint_every,
                      .stop_after_steps = f.stop_after,
                      .progress = !f.quiet};
  auto print_header = [&](std::size_t parameters, std::int64_t step) {
    std::printf("structure %s  mask %s  %s  %zu parameters%s\n", Family::to_string(mask).c_str(),
                to_hex(mask).c_str(), f.dtype.c_str(), parameters,
                f.device == "cuda"
                    ? fmt::format("  |  cuda {}{}", f.precision, f.no_graphs ? "" : ", graphs").c_str()
                    : "");
    std::printf(
        "data %s: %lld train, %lld validation, %lld test  |  %lld epochs, batch %lld, %s lr %g, %d "
        "threads%s\n",
        f.data.c_str(), static_cast<long long>(train_view.size()), static_cast<long long>(val_view.size()),
        static_cast<long long>(test_view.size()), static_cast<long long>(train.epochs),
        static_cast<long long>(train.batch), train.optimizer.c_str(), train.lr, f.threads,
        f.resume.empty() ? "" : fmt::format("  |  resumed at step {}", step).c_str());
    std::fflush(stdout);
  };
  auto print_epoch = [&](const EpochRecord& e) {
    std::printf("epoch %lld/%lld  train loss %.4f  val loss %.4f  val acc %.2f%%  (%.1f s)\n",
                static_cast<long long>(e.epoch), static_cast<long long>(train.epochs), e.train_loss,
                e.val.loss, 100 * e.val.accuracy, e.seconds);
    std::fflush(stdout);
  };
  TrainResult result;
  std::optional<EvalResult> test;
  if (f.device == "cuda") {
#ifdef ADDITIVE_HAS_CUDA
    const auto r = examples::train_on_cuda(model, mask.bits(), train, run_opts,
                                           {.graphs = !f.no_graphs, .precision = f.precision}, f.resume,
                                           train_view, val_view, &test_view, print_header, print_epoch);
    result = r.result;
    test = r.test;
#endif
  } else {
    Trainer<cpu::MlpModel<Family, T>> trainer(model, mask, train, run_opts);
    if (!f.resume.empty()) trainer.resume(f.resume);
    print_header(trainer.layout().total(), trainer.step());
    result = trainer.fit(train_view, val_view, print_epoch);
    if (result.finished) test = trainer.evaluate(test_view);
  }
  nlohmann::json out{{"structure", Family::to_string(mask)},
                     {"mask", to_hex(mask)},
                     {"steps", result.steps},
                     {"finished", result.finished},
                     {"train_samples_per_second", result.samples_per_second}};
  for (const auto& e : result.epochs)
    out["epochs"].push_back({{"epoch", e.epoch},
                             {"train_loss", e.train_loss},
                             {"val_loss", e.val.loss},
                             {"val_accuracy", e.val.accuracy},
                             {"seconds", e.seconds}});
  if (result.finished && test) {
    std::printf("test  loss %.4f  acc %.2f%%  (%lld samples; %.0f training samples/s)\n", test->loss,
                100 * test->accuracy, static_cast<long long>(test->samples), result.samples_per_second);
    out["test"] = {{"loss", test->loss}, {"accuracy", test->accuracy}, {"samples", test->samples}};
  } else {
    std::printf("stopped after step %lld (checkpoint %s)\n", static_cast<long long>(result.steps),
                f.checkpoint.empty() ? "not written" : f.checkpoint.c_str());
  }
  if (!f.json.empty()) write_file_atomically(f.json, out.dump(2) + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Train one structure of the sharded MLP family (S = 4, L = 2, n = 8 gates) on an IDX dataset."};
  Flags f;
  additive::TrainOptions train{.epochs = 3, .batch = 128, .lr = 1e-3};
  app.add_option("--mask", f.mask,
                 "structure: 8 gate bits as decimal, 0x.. or 0b.. (bit 4l+i<3: merge gate i of block l; "
                 "bit 4l+3: its residual)")
      ->capture_default_str();
  app.add_option("--epochs", train.epochs, "training epochs")
      ->capture_default_str()
      ->check(within<std::int64_t>(1, 1000000));
  app.add_option("--lr", train.lr, "peak learning rate (warmup, then cosine to --min-lr)")
      ->capture_default_str()
      ->check(within(1e-12, 1e3));
  app.add_option("--min-lr", train.min_lr, "final learning rate")
      ->capture_default_str()
      ->check(within(0.0, 1e3));
  app.add_option("--warmup", train.warmup, "fraction of steps spent warming up")
      ->capture_default_str()
      ->check(within(0.0, 1.0));
  app.add_option("--batch", train.batch, "batch size")
      ->capture_default_str()
      ->check(within<std::int64_t>(1, 1000000));
  app.add_option("--optimizer", train.optimizer, "adamw or sgd")
      ->capture_default_str()
      ->check(CLI::IsMember({"adamw", "sgd"}));
  app.add_option("--weight-decay", train.weight_decay, "decoupled weight decay (never on norms and biases)")
      ->capture_default_str()
      ->check(within(0.0, 10.0));
  app.add_option("--momentum", train.momentum, "SGD momentum")
      ->capture_default_str()
      ->check(within(0.0, 0.999999));
  app.add_flag("--nesterov", train.nesterov, "SGD with Nesterov momentum");
  app.add_option("--seed", f.seed, "seed of the initial weights, the validation split and the data order")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, std::numeric_limits<std::int64_t>::max()));
  app.add_option("--threads", f.threads, "CPU threads (results do not depend on it)")
      ->capture_default_str()
      ->check(within(1, 1024));
  app.add_option("--data", f.data,
                 "directory of IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz])")
      ->capture_default_str();
  app.add_option("--val", f.val, "validation samples carved from the training set")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, big));
  app.add_option("--limit", f.limit, "use only the first N training samples (0: all)")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, big));
  additive::flags::add_width_options(app, f.d, f.h, 4);
  app.add_option("--dtype", f.dtype, "float or double")
      ->capture_default_str()
      ->check(CLI::IsMember({"float", "double"}));
  app.add_option("--checkpoint", f.checkpoint, "write the training state here (atomically) after every epoch")
      ->check(writable_path());
  app.add_option("--checkpoint-every", f.checkpoint_every, "also every N steps")
      ->check(within<std::int64_t>(0, big));
  app.add_option("--resume", f.resume, "continue from a checkpoint written with the same options")
      ->check(additive::flags::non_empty_path());
  app.add_option("--stop-after", f.stop_after, "stop after this many steps in total, as if interrupted")
      ->check(within<std::int64_t>(0, big));
  app.add_option("--json", f.json, "write the results as JSON here")->check(writable_path());
  app.add_flag("--quiet", f.quiet, "no progress bar");
  app.add_option("--device", f.device, "cpu, or cuda (fp32 on the GPU; same seeds, batches and schedule)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--no-graphs", f.no_graphs,
               "cuda: launch each step's kernels instead of replaying a CUDA graph");
  app.add_option("--precision", f.precision, "cuda: GEMM precision (fp32, tf32, bf16: operands in bf16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
  if (const int code = additive::flags::parse(app, argc, argv); code >= 0) return code;
  try {
    check_device(f);
    train.seed = static_cast<std::uint64_t>(f.seed);
    return f.dtype == "double" ? run<double>(f, train) : run<float>(f, train);
  } catch (const additive::InputError& e) {
    additive::flags::print_error(e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}
