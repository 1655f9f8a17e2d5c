// Experiment 1, structure search: every structure of a family (or a seeded sample) trains
// from the same initial weights on the same data in the same order, is evaluated on the
// validation split, and is ranked. Structures that compute the same function are found
// first and trained once. Workers are threads, each training a different structure
// single-threaded, so the results are the same for any worker count. Every finished
// run is written to the results file at once (atomically), and a search started again
// with `resume` trains only what is missing. On several ranks (MPI processes, threads:
// any Communicator) the runs are dealt to the ranks and gathered, and only rank 0 reads
// and writes the results file: the results are those of one process (docs/search.md).
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/core/seed.hpp"
#include "additive/data/dataset.hpp"
#include "additive/dist/collectives.hpp"
#include "additive/dist/communicator.hpp"
#include "additive/dist/thread_comm.hpp"
#include "additive/exp/device_runner.hpp"
#include "additive/exp/progress.hpp"
#include "additive/exp/report.hpp"
#include "additive/exp/results_file.hpp"
#include "additive/exp/search_types.hpp"
#include "additive/exp/stats.hpp"
#include "additive/exp/train.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/io/json.hpp"
#include "additive/nn/model.hpp"
#include "additive/stats/gate_effects.hpp"
#include "additive/stats/paired.hpp"

namespace additive {

/// One rung of a race: the structures still in contention train with seeds 0 .. seeds-1
/// for `epochs` epochs each, every run from scratch (a run of an earlier rung with the same
/// seed and epochs is the same run, and is reused).
struct Rung {
  int seeds = 1;
  std::int64_t epochs = 1;
  friend bool operator==(const Rung&, const Rung&) = default;
};

inline void to_json(nlohmann::json& j, const Rung& r) { j = nlohmann::json::array({r.seeds, r.epochs}); }

/// Rungs written as "SEEDSxEPOCHS,...", for example "1x1,3x2,5x4"; InputError naming the
/// text otherwise (SearchOptions::validate checks that each rung adds budget).
inline std::vector<Rung> parse_rungs(std::string_view text) {
  std::vector<Rung> out;
  const std::string whole = detail::printable(text, 80);
  const auto bad = [&](std::string_view why) {
    return InputError(fmt::format("race '{}': {} (expected SEEDSxEPOCHS,..., e.g. 1x1,3x2,5x4)", whole, why));
  };
  auto number = [&](std::string_view s, std::int64_t hi) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < 1 || v > hi)
      throw bad(fmt::format("'{}' is not an integer in [1, {}]", detail::printable(s, 20), hi));
    return v;
  };
  if (text.empty()) throw bad("no rungs");
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    const auto x = item.find('x');
    if (x == std::string_view::npos) throw bad("a rung without 'x'");
    out.push_back({static_cast<int>(number(item.substr(0, x), 1000)), number(item.substr(x + 1), 1000000)});
    if (out.size() > 16) throw bad("more than 16 rungs");
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
    if (text.empty()) throw bad("a trailing comma");
  }
  return out;
}

/// What a search explores. Together with the model widths, training options and data
/// these decide its results; `workers` does not.
struct SearchOptions {
  std::int64_t sample = -1;  ///< -1: every structure; otherwise a seeded sample of this many (>= 1)
  std::uint64_t sample_seed = 0;
  int seeds = 1;           ///< R without a race: each structure trains with seeds base + 0 .. base + R-1
  bool dedupe = true;      ///< train one structure per group of equivalent ones
  std::int64_t top_k = 8;  ///< size of topk.json
  std::int64_t long_epochs = 0;  ///< > 0: retrain the top `long_top` this long and report Kendall's tau
  std::int64_t long_top = 8;
  int workers = 1;  ///< threads, each training one structure at a time
  /// Racing (successive halving): every structure runs the first rung; after each rung the
  /// structures of its top group go on to the next, at most ceil(n / eta) of them (the best
  /// by mean accuracy), until the last rung or until the top group is one structure. Each
  /// rung must add seeds or epochs. Empty: no race, one rung of `seeds` x the training epochs.
  std::vector<Rung> race{};
  std::int64_t eta = 4;

  /// The rungs the search runs through, given the training options' epochs.
  [[nodiscard]] std::vector<Rung> rungs(std::int64_t epochs) const {
    return race.empty() ? std::vector<Rung>{{seeds, epochs}} : race;
  }
  /// The largest seed index any run may have, plus one.
  [[nodiscard]] int max_seeds() const {
    int r = seeds;
    for (const auto& g : race) r = std::max(r, g.seeds);
    return r;
  }

  void validate(std::uint64_t structures) const {
    auto bad = [](const std::string& what) { throw InputError("search options: " + what); };
    if (sample == 0) bad("the structure sample is empty (sample size 0)");
    if (sample < -1) bad("sample size must be >= 1");
    if (sample > 0 && static_cast<std::uint64_t>(sample) > structures)
      bad(fmt::format("sample of {} structures from a family of {}", sample, structures));
    if (seeds < 1 || seeds > 1000) bad("seeds must be in [1, 1000]");
    if (top_k < 1) bad("top-k must be >= 1");
    if (long_epochs < 0 || long_top < 2)
      bad("the short-vs-long check needs long epochs >= 0 and at least 2 structures");
    if (workers < 1) bad("workers must be >= 1");
    if (race.empty()) return;
    if (seeds != 1) bad("a race sets the seeds of each rung: seeds must stay 1");
    if (race.size() > 16) bad("a race has at most 16 rungs");
    if (eta < 2 || eta > 1000000) bad("eta must be in [2, 1000000]");
    for (std::size_t k = 0; k < race.size(); ++k) {
      const Rung& g = race[k];
      if (g.seeds < 1 || g.seeds > 1000 || g.epochs < 1 || g.epochs > 1000000)
        bad(fmt::format("rung {} ({} seeds x {} epochs): seeds must be in [1, 1000], epochs in [1, 1000000]",
                        k + 1, g.seeds, g.epochs));
      if (k > 0 && (g.seeds < race[k - 1].seeds || g.epochs < race[k - 1].epochs || g == race[k - 1]))
        bad(fmt::format("rung {} ({}x{}) must add seeds or epochs to rung {} ({}x{}) and take none away",
                        k + 1, g.seeds, g.epochs, k, race[k - 1].seeds, race[k - 1].epochs));
    }
  }
};

inline void to_json(nlohmann::json& j, const SearchOptions& o) {
  j = nlohmann::json{
      {"sample", o.sample}, {"sample_seed", o.sample_seed}, {"seeds", o.seeds},      {"dedupe", o.dedupe},
      {"top_k", o.top_k},   {"long_epochs", o.long_epochs}, {"long_top", o.long_top}};
  if (!o.race.empty()) {  // a search without a race keeps the settings of earlier versions
    j["race"] = o.race;
    j["eta"] = o.eta;
  }
}

/// The search over the structures of model M's family. M trains each run (for example
/// cpu::MlpModel<F, float>); M::rebind<double> compares the structures' functions.
template <RebindableModel M>
class StructureSearch {
 public:
  using model_type = M;
  using family = typename M::family;
  using mask_type = typename M::mask_type;
  using config_type = typename M::config_type;

  StructureSearch(const config_type& model, const TrainOptions& train, const SearchOptions& options)
      : model_(model), train_(train), options_(options) {
    (void)M(model_, 1);  // validates the widths (an InputError names what is wrong)
    train_.validate();
    options_.validate(mask_type::count);
  }

  /// Trains this process's jobs through `runner` (an accelerator backend, set by a driver
  /// built with one) instead of on `workers` CPU threads; empty: the CPU. Each run keeps
  /// its seed, epochs and data order, so results differ from the CPU's only by the
  /// backend's arithmetic.
  void set_device_runner(DeviceJobRunner runner) { device_runner_ = std::move(runner); }

  /// The structures considered: all of them, or a seeded sample, in increasing mask order.
  [[nodiscard]] std::vector<std::uint64_t> candidates() const {
    return structure_sample(mask_type::count, options_.sample, options_.sample_seed);
  }

  /// Groups of masks whose models compute the same function: outputs on random float64
  /// probes agree to rounding, both at the initial weights of the search and at random
  /// weights (non-zero biases, non-unit norms). Each group starts with its smallest mask.
  [[nodiscard]] std::vector<std::vector<std::uint64_t>> equivalence_groups(
      const std::vector<std::uint64_t>& masks) const {
    constexpr Index probes = 16;
    using Probe = rebind_scalar_t<M, double>;
    Probe model(model_, 1);
    std::vector<double> init(model.layout().total()), random(model.layout().total());
    Probe::init_params(model_, training_init_seed(train_.seed), init);
    {
      std::mt19937_64 rng(derive_seed(train_.seed, seed_domain::probe, 0));
      std::uniform_real_distribution<double> u(-0.5, 0.5);
      for (const auto& t : model.layout().tensors())
        for (std::size_t i = 0; i < t.size; ++i)
          random[t.offset + i] = t.name.ends_with("norm.weight") ? 1.0 + u(rng) : u(rng);
    }
    std::vector<double> x(static_cast<std::size_t>(model.input_dim() * probes));
    std::mt19937_64 rng(derive_seed(train_.seed, seed_domain::probe, 1));
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (auto& v : x) v = unit(rng);
    const std::vector<std::int32_t> y(static_cast<std::size_t>(probes), 0);
    const MatView<const double> xv(x.data(), model.input_dim(), probes);

    auto outputs = [&](std::uint64_t m) {
      std::vector<double> out;
      for (const auto* p : {&init, &random}) {
        model.forward(mask_type(m), *p, xv, y);
        const auto l = model.logits();
        for (Index j = 0; j < l.cols; ++j)
          for (Index i = 0; i < l.rows; ++i) out.push_back(l(i, j));
      }
      return out;
    };
    std::vector<std::vector<std::uint64_t>> groups;
    std::vector<std::vector<double>> reps;
    for (const auto m : masks) {
      const auto out = outputs(m);
      double scale = 1;
      for (const double v : out) scale = std::max(scale, std::abs(v));
      bool placed = false;
      for (std::size_t g = 0; g < groups.size() && !placed; ++g) {
        double diff = 0;
        for (std::size_t i = 0; i < out.size(); ++i) diff = std::max(diff, std::abs(out[i] - reps[g][i]));
        if (diff <= 1e-9 * scale) {
          groups[g].push_back(m);
          placed = true;
        }
      }
      if (!placed) {
        groups.push_back({m});
        reps.push_back(out);
      }
    }
    return groups;
  }

  /// Identity of the search: a results file with other settings cannot be resumed.
  [[nodiscard]] nlohmann::json settings(const nlohmann::json& data_identity) const {
    return {{"format", "additive-search-1"},
            {"family", family::describe()},
            {"model", model_},
            {"train", train_},
            {"search", options_},
            {"data", data_identity}};
  }

  /// Training runs this search has executed, on all ranks (not counting those a resume
  /// found done).
  [[nodiscard]] std::int64_t runs_trained() const noexcept { return runs_trained_; }
  /// Epochs trained by this object (runs_trained() weighted by each run's epochs): with
  /// training_seconds(), the search throughput in structure-epochs per unit of time.
  [[nodiscard]] std::int64_t epochs_trained() const noexcept { return epochs_trained_; }
  /// Wall time spent training (the worker pools of run(), not the equivalence probes).
  [[nodiscard]] double training_seconds() const noexcept { return training_seconds_; }

  /// Runs the search. `results`: the results file (empty: none); with `resume` its runs
  /// are kept and only the missing ones trained. `data_identity` names the data (sizes,
  /// source) so that a resume on other data is refused.
  SearchReport run(const DatasetView& train, const DatasetView& val, const std::filesystem::path& results,
                   bool resume, const nlohmann::json& data_identity, bool progress = true) {
    dist::ThreadGroup one(1);
    auto comm = one.join(0);
    return run(comm, train, val, results, resume, data_identity, progress);
  }

  /// The same search on the ranks of `comm`, collective: every rank passes the same
  /// settings and data (checked). The runs missing from the results are dealt to the
  /// ranks round-robin, in rounds; each rank trains its share on its `workers` threads;
  /// after each round every rank has every record, and rank 0 alone reads `results`
  /// (its text is broadcast), writes it and shows progress. The report, and the file, equal
  /// a one-rank search's bit for bit (every run is seeded and single-threaded). An error
  /// on any rank is thrown on every rank (dist::raise_together), never a hang.
  template <Communicator C>
  SearchReport run(C& comm, const DatasetView& train, const DatasetView& val,
                   const std::filesystem::path& results, bool resume, const nlohmann::json& data_identity,
                   bool progress = true) {
    const auto masks = candidates();
    const auto groups = options_.dedupe ? equivalence_groups(masks) : singleton_groups(masks);
    const auto settings_json = settings(data_identity);
    dist::check_consistent(comm, "search settings and equivalence groups",
                           settings_json.dump() + nlohmann::json(groups).dump());
    const bool root = comm.rank() == 0;
    progress = progress && root;
    // Only rank 0 writes (the other ranks train with no results file).
    const std::filesystem::path own_results = root ? results : std::filesystem::path();
    {
      double total = options_.workers;  // the ranks' threads together size the rounds
      comm.all_reduce_sum(std::span<double>(&total, 1));
      all_workers_ = static_cast<std::size_t>(total);
    }
    runs_.clear();
    if (resume) {
      std::optional<std::string> text;
      if (root) text = read_text(results);
      load_runs(results, dist::broadcast_text(comm, text, 0), settings_json,
                static_cast<std::size_t>(val.size()));
    }

    // The race (one rung without racing): each rung trains the structures still in it,
    // ranks them, and passes its top group on, at most ceil(n / eta) of them.
    const std::vector<Rung> plan = options_.rungs(train_.epochs);
    std::map<std::uint64_t, std::vector<std::uint64_t>> equivalents;
    std::vector<std::uint64_t> alive;
    for (const auto& g : groups) {
      alive.push_back(g.front());
      equivalents[g.front()].assign(g.begin() + 1, g.end());
    }
    SearchReport report;
    report.family = family::describe();
    report.candidates = static_cast<std::int64_t>(masks.size());
    report.trained = static_cast<std::int64_t>(groups.size());
    report.top_k = options_.top_k;
    report.eta = options_.race.empty() ? 0 : options_.eta;
    std::vector<std::vector<SearchEntry>> dropped;  // by rung, each in its rung's order
    std::map<std::uint64_t, double> screen;         // first-rung mean accuracy of every structure
    std::vector<SearchEntry> final_entries;
    for (std::size_t k = 0; k < plan.size(); ++k) {
      const Rung& rung = plan[k];
      std::vector<Job> jobs;
      for (const auto m : alive)
        for (int r = 0; r < rung.seeds; ++r) jobs.push_back({"short", m, r, rung.epochs});
      const std::string label =
          plan.size() == 1 ? std::string("search")
                           : fmt::format("rung {}/{} ({}x{})", k + 1, plan.size(), rung.seeds, rung.epochs);
      execute(comm, jobs, train, val, own_results, settings_json, groups, progress, label);

      RungRanking ranking = rank_rung(alive, rung, static_cast<int>(k), equivalents);
      if (k == 0) {
        for (const auto& e : ranking.entries) screen[e.mask] = e.acc_mean;
        if (ranking.table) report.gate_effects = gate_effects(*ranking.table);
      }
      RungSummary summary{
          .seeds = rung.seeds,
          .epochs = rung.epochs,
          .structures = static_cast<std::int64_t>(ranking.entries.size()),
          // without statistics (one seed, no per-image bits) none is shown worse
          .top_group =
              ranking.paired ? ranking.paired->top_group : static_cast<std::int64_t>(ranking.entries.size()),
          .kept = 0,
          .seed_tau = ranking.paired ? ranking.paired->seed_tau : std::numeric_limits<double>::quiet_NaN()};
      const bool last = k + 1 == plan.size();
      if (!last && summary.top_group <= 1) {
        report.stopped = fmt::format(
            "the race stopped after rung {} of {}: its leader is ahead of every other structure there", k + 1,
            plan.size());
      }
      if (last || summary.top_group <= 1) {
        report.rungs.push_back(summary);
        report.paired = ranking.paired;
        final_entries = std::move(ranking.entries);
        break;
      }
      // The top group, in rank order, capped at ceil(n / eta) (and at least 2).
      const auto n = static_cast<std::int64_t>(ranking.entries.size());
      const std::int64_t cap = std::max<std::int64_t>(2, (n + options_.eta - 1) / options_.eta);
      std::vector<std::uint64_t> next;
      std::vector<SearchEntry> out;
      for (auto& e : ranking.entries) {
        const bool contender = ranking.paired ? e.top_group : true;
        if (contender && static_cast<std::int64_t>(next.size()) < cap) {
          next.push_back(e.mask);
        } else {
          e.cut = contender;
          e.top_group = false;  // the final top group is the last rung's
          out.push_back(std::move(e));
        }
      }
      summary.kept = static_cast<std::int64_t>(next.size());
      report.rungs.push_back(summary);
      dropped.push_back(std::move(out));
      alive = std::move(next);
    }
    // The leaderboard: the last rung's structures, then those dropped, latest rung first.
    report.entries = std::move(final_entries);
    for (auto it = dropped.rbegin(); it != dropped.rend(); ++it)
      for (auto& e : *it) report.entries.push_back(std::move(e));
    for (std::size_t i = 0; i < report.entries.size(); ++i) {
      report.entries[i].rank = static_cast<int>(i + 1);
      report.entries[i].screen_acc = screen.at(report.entries[i].mask);
    }
    mark_pareto(report.entries);

    // Trust: retrain the top structures with a longer budget and compare with the ranking
    // of the first rung (the budget at which every structure ran).
    if (options_.long_epochs > 0) {
      const auto n =
          std::min<std::size_t>(static_cast<std::size_t>(options_.long_top), report.entries.size());
      std::vector<Job> long_jobs;
      for (std::size_t i = 0; i < n; ++i)
        long_jobs.push_back({"long", report.entries[i].mask, 0, options_.long_epochs});
      execute(comm, long_jobs, train, val, own_results, settings_json, groups, progress, "long check");
      RankTrust trust{plan.front().epochs, options_.long_epochs, {}, {}, {}, 0};
      for (std::size_t i = 0; i < n; ++i) {
        trust.masks.push_back(report.entries[i].mask);
        trust.short_acc.push_back(report.entries[i].screen_acc);
        trust.long_acc.push_back(runs_.at({report.entries[i].mask, 0, options_.long_epochs}).val_accuracy);
      }
      trust.tau = kendall_tau_b(trust.short_acc, trust.long_acc);
      report.trust = trust;
    }
    if (!own_results.empty()) save(own_results, settings_json, groups, &report);
    return report;
  }

 private:
  using RunKey = std::tuple<std::uint64_t, int, std::int64_t>;  // mask, seed index, epochs
  struct Job {
    std::string phase;
    std::uint64_t mask;
    int seed;
    std::int64_t epochs;
  };
  static RunKey key(const Job& j) { return {j.mask, j.seed, j.epochs}; }
  static RunKey key(const RunRecord& r) { return {r.mask, r.seed, r.epochs}; }

  /// One rung's structures ranked, with the paired statistics of the rung.
  struct RungRanking {
    std::vector<SearchEntry> entries;  ///< best first
    std::optional<PairedSummary> paired;
    std::optional<stats::RunTable> table;  ///< in the entries' order (with >= 2 structures)
  };

  static std::vector<std::vector<std::uint64_t>> singleton_groups(const std::vector<std::uint64_t>& masks) {
    std::vector<std::vector<std::uint64_t>> g;
    for (const auto m : masks) g.push_back({m});
    return g;
  }

  RunRecord train_one(const Job& job, const DatasetView& train, const DatasetView& val) const {
    TrainOptions o = train_;
    o.seed = train_.seed + static_cast<std::uint64_t>(job.seed);
    o.epochs = job.epochs;
    Trainer<M> trainer(model_, mask_type(job.mask), o, RunOptions{.threads = 1, .progress = false});
    const auto t0 = ProgressBar::Clock::now();
    const auto result = trainer.fit(train, val);
    const auto& last = result.epochs.back();
    return RunRecord{.phase = job.phase,
                     .mask = job.mask,
                     .seed = job.seed,
                     .epochs = job.epochs,
                     .val_accuracy = last.val.accuracy,
                     .val_loss = last.val.loss,
                     .train_loss = last.train_loss,
                     .seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count(),
                     .correct = last.val.correct};
  }

  /// Trains the jobs not in runs_ on the ranks of `comm`. One rank: one round, every run
  /// saved as it finishes. Several: rounds of two jobs per worker thread of all ranks,
  /// dealt round-robin (job i of a round to rank i mod P; static, so that no messages but
  /// collectives are needed and any Communicator does); after each round the records are
  /// gathered on every rank and rank 0 saves, so a killed search loses at most a round.
  template <Communicator C>
  void execute(C& comm, const std::vector<Job>& all, const DatasetView& train, const DatasetView& val,
               const std::filesystem::path& results, const nlohmann::json& settings_json,
               const std::vector<std::vector<std::uint64_t>>& groups, bool progress,
               const std::string& label) {
    std::vector<Job> todo;
    for (const auto& j : all)
      if (!runs_.contains(key(j))) todo.push_back(j);
    if (todo.empty()) return;
    if (progress && todo.size() < all.size())
      std::fprintf(stderr, "%s: %zu of %zu runs already in %s\n", label.c_str(), all.size() - todo.size(),
                   all.size(), results.string().c_str());
    ProgressBar bar(label, static_cast<std::int64_t>(todo.size()), 1.0, "runs", progress ? stderr : nullptr);
    std::int64_t done = 0;
    const auto p = static_cast<std::size_t>(comm.size());
    const auto r = static_cast<std::size_t>(comm.rank());
    const std::size_t round = p == 1 ? todo.size() : 2 * std::max(all_workers_, p);
    const auto t0 = ProgressBar::Clock::now();
    for (std::size_t begin = 0; begin < todo.size(); begin += round) {
      const std::size_t end = std::min(todo.size(), begin + round);
      std::vector<Job> mine;
      for (std::size_t i = begin + r; i < end; i += p) mine.push_back(todo[i]);
      std::exception_ptr failure;
      try {
        train_local(mine, train, val, results, settings_json, groups, bar, done);
      } catch (...) {
        failure = std::current_exception();
      }
      dist::raise_together(comm, failure);
      if (p > 1) {
        gather_records(comm, mine, static_cast<std::size_t>(val.size()), bar, done);
        try {
          if (!results.empty()) save(results, settings_json, groups, nullptr);
        } catch (...) {
          failure = std::current_exception();
        }
        dist::raise_together(comm, failure);  // rank 0's failed save stops every rank
      }
    }
    training_seconds_ += std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count();
  }

  /// After a round: every rank's records into runs_ on every rank (exact: dist::all_gather).
  /// A record is 9 doubles and its per-image bits, 32 to a double (integers below 2^32
  /// are exact in a double); `val_samples` sizes the bits alike on every rank.
  template <Communicator C>
  void gather_records(C& comm, const std::vector<Job>& mine, std::size_t val_samples, ProgressBar& bar,
                      std::int64_t& done) {
    static_assert(family::gates <= 53, "masks travel as doubles: at most 53 gates");
    const std::size_t words = (val_samples + 63) / 64;
    const std::size_t fields = 9 + 2 * words;
    std::vector<double> out;
    for (const auto& j : mine) {
      const auto& rec = runs_.at(key(j));
      const bool bits = rec.correct.size() == val_samples && val_samples > 0;
      out.insert(out.end(), {rec.phase == "long" ? 1.0 : 0.0, static_cast<double>(rec.mask),
                             static_cast<double>(rec.seed), rec.val_accuracy, rec.val_loss, rec.train_loss,
                             rec.seconds, static_cast<double>(j.epochs), bits ? 1.0 : 0.0});
      for (std::size_t w = 0; w < words; ++w) {
        const std::uint64_t word = bits ? rec.correct.words()[w] : 0;
        out.push_back(static_cast<double>(word & 0xffffffffU));
        out.push_back(static_cast<double>(word >> 32));
      }
    }
    const auto all = dist::all_gather(comm, std::span<const double>(out));
    for (std::size_t q = 0; q < all.size(); ++q) {
      if (static_cast<int>(q) == comm.rank()) continue;
      for (std::size_t k = 0; k + fields <= all[q].size(); k += fields) {
        const double* v = all[q].data() + k;
        RunRecord rec{.phase = v[0] == 1.0 ? "long" : "short",
                      .mask = static_cast<std::uint64_t>(v[1]),
                      .seed = static_cast<int>(v[2]),
                      .epochs = static_cast<std::int64_t>(v[7]),
                      .val_accuracy = v[3],
                      .val_loss = v[4],
                      .train_loss = v[5],
                      .seconds = v[6]};
        if (v[8] == 1.0) {
          std::vector<std::uint64_t> bits(words);
          for (std::size_t w = 0; w < words; ++w)
            bits[w] =
                static_cast<std::uint64_t>(v[9 + 2 * w]) | (static_cast<std::uint64_t>(v[10 + 2 * w]) << 32);
          rec.correct = stats::CorrectBits::from_words(std::move(bits), val_samples);
        }
        runs_[key(rec)] = rec;
        ++runs_trained_;
        epochs_trained_ += rec.epochs;
        bar.update(++done);
      }
    }
  }

  /// This rank's share of a round: trains `todo` on `workers` threads, recording each run
  /// in runs_ and, when `results` is set (rank 0), saving it at once.
  void train_local(const std::vector<Job>& todo, const DatasetView& train, const DatasetView& val,
                   const std::filesystem::path& results, const nlohmann::json& settings_json,
                   const std::vector<std::vector<std::uint64_t>>& groups, ProgressBar& bar,
                   std::int64_t& done) {
    if (todo.empty()) return;
    if (device_runner_) {  // the accelerator trains the whole list (concurrently, as it sees fit)
      std::vector<DeviceJob> jobs;
      for (const Job& j : todo) {
        TrainOptions o = train_;
        o.seed = train_.seed + static_cast<std::uint64_t>(j.seed);
        o.epochs = j.epochs;
        jobs.push_back({j.mask, o});
      }
      device_runner_(jobs, train, val, [&](std::size_t i, const TrainResult& result, double seconds) {
        const Job& j = todo.at(i);
        const auto& last = result.epochs.back();
        const RunRecord rec{.phase = j.phase,
                            .mask = j.mask,
                            .seed = j.seed,
                            .epochs = j.epochs,
                            .val_accuracy = last.val.accuracy,
                            .val_loss = last.val.loss,
                            .train_loss = last.train_loss,
                            .seconds = seconds,
                            .correct = last.val.correct};
        runs_[key(rec)] = rec;
        ++runs_trained_;
        epochs_trained_ += j.epochs;
        if (!results.empty()) save(results, settings_json, groups, nullptr);
        bar.update(++done, fmt::format("last {} {:.2f}%", family::to_string(mask_type(rec.mask)),
                                       100 * rec.val_accuracy));
      });
      return;
    }
    std::atomic<std::size_t> next{0};
    std::mutex mutex;
    std::exception_ptr failure;
    auto worker = [&] {
      for (std::size_t i = next++; i < todo.size(); i = next++) {
        {
          const std::lock_guard lock(mutex);
          if (failure) return;
        }
        try {
          const RunRecord rec = train_one(todo[i], train, val);
          const std::lock_guard lock(mutex);
          runs_[key(rec)] = rec;
          ++runs_trained_;
          epochs_trained_ += todo[i].epochs;
          if (!results.empty()) save(results, settings_json, groups, nullptr);
          bar.update(++done, fmt::format("last {} {:.2f}%", family::to_string(mask_type(rec.mask)),
                                         100 * rec.val_accuracy));
        } catch (...) {
          const std::lock_guard lock(mutex);
          if (!failure) failure = std::current_exception();
          return;
        }
      }
    };
    const int n = std::max(1, std::min<int>(options_.workers, static_cast<int>(todo.size())));
    {
      std::vector<std::jthread> threads;
      for (int t = 1; t < n; ++t) threads.emplace_back(worker);
      worker();
    }
    if (failure) std::rethrow_exception(failure);
  }

  /// The structures `alive` of rung `k`, each with its mean (and std) over the rung's
  /// seeds at the rung's epochs, ranked (ties: lower loss, then lower mask), with their
  /// paired comparisons with the rung's leader.
  RungRanking rank_rung(const std::vector<std::uint64_t>& alive, const Rung& rung, int k,
                        const std::map<std::uint64_t, std::vector<std::uint64_t>>& equivalents) const {
    RungRanking out;
    for (const auto m : alive) {
      SearchEntry e;
      e.mask = m;
      e.structure = family::to_string(mask_type(m));
      e.equivalent = equivalents.at(m);
      e.runs = rung.seeds;
      e.epochs = rung.epochs;
      e.rung = k;
      std::vector<double> acc, loss;
      for (int r = 0; r < rung.seeds; ++r) {
        const auto& rec = runs_.at({m, r, rung.epochs});
        acc.push_back(rec.val_accuracy);
        loss.push_back(rec.val_loss);
      }
      std::tie(e.acc_mean, e.acc_std) = mean_std(acc);
      std::tie(e.loss_mean, e.loss_std) = mean_std(loss);
      e.cost = M::cost(model_, mask_type(m), train_.batch);
      out.entries.push_back(e);
    }
    std::sort(out.entries.begin(), out.entries.end(), [](const SearchEntry& a, const SearchEntry& b) {
      return std::tie(b.acc_mean, a.loss_mean, a.mask) < std::tie(a.acc_mean, b.loss_mean, b.mask);
    });
    if (out.entries.size() < 2) return out;
    std::vector<std::uint64_t> order;
    for (const auto& e : out.entries) order.push_back(e.mask);
    stats::RunTable table(order, rung.seeds);
    for (std::size_t s = 0; s < order.size(); ++s)
      for (int r = 0; r < rung.seeds; ++r) {
        const RunRecord& rec = runs_.at({order[s], r, rung.epochs});
        if (rec.correct.size() > 0)
          table.set(s, r, rec.correct, rec.val_loss);
        else  // a run of the CUDA runner
          table.set(s, r, rec.val_accuracy, rec.val_loss);
      }
    out.paired = paired_statistics(table, out.entries);
    out.table = std::move(table);
    return out;
  }

  /// The paired comparisons with the leader and the top group (stats/paired.hpp), written
  /// into `entries` (in the table's order). Runs pair by seed and, where every run recorded
  /// them, by validation image. Nothing without the images and with one seed.
  std::optional<PairedSummary> paired_statistics(const stats::RunTable& table,
                                                 std::vector<SearchEntry>& entries) const {
    if (!table.has_correct() && table.seeds() < 2) return std::nullopt;
    const stats::PairedOptions po{.seed = derive_seed(train_.seed, seed_domain::resample, 0)};
    const stats::PairedComparison c = stats::top_group(table, po);
    PairedSummary summary;
    summary.test = std::string(stats::to_string(c.test));
    summary.interval = std::string(stats::to_string(c.interval));
    summary.alpha = c.alpha;
    summary.level = c.level;
    summary.seeds = c.seeds;
    summary.images = static_cast<std::int64_t>(c.images);
    summary.resamples = c.resamples;
    summary.top_group = static_cast<std::int64_t>(c.top_group.size());
    summary.seed_tau = stats::seed_rank_agreement(table).mean_tau;
    for (std::size_t s = 0; s < entries.size(); ++s) {
      const stats::PairedDifference& row = c.rows[s];
      SearchEntry& e = entries[s];
      e.diff = row.difference;
      e.diff_lo = row.lo;
      e.diff_hi = row.hi;
      e.p_adjusted = row.p_adjusted;
      e.top_group = row.in_top_group;
    }
    return summary;
  }

  /// The gate-effect model fitted to the structures of `table` (one rung's budget). It
  /// needs more structures than coefficients (1 + gates); a degenerate design (every
  /// accuracy equal, say) is said in the notes, not hidden.
  std::optional<GateEffectSummary> gate_effects(const stats::RunTable& table) const {
    if (static_cast<int>(table.structures()) <= family::gates + 1) return std::nullopt;
    GateEffectSummary g;
    try {
      const stats::GateEffects fit = stats::fit_gate_effects(table, family::gates);
      for (const auto& t : fit.terms())
        if (t.kind != stats::GateTerm::Kind::intercept) {
          std::string name = family::gate_name(t.gate);
          if (t.kind == stats::GateTerm::Kind::interaction) name += " x " + family::gate_name(t.other);
          g.terms.push_back({name, t.estimate, t.lo, t.hi, t.p});
        }
      g.r2 = fit.r2();
      g.adjusted_r2 = fit.adjusted_r2();
      g.r2_main = fit.r2_main();
      g.residual_df = fit.residual_df();
      g.level = fit.level();
      g.notes = fit.notes();
    } catch (const InputError& e) {
      g.notes = {std::string("not fitted: ") + e.what()};
    }
    return g;
  }

  void save(const std::filesystem::path& path, const nlohmann::json& settings_json,
            const std::vector<std::vector<std::uint64_t>>& groups, const SearchReport* report) const {
    nlohmann::json j = settings_json;
    j["groups"] = groups;
    j["runs"] = nlohmann::json::array();
    for (const auto& [key, rec] : runs_) j["runs"].push_back(rec);  // map order: phase, mask, seed
    j["complete"] = report != nullptr;
    if (report != nullptr) j["report"] = to_json(*report);
    write_file_atomically(path, j.dump(1) + "\n");
  }

  /// The file's text, or nothing when it is not a regular file or cannot be opened.
  static std::optional<std::string> read_text(const std::filesystem::path& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;  // a FIFO would block
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream text;
    text << in.rdbuf();
    return std::move(text).str();
  }

  /// `text`: the results file's contents as rank 0 read them (nothing: unreadable). Every
  /// run record is checked (exp/results_file.hpp) before any is kept.
  void load_runs(const std::filesystem::path& path, const std::optional<std::string>& text,
                 const nlohmann::json& settings_json, std::size_t val_samples) {
    const std::string where = fmt::format("cannot resume: results file '{}'", path.string());
    if (!text) throw InputError(where + " cannot be read");
    nlohmann::json j;
    try {
      j = parse_json_limited(*text, where);
    } catch (const nlohmann::json::parse_error& e) {
      throw InputError(
          fmt::format("{} is not a search results file (invalid JSON at byte {})", where, e.byte));
    }
    if (!j.is_object()) throw InputError(where + " is not a search results file (not a JSON object)");
    for (const auto& [key, value] : settings_json.items()) {
      if (!j.contains(key)) throw InputError(fmt::format("{} has no '{}'", where, key));
      if (j.at(key) != value)
        throw InputError(fmt::format("{} was written with other {} settings ({})", where, key,
                                     describe_difference(j.at(key), value)));
    }
    if (!j.contains("runs")) throw InputError(where + " has no 'runs'");
    for (const auto& rec :
         read_run_records(j.at("runs"), where, mask_type::count, options_.max_seeds(), val_samples))
      runs_[key(rec)] = rec;
  }

  /// "lr 0.002 there, 0.01 now": the fields of two settings objects that differ (the
  /// values from the file echoed short: json_echo).
  static std::string describe_difference(const nlohmann::json& there, const nlohmann::json& now) {
    if (!there.is_object() || !now.is_object())
      return fmt::format("{} there, {} now", json_echo(there, 40), json_echo(now, 40));
    std::string out;
    for (const auto& [field, value] : now.items()) {
      if (there.contains(field) && there.at(field) == value) continue;
      const auto old = there.contains(field) ? json_echo(there.at(field)) : std::string("missing");
      out += fmt::format("{}{} {} there, {} now", out.empty() ? "" : "; ", field, old, json_echo(value));
    }
    return out.empty() ? "extra fields there" : out;
  }

  config_type model_;
  TrainOptions train_;
  SearchOptions options_;
  std::map<RunKey, RunRecord> runs_;
  std::size_t all_workers_ = 1;      ///< worker threads of all ranks together (sizes the rounds)
  DeviceJobRunner device_runner_{};  ///< empty: train on CPU threads
  std::int64_t runs_trained_ = 0;
  std::int64_t epochs_trained_ = 0;
  double training_seconds_ = 0;
};

}  // namespace additive
