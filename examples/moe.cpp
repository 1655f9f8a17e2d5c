// moe: experiment 4, a mixture of structure experts. Trains one shared weight set of a
// sharded MLP family on Fashion-MNIST by stochastic gating, computes every candidate
// structure's per-sample losses on the validation split (the router's training data) and on
// the test set, trains a router (a small MLP on the image) towards the per-sample oracle,
// and compares, on the test set: dense, the best single structure, random routings, the
// router and the oracles. Writes moe.json, moe.csv and moe.svg into --out.
#include "additive/exp/moe.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include <CLI/CLI.hpp>

#include "additive/additive.hpp"

#include "flags.hpp"

namespace {

using additive::flags::big;
using additive::flags::within;

using namespace additive;

struct Flags {
  std::string family = "branch";
  std::string out = "moe-out";
  std::string data = default_data_dir().string();
  std::string masks;
  std::string topk;
  std::int64_t val = 5000;
  std::int64_t limit = 12000;
  std::int64_t test_limit = 0;
  std::int64_t d = 128;
  std::int64_t h = 512;
  std::int64_t seed = 0;
  double p = 0.5;
  std::string objective = "supervised";
  bool time_routed = false;
  bool quiet = false;
};

/// The terminal summary: one row per strategy, then what the router closes of the gap.
std::string moe_text(const MoeReport& r) {
  std::vector<report::TableColumn> columns = {
      {"strategy", false}, {"test acc %", true}, {"test loss", true}, {"MFLOP/sample", true}, {"", false}};
  std::vector<std::vector<std::string>> cells;
  for (const auto& s : r.strategies)
    cells.push_back({s.name, fmt::format("{:.2f}", 100 * s.accuracy), fmt::format("{:.4f}", s.loss),
                     fmt::format("{:.3f}", s.cost / 1e6), s.yardstick ? "yardstick" : ""});
  std::string out = report::render_table(columns, cells);
  out += fmt::format(
      "yardstick: chosen on the test set itself (the oracles; the best of {} random routings), a bound, not "
      "a "
      "method\n",
      r.random_replicates);
  const auto& single = r.strategy("best_single");
  out += fmt::format("best single: {} {} (chosen on the {} validation images)\n",
                     report::mask_hex(r.masks[r.best_single]), r.structures[r.best_single], r.train_samples);
  if (r.gap_closed_accuracy)
    out += fmt::format(
        "the router closes {:.1f}% of the accuracy gap between best single ({:.2f}%) and the oracle "
        "({:.2f}%)\n",
        100 * *r.gap_closed_accuracy, 100 * single.accuracy, 100 * r.strategy("oracle").accuracy);
  if (r.gap_closed_loss) out += fmt::format("and {:.1f}% of the loss gap\n", 100 * *r.gap_closed_loss);
  out +=
      fmt::format("router: mean entropy {:.3f} nats (uniform over {}: {:.3f}); objective {:.4f} -> {:.4f}\n",
                  r.router_entropy, r.masks.size(), std::log(double(r.masks.size())),
                  r.router_objective.front(), r.router_objective.back());
  // The most used candidates.
  const auto& load = r.strategy("router").load;
  std::vector<std::size_t> order(load.size());
  for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return load[a] > load[b]; });
  out += "router load:";
  for (std::size_t i = 0; i < std::min<std::size_t>(5, order.size()) && load[order[i]] > 0; ++i)
    out += fmt::format(" {} {:.1f}%", report::mask_hex(r.masks[order[i]]),
                       100.0 * double(load[order[i]]) / double(r.test_samples));
  out +=
      fmt::format("  ({} of {} candidates used)\n",
                  std::count_if(load.begin(), load.end(), [](std::int64_t n) { return n > 0; }), load.size());
  if (r.timing)
    out += fmt::format(
        "routed execution: {:.3f} s against dense {:.3f} s over the test set ({:.2f}x; counted FLOPs "
        "{:.2f}x)\n",
        r.timing->routed_seconds, r.timing->dense_seconds, r.timing->routed_seconds / r.timing->dense_seconds,
        r.timing->routed_flops_per_sample / r.timing->dense_flops_per_sample);
  return out;
}

template <class F>
int run(const Flags& f, TrainOptions train, MoeOptions options) {
  train.seed = static_cast<std::uint64_t>(f.seed);
  options.router.seed = static_cast<std::uint64_t>(f.seed);
  options.random_seed = static_cast<std::uint64_t>(f.seed);
  options.router.objective =
      f.objective == "expected" ? RouterObjective::expected_loss : RouterObjective::supervised;
  options.time_routed = f.time_routed;
  if (!f.masks.empty()) {
    options.candidates = additive::flags::parse_masks(f.masks, F::gates);
  } else if (!f.topk.empty()) {
    for (const auto& e : additive::flags::read_topk(f.topk, F::describe(), f.family, F::gates))
      options.candidates.push_back(e.mask);
  } else {
    for (std::uint64_t m = 0; m < F::mask_type::count; ++m) options.candidates.push_back(m);
  }
  const MlpConfig model{.in_dim = 784, .d = f.d, .h = f.h, .classes = 10};
  additive::flags::check_model_fits(model, F::blocks, sizeof(float), 4);
  MixtureOfStructures<cpu::MlpModel<F, float>> engine(model, options);

  const ImageDataset train_set = additive::flags::load_images(f.data, "train", model.in_dim);
  const ImageDataset test_set = additive::flags::load_images(f.data, "test", model.in_dim);
  const auto [train_view, val_view] = additive::flags::train_val_views(train_set, f.val, f.limit, train.seed);
  DatasetView test_view(test_set);
  if (f.test_limit > 0) test_view = limit(test_view, f.test_limit);

  const std::filesystem::path out(f.out);
  std::filesystem::create_directories(out);
  std::printf(
      "family %s: %zu candidate structures  |  shared weights: gating p %g, %lld epochs on %lld images\n",
      F::describe().c_str(), options.candidates.size(), f.p, static_cast<long long>(train.epochs),
      static_cast<long long>(train_view.size()));
  std::printf(
      "router: %s, hidden %lld, %s objective (T %g, lambda %g), %lld epochs on the %lld validation images  | "
      " "
      "test: %lld images  |  threads %d\n",
      std::string(to_string(options.router.activation)).c_str(),
      static_cast<long long>(options.router.hidden), f.objective.c_str(), options.router.temperature,
      options.router.lambda, static_cast<long long>(options.router.epochs),
      static_cast<long long>(val_view.size()), static_cast<long long>(test_view.size()), options.threads);
  std::fflush(stdout);

  const auto fit =
      engine.train_shared(train, GatingOptions{.p = f.p}, train_view, val_view, /*progress=*/!f.quiet);
  std::printf("shared weights: dense structure %.2f%% on the validation images\n",
              100 * fit.epochs.back().val.accuracy);
  const MoeReport report = engine.run(val_view, test_view);
  std::printf("tables %.1f s, router %.1f s\n\n%s", report.table_seconds, report.router_seconds,
              moe_text(report).c_str());
  write_moe_outputs(out, report);
  std::printf("\nwrote %s, moe.csv, moe.svg\n", (out / "moe.json").string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Mixture of structure experts: a router picks, per image, a structure of one shared weight set."};
  Flags f;
  TrainOptions train{.epochs = 2, .batch = 128, .lr = 2e-3};
  MoeOptions options{.threads = cpu::hardware_threads()};
  options.router.hidden = 256;  // 64: 19.7% of the gap, 256: 28.0%, 512-1024 no better (RESULTS §12)
  options.router.epochs = 30;
  options.router.lr = 3e-3;
  // The best of 0.1, 0.02 and 0.005 on Fashion-MNIST (benchmarks/RESULTS.md §12).
  options.router.temperature = 0.02;
  app.add_option("--family", f.family, shipped_family_help())
      ->capture_default_str()
      ->check(CLI::IsMember(shipped_family_names()));
  app.add_option("--masks", f.masks, "candidate structures, e.g. 0x3f,0x12 (default: every structure)");
  app.add_option("--topk", f.topk, "candidates from a search's topk.json")->check(CLI::ExistingFile);
  app.add_option("--p", f.p, "keep-probability of each gate while training the shared weights, in (0, 1]")
      ->capture_default_str()
      ->check(within(0.0, 1.0));
  app.add_option(
         "--objective", f.objective,
         "router objective: supervised (cross-entropy to softmax(-loss/T)) or expected (expected loss "
         "+ lambda x cost)")
      ->capture_default_str()
      ->check(CLI::IsMember({"supervised", "expected"}));
  app.add_option("--temperature", options.router.temperature, "T of the supervised target")
      ->capture_default_str()
      ->check(within(1e-9, 1e9));
  app.add_option("--lambda", options.router.lambda, "price of cost in the expected objective")
      ->capture_default_str()
      ->check(within(0.0, 1e9));
  app.add_option("--router-hidden", options.router.hidden, "router hidden width")
      ->capture_default_str()
      ->check(within<Index>(1, 65536));
  app.add_option("--router-epochs", options.router.epochs, "router training epochs")
      ->capture_default_str()
      ->check(within<std::int64_t>(1, 100000));
  app.add_option("--router-lr", options.router.lr, "router learning rate")
      ->capture_default_str()
      ->check(within(1e-12, 1e3));
  app.add_option("--test-limit", f.test_limit, "test images used (0: all)")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, big));
  app.add_flag("--time-routed", f.time_routed, "also time routed execution against dense");
  app.add_option("--threads", options.threads, "threads (results do not depend on it)")
      ->capture_default_str()
      ->check(within(1, 1024));
  app.add_option("--out", f.out, "directory for moe.json, moe.csv, moe.svg")
      ->capture_default_str()
      ->check(additive::flags::writable_dir());
  additive::flags::add_budget_options(app, train.epochs, train.lr, train.batch,
                                      "epochs of the shared weights");
  additive::flags::add_seed_option(app, f.seed, "seed: shared weights, splits, router, random routings");
  additive::flags::add_data_options(app, f.data, f.val, f.limit);
  additive::flags::add_width_options(app, f.d, f.h, 4);
  app.add_flag("--quiet", f.quiet, "no progress bars");
  if (const int code = additive::flags::parse(app, argc, argv); code >= 0) return code;
  try {
    if (!(f.p > 0)) throw InputError(fmt::format("--p {} must be a keep-probability in (0, 1]", f.p));
    if (!f.masks.empty() && !f.topk.empty()) throw InputError("--masks and --topk: give one candidate list");
    return with_family(f.family,
                       [&](auto family) { return run<typename decltype(family)::type>(f, train, options); });
  } catch (const InputError& e) {
    additive::flags::print_error(e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}
