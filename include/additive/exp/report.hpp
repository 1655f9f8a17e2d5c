// The outputs of a structure search (exp/search_types.hpp): a terminal leaderboard, JSON
// conversions of the records (the engine writes results.json with them and reloads raw
// runs on resume), a CSV, the top-K list that co-training reads, and one self-contained
// SVG figure. Every file is written atomically (io/atomic_file.hpp). All output is
// deterministic: the same report gives byte-identical text.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/exp/search_types.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/nn/cost.hpp"
#include "additive/report/format.hpp"
#include "additive/report/svg.hpp"
#include "additive/report/table.hpp"

namespace additive {

// ---------------------------------------------------------------------------------------
// Pareto front
// ---------------------------------------------------------------------------------------

/// Sets `pareto` on the entries no other entry dominates in (higher screen_accuracy(), the
/// accuracy at the budget every entry ran with; lower cost.comm_bytes): o dominates e when o.acc >= e.acc and
/// o.comm <= e.comm with at least one strict. Equal entries do not dominate each other (both are on the
/// front). Entries with a NaN accuracy or communication are never on the front.
inline void mark_pareto(std::vector<SearchEntry>& entries) {
  auto valid = [](const SearchEntry& e) {
    return !std::isnan(screen_accuracy(e)) && !std::isnan(e.cost.comm_bytes);
  };
  for (auto& e : entries) {
    const double a = screen_accuracy(e);
    e.pareto = valid(e) && std::none_of(entries.begin(), entries.end(), [&](const SearchEntry& o) {
                 const double b = screen_accuracy(o);
                 return valid(o) && b >= a && o.cost.comm_bytes <= e.cost.comm_bytes &&
                        (b > a || o.cost.comm_bytes < e.cost.comm_bytes);
               });
  }
}

// ---------------------------------------------------------------------------------------
// Terminal leaderboard
// ---------------------------------------------------------------------------------------

/// The best `rows` entries as an aligned table: a summary line, the header, one row per
/// entry, a footer saying what the marks mean, and the rank-trust line when there is one.
inline std::string leaderboard_text(const SearchReport& report, std::size_t rows) {
  std::string out = fmt::format("{}: {} candidate masks, {} distinct functions trained\n", report.family,
                                report.candidates, report.trained);
  const std::size_t shown = std::min(rows, report.entries.size());
  if (report.entries.empty()) out += "no structures ranked\n";

  if (shown > 0) {
    // The accuracy cell aligns its mean and its std in two sub-columns.
    std::size_t mean_w = 0, std_w = 0;
    for (std::size_t i = 0; i < shown; ++i) {
      const SearchEntry& e = report.entries[i];
      mean_w = std::max(mean_w, fmt::format("{:.2f}", 100 * e.acc_mean).size());
      if (e.runs > 1) std_w = std::max(std_w, fmt::format("{:.2f}", 100 * e.acc_std).size());
    }
    const bool paired = report.paired.has_value();
    const bool raced = report.rungs.size() > 1;
    std::vector<report::TableColumn> columns = {
        {"rank", true}, {"mask", false}, {"structure", false}, {"equiv", true}, {"val acc %", true}};
    if (raced) columns.push_back({"seeds x epochs", true});
    if (paired) {
      columns.push_back({raced ? "vs its rung's #1, points" : "vs #1, points", true});
      columns.push_back({"top", false});
    }
    columns.insert(columns.end(), {{"val loss", true},
                                   {"params", true},
                                   {"MFLOP/sample", true},
                                   {"comm/step", true},
                                   {"comm µs", true},
                                   {"front", false}});
    std::vector<std::vector<std::string>> cells;
    for (std::size_t i = 0; i < shown; ++i) {
      const SearchEntry& e = report.entries[i];
      std::string acc = fmt::format("{:>{}.2f}", 100 * e.acc_mean, mean_w);
      if (e.runs > 1)
        acc += fmt::format(" ± {:>{}.2f}", 100 * e.acc_std, std_w);
      else if (std_w > 0)
        acc += std::string(std_w + 3, ' ');
      std::vector<std::string> row = {
          std::to_string(e.rank), report::mask_hex(e.mask), e.structure,
          e.equivalent.empty() ? std::string() : fmt::format("+{}", e.equivalent.size()), acc};
      if (raced) row.push_back(fmt::format("{}x{}", e.runs, e.epochs));
      if (paired) {
        row.push_back(i == 0 ? std::string("leader")
                             : fmt::format("{:+.2f} [{:+.2f}, {:+.2f}]", 100 * e.diff, 100 * e.diff_lo,
                                           100 * e.diff_hi));
        row.push_back(e.top_group ? "=" : e.cut ? "cut" : "");
      }
      row.insert(
          row.end(),
          {fmt::format("{:.4f}", e.loss_mean), report::human_count(double(e.cost.active_params)),
           fmt::format("{:.2f}", e.cost.flops_per_sample / 1e6), report::human_bytes(e.cost.comm_bytes),
           fmt::format("{:.1f}", e.cost.comm_seconds * 1e6), e.pareto ? "*" : ""});
      cells.push_back(std::move(row));
    }
    out += report::render_table(columns, cells);
    out +=
        std::string(
            raced
                ? "front *: on the Pareto front of (max val accuracy at the first rung, min communication)\n"
                : "front *: on the Pareto front of (max val accuracy, min communication)\n") +
        "equiv +n: n more masks compute the same function (not trained)\n"
        "val acc %: mean ± sample std over the seeds; comm: bytes each device sends per training step, "
        "and their alpha-beta time\n";
    if (paired) {
      const PairedSummary& p = *report.paired;
      const auto last_rung =
          raced ? static_cast<std::size_t>(report.rungs.back().structures) : report.entries.size();
      out += fmt::format(
          "vs #1: mean accuracy difference to the leader, paired on the same seeds{}, with its {:.0f}% "
          "interval "
          "({})\n",
          p.images > 0 ? " and validation images" : "", 100 * p.level, p.interval);
      out += fmt::format(
          "top =: the {} of {} structures{} that cannot be told apart from #1 (Holm-adjusted p >= {:g} over "
          "{} "
          "comparisons; {}{})\n",
          p.top_group, last_rung, raced ? " of the last rung" : "", p.alpha, last_rung - 1, p.test,
          p.resamples > 0 ? fmt::format(", {} resamples", p.resamples) : std::string());
      if (p.images > 0)
        out += fmt::format("resolution: {} validation images x {} seed{}: one image is {:.3f} points{}\n",
                           p.images, p.seeds, p.seeds == 1 ? "" : "s", 100.0 / double(p.images),
                           p.seeds == 1
                               ? "; with one seed the intervals count the validation sample's noise, not "
                                 "training noise (--seeds 3 counts both)"
                               : "");
      if (p.seeds > 1)
        out += fmt::format("Kendall's tau between the seeds' rankings (mean over pairs{}): {:.3f}\n",
                           raced ? ", last rung" : "", p.seed_tau);
    }
    if (raced) {
      out += fmt::format(
          "race (successive halving): each rung passes on its top group, at most 1/{} of its structures "
          "(the best by mean; the others of the top group are marked cut):\n",
          report.eta);
      for (std::size_t r = 0; r < report.rungs.size(); ++r) {
        const RungSummary& g = report.rungs[r];
        out +=
            fmt::format("  rung {}: {} structures x {} seed{} x {} epoch{}: top group {}{}{}\n", r + 1,
                        g.structures, g.seeds, g.seeds == 1 ? "" : "s", g.epochs, g.epochs == 1 ? "" : "s",
                        g.top_group, r + 1 < report.rungs.size() ? fmt::format(", {} went on", g.kept) : "",
                        std::isfinite(g.seed_tau) ? fmt::format(", seed tau {:.3f}", g.seed_tau) : "");
      }
      if (!report.stopped.empty()) out += "  " + report.stopped + "\n";
      out += "val acc %, vs #1: at the budget of the structure's last rung (seeds x epochs)\n";
    }
    if (shown < report.entries.size())
      out += fmt::format("({} more structures not shown)\n", report.entries.size() - shown);
  }
  if (report.gate_effects) {
    const GateEffectSummary& g = *report.gate_effects;
    if (g.terms.empty()) {
      for (const auto& n : g.notes) out += "gate effects: " + n + "\n";
    } else {
      out += fmt::format(
          "gate effects on val accuracy{} (points, {:.0f}% interval; explain {:.0f}% of the variance between "
          "structures, main effects alone {:.0f}%):\n",
          report.rungs.size() > 1
              ? fmt::format(" at {}x{}, the first rung", report.rungs[0].seeds, report.rungs[0].epochs)
              : std::string(),
          100 * g.level, 100 * g.r2, 100 * g.r2_main);
      std::size_t name_w = 0;
      for (const auto& t : g.terms) name_w = std::max(name_w, report::text_width(t.name));
      for (const auto& t : g.terms)
        out += fmt::format("  {}{} {:+6.2f} [{:+.2f}, {:+.2f}]{}\n", t.name,
                           std::string(name_w - report::text_width(t.name), ' '), 100 * t.estimate,
                           100 * t.lo, 100 * t.hi, (t.lo > 0 || t.hi < 0) ? "  *" : "");
      out += "  * the interval excludes 0\n";
      for (const auto& n : g.notes) out += "  note: " + n + "\n";
    }
  }
  if (report.trust) {
    const RankTrust& t = *report.trust;
    out += fmt::format("Kendall's tau between {} and {} epochs over the top {}: {:.3f}\n", t.short_epochs,
                       t.long_epochs, t.masks.size(), t.tau);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// JSON. Masks are JSON integers; non-finite numbers are written as null (nlohmann's
// rule) and read back as NaN.
// ---------------------------------------------------------------------------------------

namespace detail {

/// A number of JSON, or null when not finite: nlohmann-json would store NaN as a number
/// that then never equals itself.
inline nlohmann::json json_number(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace detail

inline void to_json(nlohmann::json& j, const StructureCost& c) {
  j = nlohmann::json{{"active_params", c.active_params},
                     {"flops_per_sample", c.flops_per_sample},
                     {"allreduces", c.allreduces},
                     {"comm_bytes", c.comm_bytes},
                     {"comm_seconds", c.comm_seconds}};
}

inline void to_json(nlohmann::json& j, const RunRecord& r) {
  j = nlohmann::json{{"phase", r.phase},
                     {"mask", r.mask},
                     {"seed", r.seed},
                     {"epochs", r.epochs},
                     {"val_accuracy", r.val_accuracy},
                     {"val_loss", r.val_loss},
                     {"train_loss", r.train_loss},
                     {"seconds", r.seconds}};
  if (r.correct.size() > 0) j["correct"] = r.correct.to_hex();
}

/// Throws nlohmann::json's exceptions on a missing key or a wrong type; the caller, who
/// knows the file, turns them into an InputError naming it. "correct" is not read here:
/// its length comes from the settings (read_run_records reads and checks it).
inline void from_json(const nlohmann::json& j, RunRecord& r) {
  auto number = [&](const char* key) {
    const auto& v = j.at(key);
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  j.at("phase").get_to(r.phase);
  j.at("mask").get_to(r.mask);
  j.at("seed").get_to(r.seed);
  r.epochs = j.contains("epochs") ? j.at("epochs").get<std::int64_t>() : 0;
  r.val_accuracy = number("val_accuracy");
  r.val_loss = number("val_loss");
  r.train_loss = number("train_loss");
  r.seconds = j.contains("seconds") ? number("seconds") : 0.0;
}

inline void to_json(nlohmann::json& j, const SearchEntry& e) {
  j = nlohmann::json{{"rank", e.rank},
                     {"mask", e.mask},
                     {"mask_hex", report::mask_hex(e.mask)},
                     {"structure", e.structure},
                     {"equivalent", e.equivalent},
                     {"runs", e.runs},
                     {"epochs", e.epochs},
                     {"rung", e.rung},
                     {"acc_mean", e.acc_mean},
                     {"acc_std", e.acc_std},
                     {"loss_mean", e.loss_mean},
                     {"loss_std", e.loss_std},
                     {"cost", e.cost},
                     {"pareto", e.pareto},
                     {"diff_vs_leader", e.diff},
                     {"diff_lo", detail::json_number(e.diff_lo)},
                     {"diff_hi", detail::json_number(e.diff_hi)},
                     {"p_adjusted", detail::json_number(e.p_adjusted)},
                     {"top_group", e.top_group},
                     {"cut", e.cut},
                     {"screen_acc", detail::json_number(screen_accuracy(e))}};
}

inline void to_json(nlohmann::json& j, const RungSummary& g) {
  j = nlohmann::json{
      {"seeds", g.seeds},         {"epochs", g.epochs}, {"structures", g.structures},
      {"top_group", g.top_group}, {"kept", g.kept},     {"seed_tau", detail::json_number(g.seed_tau)}};
}

inline void to_json(nlohmann::json& j, const PairedSummary& p) {
  j = nlohmann::json{{"test", p.test},
                     {"interval", p.interval},
                     {"correction", p.correction},
                     {"alpha", p.alpha},
                     {"level", p.level},
                     {"seeds", p.seeds},
                     {"images", p.images},
                     {"resamples", p.resamples},
                     {"top_group", p.top_group},
                     {"seed_tau", detail::json_number(p.seed_tau)}};
}

inline void to_json(nlohmann::json& j, const GateEffectRow& t) {
  j = nlohmann::json{{"term", t.name},
                     {"estimate", detail::json_number(t.estimate)},
                     {"lo", detail::json_number(t.lo)},
                     {"hi", detail::json_number(t.hi)},
                     {"p", detail::json_number(t.p)}};
}

inline void to_json(nlohmann::json& j, const GateEffectSummary& g) {
  j = nlohmann::json{{"terms", g.terms},
                     {"r2", detail::json_number(g.r2)},
                     {"adjusted_r2", detail::json_number(g.adjusted_r2)},
                     {"r2_main", detail::json_number(g.r2_main)},
                     {"level", g.level},
                     {"residual_df", g.residual_df},
                     {"notes", g.notes}};
}

inline void to_json(nlohmann::json& j, const RankTrust& t) {
  j = nlohmann::json{{"short_epochs", t.short_epochs}, {"long_epochs", t.long_epochs}, {"masks", t.masks},
                     {"short_acc", t.short_acc},       {"long_acc", t.long_acc},       {"tau", t.tau}};
}

/// The whole report; "trust" is null when there was no trust check.
inline void to_json(nlohmann::json& j, const SearchReport& r) {
  j = nlohmann::json{{"family", r.family}, {"candidates", r.candidates}, {"trained", r.trained},
                     {"top_k", r.top_k},   {"entries", r.entries},       {"trust", nullptr},
                     {"paired", nullptr},  {"gate_effects", nullptr},    {"rungs", r.rungs},
                     {"eta", r.eta},       {"stopped", r.stopped}};
  if (r.trust) j["trust"] = *r.trust;
  if (r.paired) j["paired"] = *r.paired;
  if (r.gate_effects) j["gate_effects"] = *r.gate_effects;
}

inline nlohmann::json to_json(const SearchReport& r) {
  nlohmann::json j;
  to_json(j, r);
  return j;
}

// ---------------------------------------------------------------------------------------
// CSV and the top-K list
// ---------------------------------------------------------------------------------------

/// One row per entry after a header; RFC 4180 quoting (the structure field always
/// quoted), "\n" line ends. Masks in hex, `equivalent` as space-separated hex masks,
/// numbers with the shortest text that reads back exactly.
inline std::string results_csv(const SearchReport& report) {
  std::string out =
      "rank,mask,structure,equivalent,runs,acc_mean,acc_std,loss_mean,loss_std,active_params,"
      "flops_per_sample,allreduces,comm_bytes,comm_seconds,pareto,diff_vs_leader,diff_lo,diff_hi,p_adjusted,"
      "top_group,epochs,rung,cut,screen_acc\n";
  for (const SearchEntry& e : report.entries) {
    std::string equivalent;
    for (const std::uint64_t m : e.equivalent) {
      if (!equivalent.empty()) equivalent += ' ';
      equivalent += report::mask_hex(m);
    }
    fmt::format_to(
        std::back_inserter(out), "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        e.rank, report::mask_hex(e.mask), report::csv_quoted(e.structure), report::csv_field(equivalent),
        e.runs, e.acc_mean, e.acc_std, e.loss_mean, e.loss_std, e.cost.active_params, e.cost.flops_per_sample,
        e.cost.allreduces, e.cost.comm_bytes, e.cost.comm_seconds, e.pareto ? "true" : "false", e.diff,
        report::csv_number(e.diff_lo), report::csv_number(e.diff_hi), report::csv_number(e.p_adjusted),
        e.top_group ? "true" : "false", e.epochs, e.rung, e.cut ? "true" : "false",
        report::csv_number(screen_accuracy(e)));
  }
  return out;
}

inline void write_results_csv(const std::filesystem::path& path, const SearchReport& report) {
  write_file_atomically(path, std::string_view(results_csv(report)));
}

/// The input of co-training: the best min(top_k, entries) structures in rank order.
inline nlohmann::json topk_json(const SearchReport& report) {
  const auto k = std::min<std::size_t>(static_cast<std::size_t>(std::max<std::int64_t>(report.top_k, 0)),
                                       report.entries.size());
  nlohmann::json structures = nlohmann::json::array();
  for (std::size_t i = 0; i < k; ++i) {
    const SearchEntry& e = report.entries[i];
    structures.push_back({{"rank", e.rank},
                          {"mask", e.mask},
                          {"mask_hex", report::mask_hex(e.mask)},
                          {"structure", e.structure},
                          {"val_accuracy", e.acc_mean},
                          {"comm_bytes", e.cost.comm_bytes}});
  }
  return {{"family", report.family}, {"k", k}, {"structures", std::move(structures)}};
}

inline void write_topk_json(const std::filesystem::path& path, const SearchReport& report) {
  write_file_atomically(path, std::string_view(topk_json(report).dump(2) + "\n"));
}

// ---------------------------------------------------------------------------------------
// SVG figure
// ---------------------------------------------------------------------------------------

/// One self-contained SVG, 1000 wide and 440 high (taller when top_k needs it): left,
/// validation accuracy against communication per step per device, every entry a
/// <circle> (with a hover <title>), the Pareto front filled and joined by its staircase,
/// the top entry labelled; right, bars of the top K by accuracy (from a stated
/// minimum, not from 0) with std whiskers where there are several seeds. Entries with a
/// non-finite accuracy or communication are left out of the scatter.
inline std::string report_svg(const SearchReport& report) {
  using report::colour_front, report::colour_front_dark, report::colour_plain, report::num;
  const auto& entries = report.entries;
  const std::size_t k = std::min<std::size_t>(
      static_cast<std::size_t>(std::max<std::int64_t>(report.top_k, 0)), entries.size());
  constexpr double width = 1000, min_row = 28, top = 60, bottom_margin = 70, gate_row = 22;
  const double main_height = std::max(440.0, top + bottom_margin + min_row * double(k));
  const double y0 = top, y1 = main_height - bottom_margin;  // plot area rows, both panels
  const bool gates = report.gate_effects && !report.gate_effects->terms.empty();
  const double height =
      main_height + (gates ? 60 + gate_row * double(report.gate_effects->terms.size()) + 60 : 0);
  const bool raced = report.rungs.size() > 1;

  report::SvgWriter svg(width, height);
  auto acc_pct = [](const SearchEntry& e) { return 100 * e.acc_mean; };
  // the scatter compares every structure at the budget all of them ran with
  auto screen_pct = [](const SearchEntry& e) { return 100 * screen_accuracy(e); };
  auto comm_mib = [](const SearchEntry& e) { return e.cost.comm_bytes / (1024.0 * 1024.0); };

  // ---- left panel: accuracy against communication ----
  {
    const report::PlotArea area{75, 465, y0, y1};
    const double x0 = area.x0, x1 = area.x1;
    svg.out("<g id=\"scatter\">\n");
    svg.panel_title(area, "accuracy vs communication");
    std::vector<const SearchEntry*> shown;
    for (const auto& e : entries)
      if (std::isfinite(screen_pct(e)) && std::isfinite(e.cost.comm_bytes)) shown.push_back(&e);
    if (shown.empty()) {
      svg.empty_note(area, "no structures");
    } else {
      // legend
      svg.out("<g id=\"scatter-legend\">\n");
      svg.out("<path d=\"{}\" fill=\"#ffffff\" stroke=\"{}\" stroke-width=\"1.5\"/>\n",
              report::circle_path(x0 + 4, 41, 4), colour_plain);
      svg.text(x0 + 13, 45, "structure");
      svg.out("<path d=\"{}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"1\"/>\n",
              report::circle_path(x0 + 84, 41, 4.5), colour_front, colour_front_dark);
      if (report.paired) {  // shorter, to leave room for the top group's ring
        svg.text(x0 + 93, 45, "Pareto front");
        svg.out("<path d=\"{}\" fill=\"none\" stroke=\"#222222\" stroke-width=\"1\"/>\n",
                report::circle_path(x0 + 184, 41, 6.5));
        svg.text(x0 + 195, 45, "top group (tied with #1)");
      } else {
        svg.text(x0 + 93, 45, "Pareto front (max accuracy, min communication)");
      }
      svg.out("</g>\n");

      double acc_lo = screen_pct(*shown[0]), acc_hi = acc_lo, comm_hi = 0;
      for (const SearchEntry* e : shown) {
        acc_lo = std::min(acc_lo, screen_pct(*e));
        acc_hi = std::max(acc_hi, screen_pct(*e));
        comm_hi = std::max(comm_hi, comm_mib(*e));
      }
      const report::Ticks yt = report::percent_ticks(acc_lo, acc_hi, 0.08, 0.08);
      report::Ticks xt;
      if (comm_hi > 0) {
        xt = report::nice_ticks(0, comm_hi * 1.04);
      } else {  // no communication at all: one column at 0, in the middle
        xt.lo = -1;
        xt.hi = 1;
        xt.values = {0.0};
      }
      // 10 px inside the frame, so that dots at 0 do not sit on the axis
      const report::LinearScale xs{xt.lo, xt.hi, x0 + 10, x1 - 10}, ys{yt.lo, yt.hi, y1, y0};

      svg.out("<g id=\"scatter-axes\" font-size=\"10\">\n");
      svg.y_grid(area, yt, ys, yt.decimals, 3.5);
      svg.x_grid(area, xt, xs);
      svg.frame(area);
      svg.out("</g>\n");
      svg.text(area.centre_x(), y1 + 36, "communication per step per device (MiB)", "text-anchor=\"middle\"");
      svg.out("<text x=\"20\" y=\"{0}\" transform=\"rotate(-90 20 {0})\" text-anchor=\"middle\">{1}</text>\n",
              num(area.centre_y()),
              raced ? fmt::format("validation accuracy (%) at {}x{} (the first rung)", report.rungs[0].seeds,
                                  report.rungs[0].epochs)
                    : std::string("validation accuracy (%)"));

      // the front's staircase: at each cheaper-to-dearer step the accuracy rises
      std::vector<const SearchEntry*> front;
      for (const SearchEntry* e : shown)
        if (e->pareto) front.push_back(e);
      std::sort(front.begin(), front.end(), [&](const SearchEntry* a, const SearchEntry* b) {
        return comm_mib(*a) != comm_mib(*b) ? comm_mib(*a) < comm_mib(*b) : screen_pct(*a) < screen_pct(*b);
      });
      if (front.size() > 1) {
        std::string d = fmt::format("M{} {}", num(xs(comm_mib(*front[0]))), num(ys(screen_pct(*front[0]))));
        for (std::size_t i = 1; i < front.size(); ++i)
          d += fmt::format("H{}V{}", num(xs(comm_mib(*front[i]))), num(ys(screen_pct(*front[i]))));
        svg.out("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" stroke-opacity=\"0.8\"/>\n",
                d, colour_front);
      }

      // dots: the others first, the front on top
      svg.out("<g id=\"scatter-points\">\n");
      for (const bool on_front : {false, true}) {
        for (const SearchEntry* e : shown) {
          if (e->pareto != on_front) continue;
          const std::string tip =
              fmt::format("#{} {} {}: {:.2f}% val accuracy, {} per step", e->rank, report::mask_hex(e->mask),
                          e->structure, screen_pct(*e), report::human_bytes(e->cost.comm_bytes));
          if (on_front)
            svg.out(R"(<circle cx="{}" cy="{}" r="4.5" fill="{}" stroke="{}" stroke-width="1">)",
                    num(xs(comm_mib(*e))), num(ys(screen_pct(*e))), colour_front, colour_front_dark);
          else
            svg.out(
                "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"#ffffff\" fill-opacity=\"0.6\" stroke=\"{}\" "
                "stroke-width=\"1.5\">",
                num(xs(comm_mib(*e))), num(ys(screen_pct(*e))), colour_plain);
          svg.out("<title>{}</title></circle>\n", report::xml_escape(tip));
        }
      }
      svg.out("</g>\n");

      // the top group: a ring around each of its dots
      if (report.paired) {
        svg.out("<g id=\"scatter-top-group\">\n");
        for (const SearchEntry* e : shown)
          if (e->top_group)
            svg.out("<path d=\"{}\" fill=\"none\" stroke=\"#222222\" stroke-width=\"1\"/>\n",
                    report::circle_path(xs(comm_mib(*e)), ys(screen_pct(*e)), 6.5));
        svg.out("</g>\n");
      }

      // the best entry's label: above its dot (the highest), reaching towards the middle
      const SearchEntry& best = entries.front();
      if (std::isfinite(screen_pct(best)) && std::isfinite(best.cost.comm_bytes)) {
        const double bx = xs(comm_mib(best)), by = ys(screen_pct(best));
        const bool left = bx > area.centre_x();
        svg.text(left ? bx + 6 : bx - 6, by - 9, fmt::format("#1 {}", report::truncate(best.structure, 48)),
                 fmt::format("text-anchor=\"{}\" font-weight=\"bold\" stroke=\"#ffffff\" stroke-width=\"3\" "
                             "paint-order=\"stroke\"",
                             left ? "end" : "start"));
      }
    }
    svg.out("</g>\n");
  }

  // ---- right panel: the top K by accuracy ----
  {
    const report::PlotArea area{535, 965, y0, y1};
    const double x0 = area.x0, x1 = area.x1;
    svg.out("<g id=\"top-k\">\n");
    svg.panel_title(
        area, k > 0 ? fmt::format("top {} by validation accuracy{}", k, raced ? " (seeds x epochs)" : "")
                    : std::string("top structures by validation accuracy"));
    if (k == 0) {
      svg.empty_note(area, "no structures");
    } else {
      // Whiskers: with paired statistics, each structure's interval of its difference to #1,
      // drawn from #1's accuracy (so the bar ends at the point estimate); else +- std.
      const bool paired = report.paired.has_value();
      constexpr double nan = std::numeric_limits<double>::quiet_NaN();
      auto whisker = [&](const SearchEntry& e) -> std::pair<double, double> {
        if (paired) {
          if (!std::isfinite(e.diff_lo) || !std::isfinite(e.diff_hi) || &e == &entries.front() ||
              e.rung != entries.front().rung)  // dropped earlier: compared with another rung's leader
            return {nan, nan};
          return {acc_pct(entries.front()) + 100 * e.diff_lo, acc_pct(entries.front()) + 100 * e.diff_hi};
        }
        if (e.runs > 1 && std::isfinite(e.acc_std) && e.acc_std > 0)
          return {acc_pct(e) - 100 * e.acc_std, acc_pct(e) + 100 * e.acc_std};
        return {nan, nan};
      };
      bool whiskers = false;
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (std::size_t i = 0; i < k; ++i) {
        const SearchEntry& e = entries[i];
        if (!std::isfinite(e.acc_mean)) continue;
        const auto [a, b] = whisker(e);
        whiskers = whiskers || std::isfinite(a);
        lo = std::min(lo, std::isfinite(a) ? std::min(a, acc_pct(e)) : acc_pct(e));
        hi = std::max(hi, std::isfinite(b) ? std::max(b, acc_pct(e)) : acc_pct(e));
      }
      if (!(lo <= hi)) {  // no finite accuracy among them
        lo = 0;
        hi = 100;
      }
      const report::Ticks xt = report::percent_ticks(lo, hi, 0.25, 0.05);
      const report::LinearScale xs{xt.lo, xt.hi, x0, x1};
      if (paired) {
        svg.text(x0, 45,
                 fmt::format(
                     "whisker: {:.0f}% interval of the difference to #1; = : top group; orange: Pareto front",
                     100 * report.paired->level),
                 "fill=\"#666666\"");
      } else {
        svg.text(x0, 45,
                 whiskers ? "bar: mean over seeds, whisker: \u00b1 sample std; orange: on the Pareto front"
                          : "bar: validation accuracy; orange: on the Pareto front",
                 "fill=\"#666666\"");
      }

      svg.out("<g id=\"top-k-axes\" font-size=\"10\">\n");
      svg.x_grid(area, xt, xs);
      svg.frame(area);
      svg.out("</g>\n");
      svg.text(area.centre_x(), y1 + 36,
               xt.lo > 0
                   ? fmt::format("validation accuracy (%), bars start at {:.{}f}, not 0", xt.lo, xt.decimals)
                   : std::string("validation accuracy (%)"),
               "text-anchor=\"middle\"");

      const double row = (y1 - y0) / double(k);
      const double bar = std::min(22.0, row - 18);
      const double pad = (row - (14 + bar)) / 2;  // centres label and bar in the row
      svg.out("<g id=\"top-k-bars\">\n");
      for (std::size_t i = 0; i < k; ++i) {
        const SearchEntry& e = entries[i];
        const double ty = y0 + double(i) * row + pad + 10, by = ty + 4;
        const bool sd = !paired && e.runs > 1 && std::isfinite(e.acc_std) && e.acc_std > 0;
        std::string value = sd ? fmt::format("{:.2f} \u00b1 {:.2f} %", acc_pct(e), 100 * e.acc_std)
                               : fmt::format("{:.2f} %", acc_pct(e));
        if (paired && e.top_group) value = "= " + value;
        if (raced) value += fmt::format(" ({}x{})", e.runs, e.epochs);
        // about 6.2 px a character at this size: the structure gets what the rest leaves
        std::string label = fmt::format("#{} {} ", e.rank, report::mask_hex(e.mask));
        const std::string extra =
            e.equivalent.empty() ? "" : fmt::format(" (+{} equivalent)", e.equivalent.size());
        const auto used =
            double(report::text_width(label) + report::text_width(extra) + report::text_width(value) + 2);
        const auto room = static_cast<std::size_t>(std::max(8.0, (x1 - x0) / 6.2 - used));
        label += report::truncate(e.structure, room) + extra;
        svg.text(x0 + 2, ty, label);
        svg.text(x1, ty, value, R"(text-anchor="end" fill="#444444")");
        if (std::isfinite(e.acc_mean))
          svg.rect(x0, by, std::clamp(xs(acc_pct(e)) - x0, 0.0, x1 - x0), bar,
                   e.pareto ? colour_front : colour_plain);
        if (const auto [wa, wb] = whisker(e); std::isfinite(wa) && std::isfinite(e.acc_mean)) {
          const double a = std::clamp(xs(wa), x0, x1);
          const double b = std::clamp(xs(wb), x0, x1);
          const double cy = by + bar / 2, cap = std::min(5.0, bar / 2);
          svg.out(
              "<path d=\"M{0} {1}H{2}M{0} {3}V{4}M{2} {3}V{4}\" stroke=\"#222222\" stroke-width=\"1.2\" "
              "fill=\"none\"/>\n",
              num(a), num(cy), num(b), num(cy - cap), num(cy + cap));
        }
      }
      svg.out("</g>\n");
    }
    svg.out("</g>\n");
  }

  // ---- below: what each gate is worth ----
  if (gates) {
    const GateEffectSummary& g = *report.gate_effects;
    const report::PlotArea area{260, 790, main_height + 50,
                                main_height + 50 + gate_row * double(g.terms.size())};
    svg.out("<g id=\"gate-effects\">\n");
    svg.text(width / 2, main_height + 10,
             fmt::format("gate effects on validation accuracy{}",
                         raced ? fmt::format(" at {}x{} (the first rung)", report.rungs[0].seeds,
                                             report.rungs[0].epochs)
                               : std::string()),
             R"(text-anchor="middle" font-size="15" font-weight="bold")");
    svg.text(width / 2, main_height + 30,
             fmt::format(
                 "points, with {:.0f}% intervals; dark: the interval excludes 0; the model explains {:.0f}% "
                 "of the variance between structures (main effects alone {:.0f}%)",
                 100 * g.level, 100 * g.r2, 100 * g.r2_main),
             R"(text-anchor="middle" fill="#666666")");
    double reach = 0;
    for (const auto& t : g.terms)
      for (const double v : {t.estimate, t.lo, t.hi})
        if (std::isfinite(v)) reach = std::max(reach, std::abs(100 * v));
    if (!(reach > 0)) reach = 1;
    const report::Ticks xt = report::nice_ticks(-reach * 1.05, reach * 1.05);
    const report::LinearScale xs{xt.lo, xt.hi, area.x0, area.x1};
    svg.out("<g font-size=\"10\">\n");
    svg.x_grid(area, xt, xs);
    svg.out("</g>\n");
    svg.line(xs(0), area.y0, xs(0), area.y1, report::colour_axis);
    svg.text(area.centre_x(), area.y1 + 34, "change in validation accuracy when the gate is on (points)",
             R"(text-anchor="middle")");
    for (std::size_t i = 0; i < g.terms.size(); ++i) {
      const GateEffectRow& t = g.terms[i];
      const double cy = area.y0 + gate_row * (double(i) + 0.5);
      const bool clear = t.lo > 0 || t.hi < 0;
      const char* colour = clear ? colour_front_dark : colour_plain;
      svg.text(area.x0 - 8, cy + 4, t.name, R"(text-anchor="end")");
      if (std::isfinite(t.lo) && std::isfinite(t.hi))
        svg.line(std::clamp(xs(100 * t.lo), area.x0, area.x1), cy,
                 std::clamp(xs(100 * t.hi), area.x0, area.x1), cy, colour, R"(stroke-width="2")");
      if (std::isfinite(t.estimate))
        svg.out("<path d=\"{}\" fill=\"{}\"><title>{}</title></path>\n",
                report::circle_path(xs(100 * t.estimate), cy, 4), colour,
                report::xml_escape(fmt::format("{}: {:+.2f} points [{:+.2f}, {:+.2f}]", t.name,
                                               100 * t.estimate, 100 * t.lo, 100 * t.hi)));
      svg.text(area.x1 + 8, cy + 4,
               fmt::format("{:+.2f} [{:+.2f}, {:+.2f}]", 100 * t.estimate, 100 * t.lo, 100 * t.hi),
               R"(fill="#444444")");
    }
    svg.out("</g>\n");
  }

  // ---- footer: what was searched, and how far the ranking can be trusted ----
  std::string footer = fmt::format("{} \u00b7 {} candidate masks, {} distinct functions trained",
                                   report.family, report.candidates, report.trained);
  if (report.rungs.size() > 1) {
    footer += " \u00b7 race";
    for (const RungSummary& g : report.rungs)
      footer += fmt::format(" {}x{}x{}", g.structures, g.seeds, g.epochs);
    footer += " (structures x seeds x epochs)";
  }
  if (report.trust)
    footer += fmt::format(" \u00b7 Kendall's tau between {} and {} epochs over the top {}: {:.3f}",
                          report.trust->short_epochs, report.trust->long_epochs, report.trust->masks.size(),
                          report.trust->tau);
  svg.footer(footer);
  return std::move(svg).finish();
}

inline void write_report_svg(const std::filesystem::path& path, const SearchReport& report) {
  write_file_atomically(path, std::string_view(report_svg(report)));
}

}  // namespace additive
