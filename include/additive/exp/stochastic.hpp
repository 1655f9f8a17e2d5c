// Experiment 3, stochastic gating: one shared weight set trains with structures drawn at
// random (each gate kept with probability p, per batch or per sample, optionally on a
// linear schedule); afterwards every structure (or a seeded sample) is evaluated on the
// shared weights. The report sets the distribution of their accuracies next to the dense
// structure trained alone with the same budget and seed, and, given a structure search's
// results file, next to each structure trained alone by the search (Kendall's tau of the
// two rankings). Outputs: a terminal summary, stochastic.json, stochastic.csv and
// stochastic.svg, each written atomically. See docs/stochastic-gating.md.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/data/dataset.hpp"
#include "additive/exp/evaluate_all.hpp"
#include "additive/exp/progress.hpp"
#include "additive/exp/report.hpp"
#include "additive/exp/results_file.hpp"
#include "additive/exp/stats.hpp"
#include "additive/exp/train.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/io/json.hpp"
#include "additive/report/format.hpp"
#include "additive/report/histogram.hpp"
#include "additive/report/svg.hpp"
#include "additive/report/table.hpp"

namespace additive {

/// What a stochastic-gating run does besides training (the gating itself is GatingOptions).
struct StochasticOptions {
  GatingOptions gating{};
  std::int64_t sample = -1;  ///< structures evaluated: -1 all of them, else a seeded sample of this many
  std::uint64_t sample_seed = 0;
  bool dense_baseline = true;  ///< also train the dense structure alone (same budget and seed)
  int threads = 1;
  bool progress = true;

  void validate(std::uint64_t structures) const {
    gating.validate();
    if (sample == 0 || sample < -1) throw InputError("stochastic: the structure sample must be >= 1");
    if (sample > 0 && static_cast<std::uint64_t>(sample) > structures)
      throw InputError(
          fmt::format("stochastic: sample of {} structures from a family of {}", sample, structures));
    if (sample < 0 && structures > (std::uint64_t{1} << 16))
      throw InputError(fmt::format(
          "stochastic: {} structures are too many to evaluate all; give a sample size", structures));
    if (threads < 1) throw InputError("stochastic: threads must be >= 1");
  }
};

/// One structure evaluated on the shared weights.
struct StochasticEntry {
  std::uint64_t mask = 0;
  std::string structure;
  double accuracy = 0;
  double loss = 0;
  std::optional<double> search_accuracy{};  ///< the search's accuracy of this structure trained alone
};

/// Min, quartiles (linear interpolation between order statistics), max and mean.
struct Distribution {
  double min = 0, q1 = 0, median = 0, q3 = 0, max = 0, mean = 0;
  std::int64_t count = 0;
};

inline Distribution distribution(std::vector<double> v) {
  Distribution d;
  if (v.empty()) return d;
  std::sort(v.begin(), v.end());
  const auto q = [&](double f) {
    const double pos = f * double(v.size() - 1);
    const auto i = static_cast<std::size_t>(std::floor(pos));
    const double frac = pos - double(i);
    return i + 1 < v.size() ? v[i] + frac * (v[i + 1] - v[i]) : v[i];
  };
  d.min = v.front();
  d.max = v.back();
  d.q1 = q(0.25);
  d.median = q(0.5);
  d.q3 = q(0.75);
  double sum = 0;
  for (const double x : v) sum += x;
  d.mean = sum / double(v.size());
  d.count = static_cast<std::int64_t>(v.size());
  return d;
}

/// The comparison with a structure search (its results file).
struct SearchComparison {
  std::string path;
  std::int64_t matched = 0;  ///< structures of this run the search trained (directly or as an equivalent)
  std::int64_t ranked = 0;   ///< distinct functions in the rank correlation (the search's representatives)
  double tau = 0;            ///< Kendall's tau-b, gated-model accuracy vs trained-alone accuracy
};

struct StochasticReport {
  std::string family;
  GatingOptions gating{};
  TrainOptions train{};
  std::int64_t candidates = 0;           ///< structures in the family
  std::vector<StochasticEntry> entries;  ///< evaluated structures, in mask order
  Distribution accuracy{};               ///< over entries
  std::uint64_t dense_mask = 0;
  EvalResult dense_gated{};                 ///< the dense structure of the gated model
  std::optional<EvalResult> dense_alone{};  ///< the dense structure trained alone
  std::vector<EpochRecord> epochs;          ///< of the gated run (validation: its dense structure)
  double train_seconds = 0, eval_seconds = 0, dense_seconds = 0;
  double samples_per_second = 0;  ///< gated training throughput
  std::optional<SearchComparison> search{};
};

/// The accuracy of every mask of a finished structure search for family `family` (of
/// `structures` = 2^n structures): each representative's mean accuracy, and the same for
/// the masks equivalent to it. `representatives` receives the representatives' masks.
/// Every report entry and run record is checked (exp/results_file.hpp); one clear
/// InputError naming the file and the field otherwise.
inline std::map<std::uint64_t, double> load_search_accuracies(
    const std::filesystem::path& path, const std::string& family, std::uint64_t structures,
    std::vector<std::uint64_t>* representatives = nullptr) {
  const auto name = path.string();
  const auto where = fmt::format("search results '{}'", name);
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    throw InputError(where + " is not a regular file");
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("search results '{}' cannot be read", name));
  nlohmann::json j;
  try {
    j = parse_json_limited(in, where);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(fmt::format("search results '{}' is not a search results file (invalid JSON at byte {})",
                                 name, e.byte));
  }
  if (!j.is_object() || !j.contains("format") || j.at("format") != "additive-search-1")
    throw InputError(fmt::format(
        "search results '{}' is not a search results file (no format 'additive-search-1')", name));
  if (!j.contains("family") || !j.at("family").is_string())
    throw InputError(fmt::format("{}: 'family' is missing or not a string", where));
  const auto there = j.at("family").get<std::string>();
  if (there != family)
    throw InputError(fmt::format("search results '{}' are for family '{}', this run uses '{}'", name,
                                 detail::printable(there, echo_limit), family));
  if (!j.contains("complete") || j.at("complete") != true || !j.contains("report"))
    throw InputError(
        fmt::format("search results '{}' are incomplete (finish the search with --resume)", name));
  if (j.contains("runs")) {
    // The seed count the search ran with, when the file says (else any seed index).
    int seeds = std::numeric_limits<int>::max();
    if (j.contains("search") && j.at("search").is_object() && j.at("search").contains("seeds")) {
      const auto& r = j.at("search").at("seeds");
      if (!detail::is_index(r) || r.get<std::uint64_t>() < 1 || r.get<std::uint64_t>() > 1000)
        throw InputError(fmt::format("{}: 'search' has 'seeds' {}, expected an integer in [1, 1000]", where,
                                     json_echo(r)));
      seeds = static_cast<int>(r.get<std::uint64_t>());
      // A race sets the seeds of each rung: its largest one bounds the seed indices.
      if (j.at("search").contains("race") && j.at("search").at("race").is_array())
        for (const auto& rung : j.at("search").at("race"))
          if (rung.is_array() && !rung.empty() && detail::is_index(rung[0]))
            seeds = static_cast<int>(
                std::min<std::uint64_t>(1000, std::max<std::uint64_t>(seeds, rung[0].get<std::uint64_t>())));
    }
    (void)read_run_records(j.at("runs"), where, structures, seeds, std::nullopt);
  }
  return read_report_accuracies(j.at("report"), where, structures, representatives);
}

/// Stochastic gating of model M (for example cpu::MlpModel<F, float>): one shared weight
/// set trained with random structures, then every structure evaluated on it.
template <HostModel M>
class StochasticGating {
 public:
  using model_type = M;
  using family = typename M::family;
  using mask_type = typename M::mask_type;
  using config_type = typename M::config_type;

  StochasticGating(const config_type& model, const TrainOptions& train, const StochasticOptions& options)
      : model_(model), train_(train), options_(options) {
    (void)M(model_, 1);  // validates the widths (an InputError names what is wrong)
    train_.validate();
    options_.validate(mask_type::count);
  }

  /// The structures evaluated: all, or a seeded sample (with the dense one), in mask order.
  [[nodiscard]] std::vector<std::uint64_t> structures() const {
    return structure_sample(mask_type::count, options_.sample, options_.sample_seed);
  }

  /// Trains the shared weights with gating, evaluates the structures, and (optionally)
  /// trains the dense structure alone and reads a search's results for comparison.
  StochasticReport run(const DatasetView& train, const DatasetView& val,
                       const std::filesystem::path& search_results = {}) {
    StochasticReport r;
    r.family = family::describe();
    r.gating = options_.gating;
    r.train = train_;
    r.candidates = static_cast<std::int64_t>(mask_type::count);
    r.dense_mask = mask_type::full_bits;
    // Read the search first: a bad file is an error before minutes of training.
    std::map<std::uint64_t, double> search_acc;
    std::vector<std::uint64_t> representatives;
    if (!search_results.empty())
      search_acc = load_search_accuracies(search_results, r.family, mask_type::count, &representatives);

    const RunOptions run{.threads = options_.threads, .progress = options_.progress};
    Trainer<M> gated(model_, mask_type::all(), train_, run, options_.gating);
    const auto fit = gated.fit(train, val);
    r.epochs = fit.epochs;
    r.samples_per_second = fit.samples_per_second;
    for (const auto& e : fit.epochs) r.train_seconds += e.seconds;

    auto masks = structures();
    const bool dense_listed = std::binary_search(masks.begin(), masks.end(), r.dense_mask);
    if (!dense_listed) masks.push_back(r.dense_mask);
    const auto t0 = ProgressBar::Clock::now();
    const auto evals = evaluate_structures<M>(
        model_, std::span<const typename M::scalar_type>(gated.params()), val, masks,
        EvalAllOptions{.threads = options_.threads, .show_progress = options_.progress});
    r.eval_seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - t0).count();
    for (const auto& e : evals) {
      if (e.mask == r.dense_mask)
        r.dense_gated = EvalResult{.loss = e.loss, .accuracy = e.accuracy, .samples = val.size()};
      if (e.mask == r.dense_mask && !dense_listed) continue;
      StochasticEntry entry{e.mask, family::to_string(mask_type(e.mask)), e.accuracy, e.loss, std::nullopt};
      if (const auto it = search_acc.find(e.mask); it != search_acc.end()) entry.search_accuracy = it->second;
      r.entries.push_back(entry);
    }
    std::vector<double> acc;
    for (const auto& e : r.entries) acc.push_back(e.accuracy);
    r.accuracy = distribution(acc);

    if (!search_results.empty()) {
      SearchComparison c;
      c.path = search_results.string();
      std::vector<double> a, b;
      std::map<std::uint64_t, double> gated_acc;
      for (const auto& e : r.entries) {
        gated_acc[e.mask] = e.accuracy;
        if (e.search_accuracy) ++c.matched;
      }
      for (const auto m : representatives)
        if (const auto it = gated_acc.find(m); it != gated_acc.end()) {
          a.push_back(it->second);
          b.push_back(search_acc.at(m));
        }
      c.ranked = static_cast<std::int64_t>(a.size());
      c.tau = kendall_tau_b(a, b);
      r.search = c;
    }

    if (options_.dense_baseline) {
      const auto t1 = ProgressBar::Clock::now();
      Trainer<M> dense(model_, mask_type::all(), train_, run);
      const auto d = dense.fit(train, val);
      r.dense_alone = d.epochs.back().val;
      r.dense_seconds = std::chrono::duration<double>(ProgressBar::Clock::now() - t1).count();
    }
    return r;
  }

 private:
  config_type model_;
  TrainOptions train_;
  StochasticOptions options_;
};

// ---------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------

inline void to_json(nlohmann::json& j, const Distribution& d) {
  j = nlohmann::json{{"count", d.count}, {"min", d.min}, {"q1", d.q1},    {"median", d.median},
                     {"q3", d.q3},       {"max", d.max}, {"mean", d.mean}};
}

inline nlohmann::json stochastic_json(const StochasticReport& r) {
  auto eval = [](const EvalResult& e) { return nlohmann::json{{"accuracy", e.accuracy}, {"loss", e.loss}}; };
  nlohmann::json j{
      {"format", "additive-stochastic-1"},
      {"family", r.family},
      {"gating", r.gating},
      {"train", r.train},
      {"candidates", r.candidates},
      {"evaluated", r.entries.size()},
      {"accuracy", r.accuracy},
      {"dense_mask", report::mask_hex(r.dense_mask)},
      {"dense_gated", eval(r.dense_gated)},
      {"dense_alone", r.dense_alone ? eval(*r.dense_alone) : nlohmann::json(nullptr)},
      {"search", nullptr},
      {"seconds", {{"train", r.train_seconds}, {"evaluate", r.eval_seconds}, {"dense", r.dense_seconds}}},
      {"samples_per_second", r.samples_per_second}};
  j["epochs"] = nlohmann::json::array();
  for (const auto& e : r.epochs)
    j["epochs"].push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss}, {"val", eval(e.val)}});
  if (r.search)
    j["search"] = {{"path", r.search->path},
                   {"matched", r.search->matched},
                   {"ranked", r.search->ranked},
                   {"tau", r.search->tau}};
  j["structures"] = nlohmann::json::array();
  for (const auto& e : r.entries)
    j["structures"].push_back({{"mask", e.mask},
                               {"mask_hex", report::mask_hex(e.mask)},
                               {"structure", e.structure},
                               {"accuracy", e.accuracy},
                               {"loss", e.loss},
                               {"search_accuracy", e.search_accuracy ? nlohmann::json(*e.search_accuracy)
                                                                     : nlohmann::json(nullptr)}});
  return j;
}

/// One row per structure: mask, structure, accuracy, loss, search accuracy (empty if none).
inline std::string stochastic_csv(const StochasticReport& r) {
  std::string o = "mask,structure,accuracy,loss,search_accuracy\n";
  for (const auto& e : r.entries)
    o +=
        fmt::format("{},{},{},{},{}\n", report::mask_hex(e.mask), report::csv_quoted(e.structure), e.accuracy,
                    e.loss, e.search_accuracy ? fmt::format("{}", *e.search_accuracy) : std::string());
  return o;
}

inline std::string stochastic_text(const StochasticReport& r) {
  const auto pct = [](double v) { return fmt::format("{:.2f}%", 100 * v); };
  const auto& a = r.accuracy;
  std::string o = fmt::format(
      "accuracy of {} structures on the shared weights:\n  min {}  q1 {}  median {}  q3 {}  max {}  mean "
      "{}\n",
      a.count, pct(a.min), pct(a.q1), pct(a.median), pct(a.q3), pct(a.max), pct(a.mean));
  o += fmt::format("dense structure of the gated model: {} (loss {:.4f})\n", pct(r.dense_gated.accuracy),
                   r.dense_gated.loss);
  if (r.dense_alone)
    o += fmt::format("dense structure trained alone:      {} (loss {:.4f})\n", pct(r.dense_alone->accuracy),
                     r.dense_alone->loss);
  std::vector<const StochasticEntry*> best;
  for (const auto& e : r.entries) best.push_back(&e);
  std::stable_sort(best.begin(), best.end(), [](const StochasticEntry* x, const StochasticEntry* y) {
    return x->accuracy > y->accuracy;
  });
  o += "best structures on the shared weights:\n";
  for (std::size_t i = 0; i < std::min<std::size_t>(5, best.size()); ++i)
    o += fmt::format(
        "  {:>6}  {}  {}{}\n", report::mask_hex(best[i]->mask), pct(best[i]->accuracy), best[i]->structure,
        best[i]->search_accuracy ? fmt::format("  (alone {})", pct(*best[i]->search_accuracy)) : "");
  if (r.search)
    o += fmt::format(
        "search results {}: {} of {} structures matched; Kendall's tau (gated vs alone) over {} distinct "
        "functions: {:.3f}\n",
        r.search->path, r.search->matched, r.entries.size(), r.search->ranked, r.search->tau);
  return o;
}

/// Histogram of the accuracies on the shared weights, the dense structure (gated and
/// alone) marked; with search results, a second panel: gated vs trained-alone accuracy.
inline std::string stochastic_svg(const StochasticReport& r) {
  using report::colour_front, report::colour_plain;
  const bool scatter = r.search.has_value();
  const double y0 = 60, y1 = 370;
  report::SvgWriter svg(scatter ? 1000 : 560, 440);

  std::vector<double> acc;  // in %
  for (const auto& e : r.entries) acc.push_back(100 * e.accuracy);
  double lo = r.accuracy.min * 100, hi = r.accuracy.max * 100;
  lo = std::min(lo, 100 * r.dense_gated.accuracy);
  hi = std::max(hi, 100 * r.dense_gated.accuracy);
  if (r.dense_alone) {
    lo = std::min(lo, 100 * r.dense_alone->accuracy);
    hi = std::max(hi, 100 * r.dense_alone->accuracy);
  }
  {  // ---- left panel: histogram ----
    const report::PlotArea area{60, 520, y0, y1};
    svg.panel_title(area, "accuracy of every structure on the shared weights");
    const auto xs = report::draw_histogram(svg, acc, report::percent_ticks(lo, hi, 0.05, 0.05), area);
    svg.frame(area);
    const double gated = xs(100 * r.dense_gated.accuracy);
    svg.line(gated, y0, gated, y1, colour_front, R"(stroke-dasharray="4 3" stroke-width="2")");
    svg.text(area.x0 + 8, y0 - 8, "dashed: dense structure of the gated model",
             fmt::format("fill=\"{}\"", colour_front));
    if (r.dense_alone) {
      const double x = xs(100 * r.dense_alone->accuracy);
      svg.line(x, y0, x, y1, "#222222", R"(stroke-width="2")");
      svg.text(area.x1, y0 - 8, "solid: dense trained alone", R"(text-anchor="end")");
    }
    svg.text(area.centre_x(), y1 + 36, "validation accuracy (%)", R"(text-anchor="middle")");
    svg.text(18, area.centre_y(), "structures", "text-anchor=\"middle\" transform=\"rotate(-90 18 215)\"");
  }
  if (scatter) {  // ---- right panel: gated vs trained alone ----
    const report::PlotArea area{600, 970, y0, y1};
    svg.panel_title(area, "shared weights vs trained alone");
    std::vector<std::pair<double, double>> pts;
    double slo = 100, shi = 0;
    for (const auto& e : r.entries)
      if (e.search_accuracy) {
        pts.emplace_back(100 * *e.search_accuracy, 100 * e.accuracy);
        slo = std::min(slo, pts.back().first);
        shi = std::max(shi, pts.back().first);
      }
    if (pts.empty()) {
      svg.empty_note(area, "no structure in common");
    } else {
      const auto xt = report::percent_ticks(slo, shi, 0.05, 0.05);
      const auto yt = report::percent_ticks(r.accuracy.min * 100, r.accuracy.max * 100, 0.05, 0.05);
      const report::LinearScale xs{xt.lo, xt.hi, area.x0, area.x1}, ys{yt.lo, yt.hi, y1, y0};
      svg.y_grid(area, yt, ys, yt.decimals);
      svg.x_labels(area, xt, xs);
      svg.out("<g id=\"scatter\">\n");
      for (const auto& [sx, sy] : pts)
        svg.out("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.2\"/>\n",
                report::circle_path(xs(sx), ys(sy), 3.5), colour_plain);
      svg.out("</g>\n");
      svg.frame(area);
      svg.text(area.centre_x(), y1 + 36, "accuracy trained alone, from the search (%)",
               R"(text-anchor="middle")");
      svg.text(area.x0 - 40, area.centre_y(), "on the shared weights (%)",
               "text-anchor=\"middle\" transform=\"rotate(-90 560 215)\"");
      svg.text(area.x0 + 8, y0 - 8,
               fmt::format("Kendall's tau {:.3f} over {} functions", r.search->tau, r.search->ranked));
    }
  }
  svg.footer(fmt::format("{} \u00b7 p {}{}{} \u00b7 {} of {} structures evaluated", r.family, r.gating.p,
                         r.gating.p_end ? fmt::format(" \u2192 {}", *r.gating.p_end) : std::string(),
                         r.gating.per_sample ? " per sample" : " per batch", r.entries.size(), r.candidates));
  return std::move(svg).finish();
}

/// Writes stochastic.json, stochastic.csv and stochastic.svg into `dir`, each atomically.
inline void write_stochastic_outputs(const std::filesystem::path& dir, const StochasticReport& r) {
  write_file_atomically(dir / "stochastic.json", std::string_view(stochastic_json(r).dump(1) + "\n"));
  write_file_atomically(dir / "stochastic.csv", std::string_view(stochastic_csv(r)));
  write_file_atomically(dir / "stochastic.svg", std::string_view(stochastic_svg(r)));
}

}  // namespace additive
