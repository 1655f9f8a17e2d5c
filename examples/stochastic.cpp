// stochastic: experiment 3. Trains one shared weight set of a sharded MLP family on
// Fashion-MNIST with stochastic gating (each gate kept with probability p, per batch or
// per sample, optionally on a linear schedule to --p-end), then evaluates every structure
// on the shared weights and sets their accuracies next to the dense structure trained
// alone and, with --search-results, next to the search's per-structure results. Writes
// stochastic.json, stochastic.csv and stochastic.svg into --out.
#include "additive/exp/stochastic.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "additive/additive.hpp"

#include "flags.hpp"

namespace {

using additive::flags::big;
using additive::flags::within;

using namespace additive;

struct Flags {
  std::string family = "default";
  std::string out = "stochastic-out";
  std::string data = default_data_dir().string();
  std::string search_results;
  std::int64_t val = 5000;
  std::int64_t limit = 12000;
  std::int64_t d = 128;
  std::int64_t h = 512;
  std::int64_t seed = 0;
  std::int64_t sample_seed = 0;
  double p = 0.5;
  double p_end = -1;  ///< < 0: no schedule
  bool per_sample = false;
  bool no_dense = false;
  bool quiet = false;
};

template <class F>
int run(const Flags& f, TrainOptions train, StochasticOptions options) {
  train.seed = static_cast<std::uint64_t>(f.seed);
  options.gating = GatingOptions{.p = f.p, .p_end = std::nullopt, .per_sample = f.per_sample};
  if (f.p_end >= 0) options.gating.p_end = f.p_end;
  options.sample_seed = static_cast<std::uint64_t>(f.sample_seed);
  options.dense_baseline = !f.no_dense;
  options.progress = !f.quiet;
  const MlpConfig model{.in_dim = 784, .d = f.d, .h = f.h, .classes = 10};
  additive::flags::check_model_fits(model, F::blocks, sizeof(float), 4);  // parameters, gradients, 2 moments
  StochasticGating<cpu::MlpModel<F, float>> engine(model, train, options);

  // Check the search results before loading data or training: a bad file fails at once.
  if (!f.search_results.empty())
    (void)load_search_accuracies(f.search_results, F::describe(), F::mask_type::count);

  const ImageDataset train_set = additive::flags::load_images(f.data, "train", model.in_dim);
  const auto [train_view, val_view] = additive::flags::train_val_views(train_set, f.val, f.limit, train.seed);

  const std::filesystem::path out(f.out);
  std::filesystem::create_directories(out);

  std::printf("family %s: %llu structures, %zu evaluated\n", F::describe().c_str(),
              static_cast<unsigned long long>(F::mask_type::count), engine.structures().size());
  std::printf(
      "gating: p %g%s, %s  |  data %s: %lld train%s, %lld validation  |  d %lld, h %lld  |  %lld epochs, "
      "batch "
      "%lld, lr %g, threads %d\n",
      f.p, f.p_end >= 0 ? fmt::format(" -> {} (linear per step)", f.p_end).c_str() : "",
      f.per_sample ? "per sample" : "per batch", f.data.c_str(), static_cast<long long>(train_view.size()),
      f.limit > 0 ? " (--limit; 0 for all)" : "", static_cast<long long>(val_view.size()),
      static_cast<long long>(f.d), static_cast<long long>(f.h), static_cast<long long>(train.epochs),
      static_cast<long long>(train.batch), train.lr, options.threads);
  std::fflush(stdout);

  const auto report = engine.run(train_view, val_view, f.search_results);
  std::printf("\ngated training %.1f s (%.0f samples/s), evaluation %.1f s%s\n\n%s", report.train_seconds,
              report.samples_per_second, report.eval_seconds,
              report.dense_alone ? fmt::format(", dense alone {:.1f} s", report.dense_seconds).c_str() : "",
              stochastic_text(report).c_str());
  write_stochastic_outputs(out, report);
  std::printf("\nwrote %s, stochastic.csv, stochastic.svg\n", (out / "stochastic.json").string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Stochastic gating: train one shared weight set with random structures, then evaluate them all."};
  Flags f;
  TrainOptions train{.epochs = 1, .batch = 128, .lr = 2e-3};
  StochasticOptions options{.threads = cpu::hardware_threads()};
  app.add_option("--family", f.family, shipped_family_help())
      ->capture_default_str()
      ->check(CLI::IsMember(shipped_family_names()));
  app.add_option("--p", f.p, "keep-probability of each gate, in (0, 1]")
      ->capture_default_str()
      ->check(within(0.0, 1.0));
  app.add_option("--p-end", f.p_end, "schedule: p goes linearly (per step) from --p to this value, in (0, 1]")
      ->check(within(0.0, 1.0));
  app.add_flag("--per-sample", f.per_sample, "draw a structure for every sample (default: one per batch)");
  app.add_option("--search-results", f.search_results,
                 "results.json of a finished search of the same family: compare per structure");
  app.add_flag("--no-dense-baseline", f.no_dense, "do not train the dense structure alone for comparison");
  app.add_option("--sample", options.sample,
                 "evaluate a seeded sample of this many structures instead of all")
      ->check(within<std::int64_t>(1, big));
  app.add_option("--sample-seed", f.sample_seed, "seed of the sample")->check(within<std::int64_t>(0, big));
  app.add_option("--threads", options.threads, "threads (results do not depend on it)")
      ->capture_default_str()
      ->check(within(1, 1024));
  app.add_option("--out", f.out, "directory for stochastic.json, stochastic.csv, stochastic.svg")
      ->capture_default_str()
      ->check(additive::flags::writable_dir());
  additive::flags::add_budget_options(app, train.epochs, train.lr, train.batch);
  additive::flags::add_seed_option(app, f.seed,
                                   "seed: initial weights, validation split, data order, gate draws");
  additive::flags::add_data_options(app, f.data, f.val, f.limit);
  additive::flags::add_width_options(app, f.d, f.h, 4);
  app.add_flag("--quiet", f.quiet, "no progress bars");
  std::string device = "cpu";
  app.add_option("--device", device, "cpu (--device cuda: the train and search drivers)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  if (const int code = additive::flags::parse(app, argc, argv); code >= 0) return code;
  if (device == "cuda") {
    std::fputs("error: --device cuda: stochastic gating is not supported by this driver yet\n", stderr);
    return 2;
  }
  try {
    // within() admits 0; a keep-probability of 0 would train nothing.
    if (!(f.p > 0)) throw InputError(fmt::format("--p {} must be a keep-probability in (0, 1]", f.p));
    if (app.count("--p-end") > 0 && !(f.p_end > 0))
      throw InputError(fmt::format("--p-end {} must be a keep-probability in (0, 1]", f.p_end));
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
