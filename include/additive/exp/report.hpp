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

namespace additive {

namespace detail::report {

/// Display width of UTF-8 text, in code points (the tables hold no double-width text).
inline std::size_t text_width(std::string_view s) {
  return static_cast<std::size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

/// At most `n` code points of `s`: when longer, its start (without trailing spaces and
/// dots) and an ellipsis.
inline std::string truncate(std::string_view s, std::size_t n) {
  if (text_width(s) <= n || n < 2) return std::string(s);
  std::size_t points = 0, i = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 && points++ == n - 1) break;
  }
  std::string head(s.substr(0, i));
  head.erase(head.find_last_not_of(" .") + 1);
  return head + "\u2026";
}

inline std::string mask_hex(std::uint64_t m) { return fmt::format("{:#x}", m); }

/// Three significant digits for 1 <= |v| < 1000: 1.26, 12.6, 126.
inline std::string three_digits(double v) {
  const double a = std::abs(v);
  return a < 9.995   ? fmt::format("{:.2f}", v)
         : a < 99.95 ? fmt::format("{:.1f}", v)
                     : fmt::format("{:.0f}", v);
}

/// 950, 12.3k, 1.26M, 4.10G.
inline std::string human_count(double n) {
  static constexpr const char* units[] = {"", "k", "M", "G", "T", "P"};
  std::size_t u = 0;
  while (std::abs(n) >= 999.5 && u + 1 < std::size(units)) {
    n /= 1000;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f}", n) : three_digits(n) + units[u];
}

/// 0 B, 512 B, 1.50 KiB, 12.0 MiB.
inline std::string human_bytes(double b) {
  static constexpr const char* units[] = {" B", " KiB", " MiB", " GiB", " TiB"};
  std::size_t u = 0;
  while (std::abs(b) >= 1023.5 && u + 1 < std::size(units)) {
    b /= 1024;
    ++u;
  }
  return (u == 0 ? fmt::format("{:.0f}", b) : three_digits(b)) + units[u];
}

/// A field of RFC 4180 CSV, always quoted (embedded quotes doubled).
inline std::string csv_quoted(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + '"';
}

/// A field of RFC 4180 CSV, quoted only when it holds a comma, quote or line break.
inline std::string csv_field(std::string_view s) {
  return s.find_first_of(",\"\r\n") == std::string_view::npos ? std::string(s) : csv_quoted(s);
}

/// Text or attribute content for XML: the five special characters escaped, control
/// characters that XML 1.0 forbids replaced by '?'.
inline std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
          out += '?';
        else
          out += c;
    }
  }
  return out;
}

/// An SVG coordinate: two decimals, never "-0.00".
inline std::string num(double v) {
  if (!std::isfinite(v) || std::abs(v) < 0.005) v = 0;
  return fmt::format("{:.2f}", v);
}

struct TableColumn {
  std::string header;
  bool right = false;  ///< right-aligned (numbers) or left-aligned (text)
};

/// Columns two spaces apart, each as wide as its widest cell; no trailing spaces.
inline std::string render_table(const std::vector<TableColumn>& columns,
                                const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(columns.size());
  for (std::size_t c = 0; c < columns.size(); ++c) {
    widths[c] = text_width(columns[c].header);
    for (const auto& row : rows) widths[c] = std::max(widths[c], text_width(row[c]));
  }
  auto line = [&](auto&& cell) {
    std::string s;
    for (std::size_t c = 0; c < columns.size(); ++c) {
      const std::string& text = cell(c);
      const std::string pad(widths[c] - text_width(text), ' ');
      if (c > 0) s += "  ";
      s += columns[c].right ? pad + text : text + pad;
    }
    s.erase(s.find_last_not_of(' ') + 1);
    return s + '\n';
  };
  std::string out = line([&](std::size_t c) -> const std::string& { return columns[c].header; });
  for (const auto& row : rows) out += line([&](std::size_t c) -> const std::string& { return row[c]; });
  return out;
}

/// Tick values 1, 2 or 5 x 10^k apart covering [lo, hi], about `target` of them.
struct Ticks {
  double lo = 0, hi = 1, step = 1;
  int decimals = 0;  ///< enough to print every tick exactly
  std::vector<double> values;
};

inline Ticks nice_ticks(double lo, double hi, int target = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / p;
  const double step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  Ticks t;
  t.step = step;
  const double first = std::floor(lo / step + 1e-9), last = std::ceil(hi / step - 1e-9);
  for (double k = first; k <= last + 0.5; k += 1) t.values.push_back(k * step);
  t.lo = first * step;
  t.hi = last * step;
  t.decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  return t;
}

/// Linear map from a domain [d0, d1] to a pixel range [r0, r1].
struct LinearScale {
  double d0, d1, r0, r1;
  double operator()(double v) const { return r0 + (v - d0) / (d1 - d0) * (r1 - r0); }
};

/// Accuracy ticks: the range of the values plus margins (below, above), within [0, 100].
inline Ticks percent_ticks(double lo, double hi, double below, double above) {
  const double r = std::max(hi - lo, 0.5);
  return nice_ticks(std::max(0.0, lo - below * r), std::min(100.0, hi + above * r));
}

inline constexpr const char* colour_plain = "#4c72b0";
inline constexpr const char* colour_front = "#dd8452";
inline constexpr const char* colour_front_dark = "#b0582a";
inline constexpr const char* colour_grid = "#e6e6e6";
inline constexpr const char* colour_axis = "#444444";

/// A circle drawn as a path (legend markers: the figure's <circle>s are its entries).
inline std::string circle_path(double cx, double cy, double r) {
  return fmt::format("M{} {}m-{} 0a{} {} 0 1 0 {} 0a{} {} 0 1 0 -{} 0", num(cx), num(cy), num(r), num(r),
                     num(r), num(2 * r), num(r), num(r), num(2 * r));
}

}  // namespace detail::report

// ---------------------------------------------------------------------------------------
// Pareto front
// ---------------------------------------------------------------------------------------

/// Sets `pareto` on the entries no other entry dominates in (higher acc_mean, lower
/// cost.comm_bytes): o dominates e when o.acc >= e.acc and o.comm <= e.comm with at least
/// one strict. Equal entries do not dominate each other (both are on the front). Entries
/// with a NaN accuracy or communication are never on the front.
inline void mark_pareto(std::vector<SearchEntry>& entries) {
  auto valid = [](const SearchEntry& e) { return !std::isnan(e.acc_mean) && !std::isnan(e.cost.comm_bytes); };
  for (auto& e : entries) {
    e.pareto = valid(e) && std::none_of(entries.begin(), entries.end(), [&](const SearchEntry& o) {
                 return valid(o) && o.acc_mean >= e.acc_mean && o.cost.comm_bytes <= e.cost.comm_bytes &&
                        (o.acc_mean > e.acc_mean || o.cost.comm_bytes < e.cost.comm_bytes);
               });
  }
}

// ---------------------------------------------------------------------------------------
// Terminal leaderboard
// ---------------------------------------------------------------------------------------

/// The best `rows` entries as an aligned table: a summary line, the header, one row per
/// entry, a footer saying what the marks mean, and the rank-trust line when there is one.
inline std::string leaderboard_text(const SearchReport& report, std::size_t rows) {
  namespace rd = detail::report;
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
    const std::vector<rd::TableColumn> columns = {
        {"rank", true},      {"mask", false},    {"structure", false}, {"equiv", true},
        {"val acc %", true}, {"val loss", true}, {"params", true},     {"MFLOP/sample", true},
        {"comm/step", true}, {"comm µs", true},  {"front", false}};
    std::vector<std::vector<std::string>> cells;
    for (std::size_t i = 0; i < shown; ++i) {
      const SearchEntry& e = report.entries[i];
      std::string acc = fmt::format("{:>{}.2f}", 100 * e.acc_mean, mean_w);
      if (e.runs > 1)
        acc += fmt::format(" ± {:>{}.2f}", 100 * e.acc_std, std_w);
      else if (std_w > 0)
        acc += std::string(std_w + 3, ' ');
      cells.push_back({std::to_string(e.rank), rd::mask_hex(e.mask), e.structure,
                       e.equivalent.empty() ? std::string() : fmt::format("+{}", e.equivalent.size()), acc,
                       fmt::format("{:.4f}", e.loss_mean), rd::human_count(double(e.cost.active_params)),
                       fmt::format("{:.2f}", e.cost.flops_per_sample / 1e6),
                       rd::human_bytes(e.cost.comm_bytes), fmt::format("{:.1f}", e.cost.comm_seconds * 1e6),
                       e.pareto ? "*" : ""});
    }
    out += rd::render_table(columns, cells);
    out +=
        "front *: on the Pareto front of (max val accuracy, min communication)\n"
        "equiv +n: n more masks compute the same function (not trained)\n"
        "val acc %: mean ± sample std over the seeds; comm: bytes each device sends per training step, "
        "and their alpha-beta time\n";
    if (shown < report.entries.size())
      out += fmt::format("({} more structures not shown)\n", report.entries.size() - shown);
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

inline void to_json(nlohmann::json& j, const StructureCost& c) {
  j = nlohmann::json{{"active_params", c.active_params},
                     {"flops_per_sample", c.flops_per_sample},
                     {"allreduces", c.allreduces},
                     {"comm_bytes", c.comm_bytes},
                     {"comm_seconds", c.comm_seconds}};
}

inline void to_json(nlohmann::json& j, const RunRecord& r) {
  j = nlohmann::json{{"phase", r.phase},       {"mask", r.mask},
                     {"seed", r.seed},         {"val_accuracy", r.val_accuracy},
                     {"val_loss", r.val_loss}, {"train_loss", r.train_loss},
                     {"seconds", r.seconds}};
}

/// Throws nlohmann::json's exceptions on a missing key or a wrong type; the caller, who
/// knows the file, turns them into an InputError naming it.
inline void from_json(const nlohmann::json& j, RunRecord& r) {
  auto number = [&](const char* key) {
    const auto& v = j.at(key);
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  j.at("phase").get_to(r.phase);
  j.at("mask").get_to(r.mask);
  j.at("seed").get_to(r.seed);
  r.val_accuracy = number("val_accuracy");
  r.val_loss = number("val_loss");
  r.train_loss = number("train_loss");
  r.seconds = j.contains("seconds") ? number("seconds") : 0.0;
}

inline void to_json(nlohmann::json& j, const SearchEntry& e) {
  j = nlohmann::json{{"rank", e.rank},
                     {"mask", e.mask},
                     {"mask_hex", detail::report::mask_hex(e.mask)},
                     {"structure", e.structure},
                     {"equivalent", e.equivalent},
                     {"runs", e.runs},
                     {"acc_mean", e.acc_mean},
                     {"acc_std", e.acc_std},
                     {"loss_mean", e.loss_mean},
                     {"loss_std", e.loss_std},
                     {"cost", e.cost},
                     {"pareto", e.pareto}};
}

inline void to_json(nlohmann::json& j, const RankTrust& t) {
  j = nlohmann::json{{"short_epochs", t.short_epochs}, {"long_epochs", t.long_epochs}, {"masks", t.masks},
                     {"short_acc", t.short_acc},       {"long_acc", t.long_acc},       {"tau", t.tau}};
}

/// The whole report; "trust" is null when there was no trust check.
inline void to_json(nlohmann::json& j, const SearchReport& r) {
  j = nlohmann::json{{"family", r.family}, {"candidates", r.candidates}, {"trained", r.trained},
                     {"top_k", r.top_k},   {"entries", r.entries},       {"trust", nullptr}};
  if (r.trust) j["trust"] = *r.trust;
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
  namespace rd = detail::report;
  std::string out =
      "rank,mask,structure,equivalent,runs,acc_mean,acc_std,loss_mean,loss_std,active_params,"
      "flops_per_sample,allreduces,comm_bytes,comm_seconds,pareto\n";
  for (const SearchEntry& e : report.entries) {
    std::string equivalent;
    for (const std::uint64_t m : e.equivalent) {
      if (!equivalent.empty()) equivalent += ' ';
      equivalent += rd::mask_hex(m);
    }
    fmt::format_to(std::back_inserter(out), "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", e.rank,
                   rd::mask_hex(e.mask), rd::csv_quoted(e.structure), rd::csv_field(equivalent), e.runs,
                   e.acc_mean, e.acc_std, e.loss_mean, e.loss_std, e.cost.active_params,
                   e.cost.flops_per_sample, e.cost.allreduces, e.cost.comm_bytes, e.cost.comm_seconds,
                   e.pareto ? "true" : "false");
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
                          {"mask_hex", detail::report::mask_hex(e.mask)},
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
  namespace rd = detail::report;
  using rd::num;
  const auto& entries = report.entries;
  const std::size_t k = std::min<std::size_t>(
      static_cast<std::size_t>(std::max<std::int64_t>(report.top_k, 0)), entries.size());
  constexpr double width = 1000, min_row = 28, top = 60, bottom_margin = 70;
  const double height = std::max(440.0, top + bottom_margin + min_row * double(k));
  const double y0 = top, y1 = height - bottom_margin;  // plot area rows, both panels

  std::string o;
  auto out = [&o](fmt::string_view f, auto&&... args) {
    fmt::vformat_to(std::back_inserter(o), f, fmt::make_format_args(args...));
  };
  out("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"11\" fill=\"#222222\">\n",
      fmt::format("{:.0f}", width), fmt::format("{:.0f}", height));
  out("<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");

  auto text = [&](double x, double y, std::string_view s, std::string_view attrs = {}) {
    out("<text x=\"{}\" y=\"{}\"{}{}>{}</text>\n", num(x), num(y), attrs.empty() ? "" : " ", attrs,
        rd::xml_escape(s));
  };
  auto hline = [&](double x0, double x1, double y, const char* colour) {
    out("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"1\"/>\n", num(x0), num(y),
        num(x1), num(y), colour);
  };
  auto vline = [&](double x, double ya, double yb, const char* colour) {
    out("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"1\"/>\n", num(x), num(ya),
        num(x), num(yb), colour);
  };
  auto acc_pct = [](const SearchEntry& e) { return 100 * e.acc_mean; };
  auto comm_mib = [](const SearchEntry& e) { return e.cost.comm_bytes / (1024.0 * 1024.0); };

  // ---- left panel: accuracy against communication ----
  {
    constexpr double x0 = 75, x1 = 465;
    out("<g id=\"scatter\">\n");
    text((x0 + x1) / 2, 24, "accuracy vs communication",
         R"(text-anchor="middle" font-size="15" font-weight="bold")");
    std::vector<const SearchEntry*> shown;
    for (const auto& e : entries)
      if (std::isfinite(e.acc_mean) && std::isfinite(e.cost.comm_bytes)) shown.push_back(&e);
    if (shown.empty()) {
      text((x0 + x1) / 2, (y0 + y1) / 2, "no structures", R"(text-anchor="middle" fill="#666666")");
    } else {
      // legend
      out("<g id=\"scatter-legend\">\n");
      out("<path d=\"{}\" fill=\"#ffffff\" stroke=\"{}\" stroke-width=\"1.5\"/>\n",
          rd::circle_path(x0 + 4, 41, 4), rd::colour_plain);
      text(x0 + 13, 45, "structure");
      out("<path d=\"{}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"1\"/>\n",
          rd::circle_path(x0 + 84, 41, 4.5), rd::colour_front, rd::colour_front_dark);
      text(x0 + 93, 45, "Pareto front (max accuracy, min communication)");
      out("</g>\n");

      double acc_lo = acc_pct(*shown[0]), acc_hi = acc_lo, comm_hi = 0;
      for (const SearchEntry* e : shown) {
        acc_lo = std::min(acc_lo, acc_pct(*e));
        acc_hi = std::max(acc_hi, acc_pct(*e));
        comm_hi = std::max(comm_hi, comm_mib(*e));
      }
      const rd::Ticks yt = rd::percent_ticks(acc_lo, acc_hi, 0.08, 0.08);
      rd::Ticks xt;
      if (comm_hi > 0) {
        xt = rd::nice_ticks(0, comm_hi * 1.04);
      } else {  // no communication at all: one column at 0, in the middle
        xt.lo = -1;
        xt.hi = 1;
        xt.values = {0.0};
      }
      // 10 px inside the frame, so that dots at 0 do not sit on the axis
      const rd::LinearScale xs{xt.lo, xt.hi, x0 + 10, x1 - 10}, ys{yt.lo, yt.hi, y1, y0};

      out("<g id=\"scatter-axes\" font-size=\"10\">\n");
      for (const double v : yt.values) {
        hline(x0, x1, ys(v), rd::colour_grid);
        text(x0 - 6, ys(v) + 3.5, fmt::format("{:.{}f}", v, yt.decimals), "text-anchor=\"end\"");
      }
      for (const double v : xt.values) {
        vline(xs(v), y0, y1, rd::colour_grid);
        vline(xs(v), y1, y1 + 4, rd::colour_axis);
        text(xs(v), y1 + 16, fmt::format("{:.{}f}", v, xt.decimals), "text-anchor=\"middle\"");
      }
      hline(x0, x1, y1, rd::colour_axis);
      vline(x0, y0, y1, rd::colour_axis);
      out("</g>\n");
      text((x0 + x1) / 2, y1 + 36, "communication per step per device (MiB)", "text-anchor=\"middle\"");
      out("<text x=\"20\" y=\"{0}\" transform=\"rotate(-90 20 {0})\" text-anchor=\"middle\">validation "
          "accuracy "
          "(%)</text>\n",
          num((y0 + y1) / 2));

      // the front's staircase: at each cheaper-to-dearer step the accuracy rises
      std::vector<const SearchEntry*> front;
      for (const SearchEntry* e : shown)
        if (e->pareto) front.push_back(e);
      std::sort(front.begin(), front.end(), [&](const SearchEntry* a, const SearchEntry* b) {
        return comm_mib(*a) != comm_mib(*b) ? comm_mib(*a) < comm_mib(*b) : acc_pct(*a) < acc_pct(*b);
      });
      if (front.size() > 1) {
        std::string d = fmt::format("M{} {}", num(xs(comm_mib(*front[0]))), num(ys(acc_pct(*front[0]))));
        for (std::size_t i = 1; i < front.size(); ++i)
          d += fmt::format("H{}V{}", num(xs(comm_mib(*front[i]))), num(ys(acc_pct(*front[i]))));
        out("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" stroke-opacity=\"0.8\"/>\n", d,
            rd::colour_front);
      }

      // dots: the others first, the front on top
      out("<g id=\"scatter-points\">\n");
      for (const bool on_front : {false, true}) {
        for (const SearchEntry* e : shown) {
          if (e->pareto != on_front) continue;
          const std::string tip =
              fmt::format("#{} {} {}: {:.2f}% val accuracy, {} per step", e->rank, rd::mask_hex(e->mask),
                          e->structure, acc_pct(*e), rd::human_bytes(e->cost.comm_bytes));
          if (on_front)
            out(R"(<circle cx="{}" cy="{}" r="4.5" fill="{}" stroke="{}" stroke-width="1">)",
                num(xs(comm_mib(*e))), num(ys(acc_pct(*e))), rd::colour_front, rd::colour_front_dark);
          else
            out("<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"#ffffff\" fill-opacity=\"0.6\" stroke=\"{}\" "
                "stroke-width=\"1.5\">",
                num(xs(comm_mib(*e))), num(ys(acc_pct(*e))), rd::colour_plain);
          out("<title>{}</title></circle>\n", rd::xml_escape(tip));
        }
      }
      out("</g>\n");

      // the best entry's label: above its dot (the highest), reaching towards the middle
      const SearchEntry& best = entries.front();
      if (std::isfinite(best.acc_mean) && std::isfinite(best.cost.comm_bytes)) {
        const double bx = xs(comm_mib(best)), by = ys(acc_pct(best));
        const bool left = bx > (x0 + x1) / 2;
        text(left ? bx + 6 : bx - 6, by - 9, fmt::format("#1 {}", rd::truncate(best.structure, 48)),
             fmt::format("text-anchor=\"{}\" font-weight=\"bold\" stroke=\"#ffffff\" stroke-width=\"3\" "
                         "paint-order=\"stroke\"",
                         left ? "end" : "start"));
      }
    }
    out("</g>\n");
  }

  // ---- right panel: the top K by accuracy ----
  {
    constexpr double x0 = 535, x1 = 965;
    out("<g id=\"top-k\">\n");
    text((x0 + x1) / 2, 24,
         k > 0 ? fmt::format("top {} by validation accuracy", k)
               : std::string("top structures by validation accuracy"),
         R"(text-anchor="middle" font-size="15" font-weight="bold")");
    if (k == 0) {
      text((x0 + x1) / 2, (y0 + y1) / 2, "no structures", R"(text-anchor="middle" fill="#666666")");
    } else {
      bool whiskers = false;
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (std::size_t i = 0; i < k; ++i) {
        const SearchEntry& e = entries[i];
        const double sd = e.runs > 1 && std::isfinite(e.acc_std) ? 100 * e.acc_std : 0.0;
        whiskers = whiskers || sd > 0;
        if (!std::isfinite(e.acc_mean)) continue;
        lo = std::min(lo, acc_pct(e) - sd);
        hi = std::max(hi, acc_pct(e) + sd);
      }
      if (!(lo <= hi)) {  // no finite accuracy among them
        lo = 0;
        hi = 100;
      }
      const rd::Ticks xt = rd::percent_ticks(lo, hi, 0.25, 0.05);
      const rd::LinearScale xs{xt.lo, xt.hi, x0, x1};
      text(x0, 45,
           whiskers ? "bar: mean over seeds, whisker: \u00b1 sample std; orange: on the Pareto front"
                    : "bar: validation accuracy; orange: on the Pareto front",
           "fill=\"#666666\"");

      out("<g id=\"top-k-axes\" font-size=\"10\">\n");
      for (const double v : xt.values) {
        vline(xs(v), y0, y1, rd::colour_grid);
        vline(xs(v), y1, y1 + 4, rd::colour_axis);
        text(xs(v), y1 + 16, fmt::format("{:.{}f}", v, xt.decimals), "text-anchor=\"middle\"");
      }
      hline(x0, x1, y1, rd::colour_axis);
      vline(x0, y0, y1, rd::colour_axis);
      out("</g>\n");
      text((x0 + x1) / 2, y1 + 36,
           xt.lo > 0
               ? fmt::format("validation accuracy (%), bars start at {:.{}f}, not 0", xt.lo, xt.decimals)
               : std::string("validation accuracy (%)"),
           "text-anchor=\"middle\"");

      const double row = (y1 - y0) / double(k);
      const double bar = std::min(22.0, row - 18);
      const double pad = (row - (14 + bar)) / 2;  // centres label and bar in the row
      out("<g id=\"top-k-bars\">\n");
      for (std::size_t i = 0; i < k; ++i) {
        const SearchEntry& e = entries[i];
        const double ty = y0 + double(i) * row + pad + 10, by = ty + 4;
        const bool sd = e.runs > 1 && std::isfinite(e.acc_std) && e.acc_std > 0;
        const std::string value = sd ? fmt::format("{:.2f} \u00b1 {:.2f} %", acc_pct(e), 100 * e.acc_std)
                                     : fmt::format("{:.2f} %", acc_pct(e));
        // about 6.2 px a character at this size: the structure gets what the rest leaves
        std::string label = fmt::format("#{} {} ", e.rank, rd::mask_hex(e.mask));
        const std::string extra =
            e.equivalent.empty() ? "" : fmt::format(" (+{} equivalent)", e.equivalent.size());
        const auto used = double(rd::text_width(label) + rd::text_width(extra) + rd::text_width(value) + 2);
        const auto room = static_cast<std::size_t>(std::max(8.0, (x1 - x0) / 6.2 - used));
        label += rd::truncate(e.structure, room) + extra;
        text(x0 + 2, ty, label);
        text(x1, ty, value, R"(text-anchor="end" fill="#444444")");
        if (std::isfinite(e.acc_mean)) {
          const double w = std::clamp(xs(acc_pct(e)) - x0, 0.0, x1 - x0);
          out("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\n", num(x0), num(by), num(w),
              num(bar), e.pareto ? rd::colour_front : rd::colour_plain);
        }
        if (sd && std::isfinite(e.acc_mean)) {
          const double a = std::clamp(xs(acc_pct(e) - 100 * e.acc_std), x0, x1);
          const double b = std::clamp(xs(acc_pct(e) + 100 * e.acc_std), x0, x1);
          const double cy = by + bar / 2, cap = std::min(5.0, bar / 2);
          out("<path d=\"M{0} {1}H{2}M{0} {3}V{4}M{2} {3}V{4}\" stroke=\"#222222\" stroke-width=\"1.2\" "
              "fill=\"none\"/>\n",
              num(a), num(cy), num(b), num(cy - cap), num(cy + cap));
        }
      }
      out("</g>\n");
    }
    out("</g>\n");
  }

  // ---- footer: what was searched, and how far the ranking can be trusted ----
  std::string footer = fmt::format("{} \u00b7 {} candidate masks, {} distinct functions trained",
                                   report.family, report.candidates, report.trained);
  if (report.trust)
    footer += fmt::format(" \u00b7 Kendall's tau between {} and {} epochs over the top {}: {:.3f}",
                          report.trust->short_epochs, report.trust->long_epochs, report.trust->masks.size(),
                          report.trust->tau);
  text(20, height - 10, footer, "fill=\"#666666\"");
  out("</svg>\n");
  return o;
}

inline void write_report_svg(const std::filesystem::path& path, const SearchReport& report) {
  write_file_atomically(path, std::string_view(report_svg(report)));
}

}  // namespace additive
