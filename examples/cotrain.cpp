// cotrain: experiment 2. Co-trains K structures (the top of a search's topk.json, or
// --masks) on one shared weight set: one rank per structure (threads by default, or the
// ranks of mpirun), gradients averaged every step (or local SGD with an outer Nesterov
// step every H steps). Then every co-trained structure, and every structure of the
// family, is evaluated on the shared weights next to its accuracy trained alone (from the
// search's results), and cotrain.json, structures.csv and all_structures.csv are written
// to --out. --checkpoint / --resume save and continue the run (bit-identically). See
// docs/cotraining.md.
#include "additive/exp/cotrain.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "additive/additive.hpp"
#include "additive/dist/thread_comm.hpp"
#include "additive/exp/cotrain_report.hpp"
#include "additive/exp/evaluate_all.hpp"
#include "additive/exp/report.hpp"
#include "additive/exp/results_file.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/io/json.hpp"
#include "additive/nn/cost.hpp"
#include "additive/report/format.hpp"
#include "additive/report/table.hpp"
#ifdef ADDITIVE_HAS_MPI
#include "additive/dist/mpi_comm.hpp"
#endif

#include "flags.hpp"

namespace {

using additive::flags::big;
using additive::flags::within;
using additive::flags::writable_path;

using namespace additive;
using Scalar = float;

struct Flags {
  std::string family = "default";
  std::string topk;
  std::string masks;
  std::int64_t top = 0;
  int workers = 0;
  bool mpi = false;
  std::string out = "cotrain-out";
  std::string data = default_data_dir().string();
  std::int64_t val = 5000;
  std::int64_t limit = 12000;
  std::int64_t d = 128;
  std::int64_t h = 512;
  std::int64_t seed = 0;
  bool quiet = false;
  double comm_timeout = 300;
};

/// The structures to co-train and, where known, each one's accuracy trained alone.
struct Plan {
  std::vector<std::uint64_t> masks;
  std::map<std::uint64_t, double> solo;  ///< mask (and its equivalents) -> search accuracy
  std::string solo_source;
};

template <class F>
Plan make_plan(const Flags& f) {
  Plan plan;
  const std::uint64_t limit = std::uint64_t{1} << F::gates;
  if (!f.masks.empty()) {
    plan.masks = additive::flags::parse_masks(f.masks, F::gates);
  } else {
    const std::filesystem::path path(f.topk);
    for (const auto& e : additive::flags::read_topk(path, F::describe(), f.family, F::gates)) {
      plan.masks.push_back(e.mask);
      if (e.val_accuracy) plan.solo[e.mask] = *e.val_accuracy;
    }
    plan.solo_source = path.string();
    // Every structure's accuracy alone, from the search's results.json next to it.
    const auto results = path.parent_path() / "results.json";
    if (std::filesystem::exists(results)) {
      const auto r = additive::flags::read_json_file(results, "search results");
      if (r.is_object() && r.contains("report")) {  // a finished search: every entry checked
        for (const auto& [m, acc] : read_report_accuracies(
                 r.at("report"), fmt::format("search results '{}'", results.string()), limit, nullptr))
          plan.solo[m] = acc;
        plan.solo_source = results.string();
      }
    }
  }
  if (f.top > 0 && static_cast<std::size_t>(f.top) < plan.masks.size())
    plan.masks.resize(static_cast<std::size_t>(f.top));
  if (plan.masks.empty()) throw InputError("no structures to co-train");
  return plan;
}

nlohmann::json solo_of(const Plan& plan, std::uint64_t mask) {
  const auto it = plan.solo.find(mask);
  return it == plan.solo.end() ? nlohmann::json(nullptr) : nlohmann::json(it->second);
}

/// What every rank needs; built identically on each.
struct Setup {
  MlpConfig model;
  TrainOptions train;
  CoTrainOptions co;
  CoRunOptions run;    ///< checkpoint, checkpoint_every, stop_after_steps
  std::string resume;  ///< checkpoint to continue from (empty: start afresh)
};

/// Rank 0's report: evaluation on the shared weights and the files.
template <class F>
int report(const Flags& f, const Plan& plan, const Setup& s, int workers, const DatasetView& train_view,
           const DatasetView& val_view, std::span<const Scalar> params, const CoTrainResult& result) {
  const int threads = std::max(1, cpu::hardware_threads());
  const auto own = evaluate_structures<cpu::MlpModel<F, Scalar>>(
      s.model, params, val_view, plan.masks, EvalAllOptions{.threads = threads, .method = EvalMethod::naive});
  std::vector<std::uint64_t> all(std::size_t{1} << F::gates);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto every = evaluate_structures<cpu::MlpModel<F, Scalar>>(
      s.model, params, val_view, all, EvalAllOptions{.threads = threads, .show_progress = !f.quiet});

  const auto n_params = static_cast<std::int64_t>(params.size());
  const std::int64_t sync_bytes = result.steps * n_params * static_cast<std::int64_t>(sizeof(Scalar));
  // Each structure's communication under S-way tensor parallelism (DESIGN section 5,
  // nn/cost.hpp: what dist::TensorParallelMlp sends), per step at this batch, against dense.
  const auto dense = mlp_cost<F>(s.model, typename F::mask_type((std::uint64_t{1} << F::gates) - 1),
                                 s.train.batch, static_cast<int>(sizeof(Scalar)));
  nlohmann::json structures = nlohmann::json::array();
  std::string csv =
      "mask,structure,cotrained_accuracy,cotrained_loss,solo_accuracy,tp_allreduces_per_step,tp_bytes_per_"
      "step,"
      "tp_fraction_of_dense\n";
  std::printf("\n%-8s %-28s %10s %10s %12s %9s\n", "mask", "structure", "co-trained", "alone",
              "TP bytes/step", "of dense");
  for (std::size_t i = 0; i < plan.masks.size(); ++i) {
    const auto m = plan.masks[i];
    const auto name = F::to_string(typename F::mask_type(m));
    const auto solo = solo_of(plan, m);
    const auto cost =
        mlp_cost<F>(s.model, typename F::mask_type(m), s.train.batch, static_cast<int>(sizeof(Scalar)));
    const double of_dense = dense.comm_bytes > 0 ? cost.comm_bytes / dense.comm_bytes : 0.0;
    structures.push_back({{"mask", m},
                          {"mask_hex", report::mask_hex(m)},
                          {"structure", name},
                          {"cotrained_accuracy", own[i].accuracy},
                          {"cotrained_loss", own[i].loss},
                          {"solo_accuracy", solo},
                          {"tp_allreduces_per_step", cost.allreduces},
                          {"tp_bytes_per_step", cost.comm_bytes},
                          {"tp_seconds_per_step", cost.comm_seconds},
                          {"tp_fraction_of_dense", of_dense}});
    csv += fmt::format("{},{},{},{},{},{},{},{}\n", report::mask_hex(m), report::csv_quoted(name),
                       own[i].accuracy, own[i].loss,
                       solo.is_null() ? std::string() : fmt::format("{}", solo.get<double>()),
                       cost.allreduces, cost.comm_bytes, of_dense);
    std::printf("%-8s %-28s %10.4f %10s %12s %9.3f\n", report::mask_hex(m).c_str(), name.c_str(),
                own[i].accuracy, solo.is_null() ? "-" : fmt::format("{:.4f}", solo.get<double>()).c_str(),
                report::human_bytes(cost.comm_bytes).c_str(), of_dense);
  }
  nlohmann::json all_json = nlohmann::json::array();
  std::string all_csv = "mask,structure,cotrained,accuracy,loss,solo_accuracy\n";
  double best = -1;
  std::uint64_t best_mask = 0;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const bool in_set = std::find(plan.masks.begin(), plan.masks.end(), all[i]) != plan.masks.end();
    const auto name = F::to_string(typename F::mask_type(all[i]));
    const auto solo = solo_of(plan, all[i]);
    all_json.push_back({{"mask", all[i]},
                        {"structure", name},
                        {"cotrained", in_set},
                        {"accuracy", every[i].accuracy},
                        {"loss", every[i].loss},
                        {"solo_accuracy", solo}});
    all_csv += fmt::format("{},{},{},{},{},{}\n", report::mask_hex(all[i]), report::csv_quoted(name),
                           in_set ? "true" : "false", every[i].accuracy, every[i].loss,
                           solo.is_null() ? std::string() : fmt::format("{}", solo.get<double>()));
    if (every[i].accuracy > best) {
      best = every[i].accuracy;
      best_mask = all[i];
    }
  }
  const auto& c = result.comm;
  const nlohmann::json comm{
      {"mode", s.co.local_steps > 0 ? "local-sgd" : "synchronous"},
      {"local_steps", s.co.local_steps},
      {"params", n_params},
      {"all_reduces", c.all_reduces},
      {"payload_bytes", c.payload_bytes},
      {"ring_bytes_per_rank",
       workers > 1 ? double(c.payload_bytes) * 2.0 * double(workers - 1) / double(workers) : 0.0},
      {"synchronous_payload_bytes", sync_bytes},
      {"fraction_of_synchronous", sync_bytes > 0 ? double(c.payload_bytes) / double(sync_bytes) : 0.0},
      {"tensor_parallel_dense_bytes_per_step", dense.comm_bytes},
      {"checksums", c.checksums},
      {"checksum_bytes", c.checksum_bytes},
      {"all_reduce_seconds", c.seconds}};
  nlohmann::json epochs = nlohmann::json::array();
  for (const auto& e : result.epochs)
    epochs.push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss}, {"seconds", e.seconds}});
  const nlohmann::json doc{
      {"format", "additive-cotrain-1"},
      {"family", F::describe()},
      {"model", s.model},
      {"train", s.train},
      {"cotrain", s.co},
      {"workers", workers},
      {"data", {{"dir", f.data}, {"train", train_view.size()}, {"val", val_view.size()}}},
      {"solo_source", plan.solo_source},
      {"steps", result.steps},
      {"seconds", result.seconds},
      {"epochs", epochs},
      {"communication", comm},
      {"structures", structures},
      {"all_structures", all_json}};
  const std::filesystem::path out(f.out);
  std::filesystem::create_directories(out);
  write_file_atomically(out / "structures.csv", std::string_view(csv));
  write_file_atomically(out / "all_structures.csv", std::string_view(all_csv));
  write_file_atomically(out / "cotrain.json", std::string_view(doc.dump(2) + "\n"));
  CoTrainFigure figure{
      .family = F::describe(),
      .mode = s.co.local_steps > 0 ? fmt::format("local SGD, H {}", s.co.local_steps) : "synchronous",
      .structures = {},
      .all = {}};
  auto solo_value = [](const nlohmann::json& j) {
    return j.is_null() ? std::optional<double>() : std::optional<double>(j.get<double>());
  };
  for (const auto& e : structures)
    figure.structures.push_back({.mask = e["mask"].get<std::uint64_t>(),
                                 .structure = e["structure"].get<std::string>(),
                                 .accuracy = e["cotrained_accuracy"].get<double>(),
                                 .solo = solo_value(e["solo_accuracy"]),
                                 .cotrained = true});
  for (const auto& e : all_json)
    figure.all.push_back({.mask = e["mask"].get<std::uint64_t>(),
                          .structure = e["structure"].get<std::string>(),
                          .accuracy = e["accuracy"].get<double>(),
                          .solo = solo_value(e["solo_accuracy"]),
                          .cotrained = e["cotrained"].get<bool>()});
  write_cotrain_svg(out / "cotrain.svg", figure);
  std::printf("\nbest of all %zu structures on the co-trained weights: %s %s (%.4f)\n", all.size(),
              report::mask_hex(best_mask).c_str(), F::to_string(typename F::mask_type(best_mask)).c_str(),
              best);
  std::printf("communication per rank: %lld all-reduces, %s payload (%.3g of synchronous)\n",
              static_cast<long long>(c.all_reduces), report::human_bytes(double(c.payload_bytes)).c_str(),
              sync_bytes > 0 ? double(c.payload_bytes) / double(sync_bytes) : 0.0);
  std::printf("wrote %s, structures.csv, all_structures.csv, cotrain.svg\n",
              (out / "cotrain.json").string().c_str());
  return 0;
}

struct Data {
  ImageDataset set;
  std::optional<DatasetView> train, val;
};

void load(const Flags& f, const Setup& s, Data& d) {
  d.set = additive::flags::load_images(f.data, "train", s.model.in_dim);
  auto [train, val] = additive::flags::train_val_views(d.set, f.val, f.limit, s.train.seed);
  d.train.emplace(train);
  d.val.emplace(val);
}

/// One rank: co-train its structure; rank 0 keeps the weights and the result.
template <class F, class Comm>
void run_rank(Comm& comm, const Setup& s, const Plan& plan, const Data& d, bool progress,
              std::vector<Scalar>& params_out, CoTrainResult& result_out) {
  const auto mask = plan.masks[static_cast<std::size_t>(comm.rank()) % plan.masks.size()];
  CoTrainer<cpu::MlpModel<F, Scalar>, Comm> trainer(comm, s.model, typename F::mask_type(mask), s.train,
                                                    s.co);
  if (!s.resume.empty()) trainer.resume(s.resume);
  auto result = trainer.fit(*d.train, DatasetView(d.set, {}), progress && comm.rank() == 0, {}, s.run);
  if (comm.rank() == 0) {
    params_out.assign(trainer.params().begin(), trainer.params().end());
    result_out = result;
  }
}

template <class F>
int run(const Flags& f, Setup s, int mpi_rank, int mpi_size, void* mpi_comm) {
  (void)mpi_comm;
  const Plan plan = make_plan<F>(f);
  const int K = static_cast<int>(plan.masks.size());
  const int workers = mpi_size > 0 ? mpi_size : (f.workers > 0 ? f.workers : K);
  if (workers % K != 0)
    throw InputError(
        fmt::format("{} {} for {} structures: expected a multiple of {} (rank r trains structure r mod {})",
                    mpi_size > 0 ? "MPI ranks" : "--workers", workers, K, K, K));
  // Each rank of this process keeps parameters, gradients, 2 optimizer moments (local SGD: 2 more).
  flags::check_model_fits(
      s.model, F::blocks, sizeof(Scalar),
      (s.co.local_steps > 0 ? 6U : 4U) * static_cast<std::uint64_t>(mpi_size > 0 ? 1 : workers));
  if (!f.quiet && mpi_rank <= 0) {
    std::printf(
        "family %s: co-training %d structures on %d %s (%s, %s)\n", F::describe().c_str(), K, workers,
        mpi_size > 0 ? "MPI ranks" : "threads", s.co.same_batch ? "same batch" : "data-parallel",
        s.co.local_steps > 0 ? fmt::format("local SGD, H {}", s.co.local_steps).c_str() : "synchronous");
    std::fflush(stdout);
  }
  Data d;
  load(f, s, d);
  std::vector<Scalar> params;
  CoTrainResult result;
  const bool progress = !f.quiet;
  if (mpi_size > 0) {
#ifdef ADDITIVE_HAS_MPI
    auto& comm = *static_cast<dist::MpiComm*>(mpi_comm);
    run_rank<F>(comm, s, plan, d, progress, params, result);
    if (mpi_rank != 0) return 0;
#endif
  } else {
    dist::run_threads(
        workers, [&](dist::ThreadComm& comm) { run_rank<F>(comm, s, plan, d, progress, params, result); },
        additive::flags::comm_timeout(f.comm_timeout, true));
  }
  if (!result.finished) {
    std::printf("stopped after step %lld (checkpoint %s)\n", static_cast<long long>(result.steps),
                s.run.checkpoint.empty() ? "not written" : s.run.checkpoint.string().c_str());
    return 0;
  }
  return report<F>(f, plan, s, workers, *d.train, *d.val, params, result);
}

int dispatch(const Flags& f, const Setup& s, int rank, int size, void* comm) {
  return with_family(
      f.family, [&](auto family) { return run<typename decltype(family)::type>(f, s, rank, size, comm); });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Co-training: K structures of a sharded MLP family trained together on one shared weight set."};
  Flags f;
  Setup s;
  s.train = TrainOptions{.epochs = 2, .batch = 128, .lr = 2e-3};
  auto* topk =
      app.add_option("--topk", f.topk,
                     "topk.json of a search (its results.json next to it gives the accuracies alone)")
          ->check(CLI::ExistingFile);
  auto* masks = app.add_option("--masks", f.masks, "structures as comma-separated masks, e.g. 0x3f,0x15");
  topk->excludes(masks);
  app.add_option("--top", f.top, "co-train only the first N structures of --topk (0: all)")
      ->check(within<std::int64_t>(0, big));
  app.add_option("--family", f.family, shipped_family_help() + " (as the search)")
      ->capture_default_str()
      ->check(CLI::IsMember(shipped_family_names()));
  app.add_option("--workers", f.workers, "threads (ranks); rank r trains structure r mod K (default: K)")
      ->check(within(1, 1024));
  app.add_flag("--mpi", f.mpi, "one rank per MPI process (automatic under Open MPI's mpirun)");
  app.add_flag("--same-batch", s.co.same_batch,
               "every rank reads the whole global batch (default: its slice)");
  app.add_option("--local-sgd", s.co.local_steps, "local SGD: H inner steps per outer step (0: synchronous)")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, big));
  app.add_option("--outer-lr", s.co.outer_lr, "local SGD: outer learning rate")
      ->capture_default_str()
      ->check(within(1e-12, 1e3));
  app.add_option("--outer-momentum", s.co.outer_momentum, "local SGD: outer Nesterov momentum (0: plain SGD)")
      ->capture_default_str()
      ->check(within(0.0, 0.999999));
  app.add_option("--checksum-every", s.co.checksum_every,
                 "compare the replicas every N steps (0: at the end)")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, big));
  app.add_option("--out", f.out, "directory for cotrain.json, structures.csv, all_structures.csv")
      ->capture_default_str()
      ->check(additive::flags::writable_dir());
  app.add_option("--optimizer", s.train.optimizer, "adamw or sgd (inner optimizer under --local-sgd)")
      ->capture_default_str()
      ->check(CLI::IsMember({"adamw", "sgd"}));
  additive::flags::add_budget_options(app, s.train.epochs, s.train.lr, s.train.batch, "epochs",
                                      "global batch size");
  additive::flags::add_seed_option(app, f.seed, "seed: initial weights, validation split, data order");
  additive::flags::add_data_options(app, f.data, f.val, f.limit);
  additive::flags::add_width_options(app, f.d, f.h, 4);
  std::string checkpoint;
  app.add_option("--checkpoint", checkpoint,
                 "rank 0 writes the whole co-training state here (atomically) after every epoch")
      ->check(writable_path());
  app.add_option("--checkpoint-every", s.run.checkpoint_every, "also every N steps")
      ->check(within<std::int64_t>(0, big));
  app.add_option("--resume", s.resume, "continue from a checkpoint written with the same options")
      ->check(additive::flags::non_empty_path())
      ->check(CLI::ExistingFile);
  app.add_option("--stop-after", s.run.stop_after_steps,
                 "stop after this many steps in total, as if interrupted")
      ->check(within<std::int64_t>(0, big));
  app.add_flag("--quiet", f.quiet, "no progress bar");
  additive::flags::add_comm_timeout_option(app, f.comm_timeout);
  std::string device = "cpu";
  app.add_option("--device", device, "cpu (--device cuda: the train and search drivers)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  if (const int code = additive::flags::parse(app, argc, argv); code >= 0) return code;
  if (device == "cuda") {
    std::fputs("error: --device cuda: co-training is not supported by this driver yet\n", stderr);
    return 2;
  }
  s.run.checkpoint = checkpoint;
  if (f.topk.empty() && f.masks.empty()) {
    std::fprintf(stderr, "error: give the structures with --topk FILE or --masks LIST (see --help)\n");
    return 2;
  }
  s.train.seed = static_cast<std::uint64_t>(f.seed);
  s.model = MlpConfig{.in_dim = 784, .d = f.d, .h = f.h, .classes = 10};

  const bool under_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
  if (f.mpi || under_mpirun) {
#ifdef ADDITIVE_HAS_MPI
    dist::MpiEnvironment env(argc, argv);
    auto comm = dist::MpiComm::world();
    comm.set_timeout(additive::flags::comm_timeout(f.comm_timeout, false));
    try {
      return dispatch(f, s, comm.rank(), comm.size(), &comm);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: rank %d: %s\n", comm.rank(), e.what());
      if (comm.size() > 1) comm.abort(2);
      return 2;
    }
#else
    if (f.mpi) {
      std::fprintf(stderr, "error: --mpi: this build has no MPI (install libopenmpi-dev and reconfigure)\n");
      return 2;
    }
#endif
  }
  try {
    return dispatch(f, s, -1, 0, nullptr);
  } catch (const InputError& e) {
    additive::flags::print_error(e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}
