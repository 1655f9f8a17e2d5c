// search: experiment 1. Trains every structure of a family of the sharded MLP (or a
// seeded sample) on Fashion-MNIST, ranks them on the validation split and writes the
// leaderboard, results.json, results.csv, topk.json and report.svg. Defaults fit a
// 2-core machine in a few minutes; --full restores the full-size run. Under mpirun (when
// built with MPI) the runs are shared by the ranks and rank 0 writes the same files.
#include "additive/exp/search.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "additive/additive.hpp"
#include "additive/dist/collectives.hpp"
#include "additive/dist/thread_comm.hpp"
#include "additive/exp/report.hpp"
#ifdef ADDITIVE_HAS_MPI
#include "additive/dist/mpi_comm.hpp"
#endif

#include "flags.hpp"

#ifdef ADDITIVE_HAS_CUDA
#include "cuda/device_runner.hpp"
#endif

namespace {

using additive::flags::big;
using additive::flags::within;

using namespace additive;

struct Flags {
  std::string family = "default";
  std::string out = "search-out";
  bool resume = false;
  std::string data = default_data_dir().string();
  std::int64_t val = 5000;
  std::int64_t limit = 12000;
  std::int64_t d = 128;
  std::int64_t h = 512;
  std::int64_t seed = 0;
  std::int64_t sample_seed = 0;
  bool no_dedupe = false;
  bool full = false;
  bool quiet = false;
  std::string device = "cpu";
  bool no_graphs = false;
  std::string precision = "fp32";
  int concurrent = 0;
  double comm_timeout = 300;
  std::string race = "1x1,3x2,5x4";
  std::string full_race = "1x2,3x5,5x10";
  bool no_race = false;
  bool budget_given = false;  ///< --seeds or --epochs on the command line
  bool race_given = false;
};

/// --device cuda is possible here: this build has the CUDA backend and the machine a GPU.
void check_device(const Flags& f) {
  if (f.device != "cuda") return;
#ifdef ADDITIVE_HAS_CUDA
  examples::require_cuda_device();
#else
  throw InputError("--device cuda: this build has no CUDA backend (configure with ADDITIVE_CUDA=ON)");
#endif
}

/// One rank of the search (the only one without MPI): every rank loads the data and
/// trains its share; rank 0 checks --out, prints and writes the files.
template <class F, class Comm>
int run(Flags f, TrainOptions train, SearchOptions search, Comm& comm) {
  const bool root = comm.rank() == 0;
  if (f.full) {
    f.limit = 0;
    f.d = 256;
    f.h = 1024;
    if (f.no_race || f.budget_given) {
      if (!f.budget_given) train.epochs = 10;
    } else if (!f.race_given) {
      f.race = f.full_race;
    }
  }
  if (!f.no_race) {
    if (f.budget_given)
      throw InputError(
          "--seeds and --epochs set the budget of a search without racing: add --no-race, or give the "
          "rungs of the race as --race SEEDSxEPOCHS,...");
    search.race = parse_rungs(f.race);
  }
  train.seed = static_cast<std::uint64_t>(f.seed);
  search.sample_seed = static_cast<std::uint64_t>(f.sample_seed);
  search.dedupe = !f.no_dedupe;
  const MlpConfig model{.in_dim = 784, .d = f.d, .h = f.h, .classes = 10};
  // Each worker trains a model of its own: parameters, gradients and 2 optimizer moments.
  additive::flags::check_model_fits(model, F::blocks, sizeof(float),
                                    4 * static_cast<std::uint64_t>(search.workers));
  StructureSearch<cpu::MlpModel<F, float>> engine(model, train, search);
#ifdef ADDITIVE_HAS_CUDA
  if (f.device == "cuda")  // each process trains its jobs concurrently on its GPU
    engine.set_device_runner(examples::cuda_search_runner(
        f.family, model, {.graphs = !f.no_graphs, .precision = f.precision, .concurrent = f.concurrent}));
#endif

  // Every rank loads the data; rank 0 alone looks at --out. A failure on any rank is
  // the same error on all (dist::raise_together), so none waits in the search.
  ImageDataset train_set;
  std::optional<DatasetView> train_view, val_view;
  const std::filesystem::path out(f.out);
  const auto results = out / "results.json";
  std::exception_ptr failure;
  try {
    train_set = additive::flags::load_images(f.data, "train", model.in_dim);
    auto [tv, vv] = additive::flags::train_val_views(train_set, f.val, f.limit, train.seed);
    train_view.emplace(tv);
    val_view.emplace(vv);
    if (root) {
      // A resumed search needs its directory already; a failed resume must not create one.
      if (!f.resume) std::filesystem::create_directories(out);
      if (!f.resume && std::filesystem::exists(results))
        throw InputError(fmt::format(
            "{} exists: pass --resume to continue that search, or choose another --out", results.string()));
    }
  } catch (...) {
    failure = std::current_exception();
  }
  dist::raise_together(comm, failure);

  const auto masks = engine.candidates();
  if (root) {
    const std::string budget =
        search.race.empty()
            ? fmt::format("{} epochs, seeds {}", train.epochs, search.seeds)
            : fmt::format("race {} (seeds x epochs per rung, at most 1/{} go on)", f.race, search.eta);
    std::printf("family %s: %llu structures, %zu considered\n", F::describe().c_str(),
                static_cast<unsigned long long>(F::mask_type::count), masks.size());
    std::printf(
        "data %s: %lld train%s, %lld validation (one image = %.3f points)  |  d %lld, h %lld  |  %s, batch "
        "%lld, lr %g, workers %d%s\n",
        f.data.c_str(), static_cast<long long>(train_view->size()),
        f.limit > 0 ? " (--limit; --full for all)" : "", static_cast<long long>(val_view->size()),
        100.0 / static_cast<double>(val_view->size()), static_cast<long long>(f.d),
        static_cast<long long>(f.h), budget.c_str(), static_cast<long long>(train.batch), train.lr,
        search.workers, comm.size() > 1 ? fmt::format(" on each of {} MPI ranks", comm.size()).c_str() : "");
    std::fflush(stdout);
  }

  const nlohmann::json data_identity{{"dir", std::filesystem::absolute(f.data).lexically_normal().string()},
                                     {"train", train_view->size()},
                                     {"val", val_view->size()}};
  const auto report = engine.run(comm, *train_view, *val_view, results, f.resume, data_identity, !f.quiet);
  if (!root) return 0;
  std::printf(
      "%lld structures, %lld distinct functions trained\n\n%s", static_cast<long long>(report.candidates),
      static_cast<long long>(report.trained),
      leaderboard_text(report, static_cast<std::size_t>(std::max<std::int64_t>(search.top_k, 10))).c_str());
  if (engine.runs_trained() > 0 && engine.training_seconds() > 0)
    std::printf(
        "trained %lld runs, %lld structure-epochs in %.1f s: %.1f structure-epochs/min (%d workers x %d "
        "ranks)\n",
        static_cast<long long>(engine.runs_trained()), static_cast<long long>(engine.epochs_trained()),
        engine.training_seconds(),
        60.0 * static_cast<double>(engine.epochs_trained()) / engine.training_seconds(), search.workers,
        comm.size());
  write_results_csv(out / "results.csv", report);
  write_topk_json(out / "topk.json", report);
  write_report_svg(out / "report.svg", report);
  std::printf("\nwrote %s, results.csv, topk.json, report.svg\n", results.string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Structure search: train every structure of a sharded MLP family and rank them."};
  Flags f;
  TrainOptions train{.epochs = 2, .batch = 128, .lr = 2e-3};
  SearchOptions search{.workers = cpu::hardware_threads()};
  app.add_option("--family", f.family, shipped_family_help())
      ->capture_default_str()
      ->check(CLI::IsMember(shipped_family_names()));
  app.add_option("--out", f.out, "directory for results.json, results.csv, topk.json, report.svg")
      ->capture_default_str()
      ->check(additive::flags::writable_dir());
  app.add_flag("--resume", f.resume, "continue the search in --out, training only what is missing");
  app.add_option("--sample", search.sample, "train a seeded sample of this many structures instead of all")
      ->check(within<std::int64_t>(0, big));
  app.add_option("--sample-seed", f.sample_seed, "seed of the sample")->check(within<std::int64_t>(0, big));
  app.add_option("--race", f.race,
                 "racing rungs SEEDSxEPOCHS,...: every structure runs the first; each rung passes its top "
                 "group (at most 1/--eta) to the next")
      ->capture_default_str();
  app.add_flag("--no-race", f.no_race, "train every structure with --seeds x --epochs instead of racing");
  app.add_option("--eta", search.eta, "a rung passes on at most 1/eta of its structures (at least 2)")
      ->capture_default_str()
      ->check(within<std::int64_t>(2, 1000000));
  app.add_option("--seeds", search.seeds, "without racing: seeds per structure")
      ->capture_default_str()
      ->check(within(1, 1000));
  app.add_option("--workers", search.workers,
                 "threads, each training one structure (results do not depend on it)")
      ->capture_default_str()
      ->check(within(1, 1024));
  app.add_option("--top-k", search.top_k, "structures in topk.json")
      ->capture_default_str()
      ->check(within<std::int64_t>(1, big));
  app.add_option("--long-epochs", search.long_epochs,
                 "retrain the top --long-top structures this many epochs and report Kendall's tau (0: off)")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, 1000000));
  app.add_option("--long-top", search.long_top, "structures in the short-vs-long check")
      ->capture_default_str()
      ->check(within<std::int64_t>(2, big));
  app.add_flag("--no-dedupe", f.no_dedupe, "train equivalent structures separately");
  additive::flags::add_budget_options(app, train.epochs, train.lr, train.batch,
                                      "without racing: epochs per structure", "batch size");
  additive::flags::add_seed_option(app, f.seed, "base seed: initial weights, validation split, data order");
  additive::flags::add_data_options(app, f.data, f.val, f.limit);
  additive::flags::add_width_options(app, f.d, f.h, 4);
  app.add_flag(
      "--full", f.full,
      "the full run: all training data, d 256, h 1024, race 1x2,3x5,5x10 (without racing: 10 epochs)");
  app.add_flag("--quiet", f.quiet, "no progress bar");
  app.add_option("--device", f.device,
                 "cpu (--workers threads), or cuda (structures trained concurrently on the GPU)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--no-graphs", f.no_graphs,
               "cuda: launch each step's kernels instead of replaying a CUDA graph");
  app.add_option("--precision", f.precision, "cuda: GEMM precision (fp32, tf32, bf16: operands in bf16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
  app.add_option("--concurrent", f.concurrent, "cuda: structures trained at once (0: all of a round)")
      ->capture_default_str()
      ->check(within(0, 4096));
  additive::flags::add_comm_timeout_option(app, f.comm_timeout);
  if (const int code = additive::flags::parse(app, argc, argv); code >= 0) return code;
  f.budget_given = app.count("--seeds") > 0 || app.count("--epochs") > 0;
  f.race_given = app.count("--race") > 0;
  auto dispatch = [&](auto& comm) {
    check_device(f);
    return with_family(
        f.family, [&](auto family) { return run<typename decltype(family)::type>(f, train, search, comm); });
  };
#ifdef ADDITIVE_HAS_MPI
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {  // started by Open MPI's mpirun
    dist::MpiEnvironment env(argc, argv);
    auto comm = dist::MpiComm::world();
    comm.set_timeout(additive::flags::comm_timeout(f.comm_timeout, false));
    try {
      return dispatch(comm);
    } catch (const InputError& e) {
      // The search and the driver throw these on every rank alike: one line, from rank 0.
      if (comm.rank() == 0) additive::flags::print_error(e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: rank %d: %s\n", comm.rank(), e.what());
      if (comm.size() > 1) comm.abort(2);
      return 2;
    }
  }
#endif
  try {
    dist::ThreadGroup one(1);
    auto comm = one.join(0);
    return dispatch(comm);
  } catch (const InputError& e) {
    additive::flags::print_error(e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}
