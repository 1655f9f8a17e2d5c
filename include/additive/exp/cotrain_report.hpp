// The co-training figure (cotrain.svg, next to cotrain.json and the CSVs the driver
// writes): per co-trained structure, its accuracy on the shared weights next to its
// accuracy trained alone (bars); and the distribution of every structure's accuracy on
// the shared weights, the co-trained ones marked. Built with report.hpp's SVG helpers.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "additive/exp/report.hpp"
#include "additive/io/atomic_file.hpp"

namespace additive {

/// One structure of the figure.
struct CoTrainFigureEntry {
  std::uint64_t mask = 0;
  std::string structure;       ///< "[12|34] . [1234]"
  double accuracy = 0;         ///< on the co-trained weights, in [0, 1]
  std::optional<double> solo;  ///< trained alone (from the search), in [0, 1]
  bool cotrained = false;      ///< one of the K structures co-trained
};

struct CoTrainFigure {
  std::string family;
  std::string mode;                            ///< "synchronous" or "local-sgd H 8"
  std::vector<CoTrainFigureEntry> structures;  ///< the K co-trained structures, in rank order
  std::vector<CoTrainFigureEntry> all;         ///< every structure (may be empty: no right panel)
};

/// The figure as a standalone SVG document (deterministic: same input, same bytes).
inline std::string cotrain_svg(const CoTrainFigure& f) {
  namespace rd = detail::report;
  using rd::num;
  const bool histogram = !f.all.empty();
  const double width = histogram ? 1000 : 560, height = 440, y0 = 60, y1 = 370;
  std::string o;
  auto out = [&o](fmt::string_view fmt_text, auto&&... args) {
    fmt::vformat_to(std::back_inserter(o), fmt_text, fmt::make_format_args(args...));
  };
  auto text = [&](double x, double y, std::string_view s, std::string_view attrs = {}) {
    out("<text x=\"{}\" y=\"{}\"{}{}>{}</text>\n", num(x), num(y), attrs.empty() ? "" : " ", attrs,
        rd::xml_escape(s));
  };
  auto line = [&](double xa, double ya, double xb, double yb, const char* colour) {
    out("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"1\"/>\n", num(xa),
        num(ya), num(xb), num(yb), colour);
  };
  auto rect = [&](double x, double y, double w, double h, const char* colour) {
    out("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\n", num(x), num(y),
        num(std::max(0.5, w)), num(std::max(0.0, h)), colour);
  };
  out("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"11\" fill=\"#222222\">\n",
      fmt::format("{:.0f}", width), fmt::format("{:.0f}", height));
  out("<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");

  {  // ---- left panel: co-trained vs alone, one pair of bars per structure ----
    constexpr double x0 = 60, x1 = 520;
    text((x0 + x1) / 2, 24, "co-trained structures: shared weights vs alone",
         R"(text-anchor="middle" font-size="15" font-weight="bold")");
    double lo = 100, hi = 0;
    for (const auto& e : f.structures) {
      lo = std::min(lo, 100 * e.accuracy);
      hi = std::max(hi, 100 * e.accuracy);
      if (e.solo) {
        lo = std::min(lo, 100 * *e.solo);
        hi = std::max(hi, 100 * *e.solo);
      }
    }
    if (f.structures.empty()) {
      lo = 0;
      hi = 100;
    }
    const auto yt = rd::percent_ticks(lo, hi, 0.3, 0.1);
    const rd::LinearScale ys{yt.lo, yt.hi, y1, y0};
    for (const double v : yt.values) {
      line(x0, ys(v), x1, ys(v), rd::colour_grid);
      text(x0 - 6, ys(v) + 4, fmt::format("{:.{}f}", v, yt.decimals), R"(text-anchor="end")");
    }
    const double slot = (x1 - x0) / double(std::max<std::size_t>(1, f.structures.size()));
    const double bar = std::min(40.0, slot * 0.35);
    out("<g id=\"bars\">\n");
    for (std::size_t i = 0; i < f.structures.size(); ++i) {
      const auto& e = f.structures[i];
      const double centre = x0 + slot * (double(i) + 0.5);
      rect(centre - bar, ys(100 * e.accuracy), bar - 1, y1 - ys(100 * e.accuracy), rd::colour_plain);
      if (e.solo) rect(centre + 1, ys(100 * *e.solo), bar - 1, y1 - ys(100 * *e.solo), rd::colour_front);
      text(centre, y1 + 16, rd::mask_hex(e.mask), R"(text-anchor="middle")");
      if (f.structures.size() <= 8)
        text(centre, y1 + 30, rd::truncate(e.structure, static_cast<std::size_t>(slot / 6)),
             R"(text-anchor="middle" fill="#666666" font-size="9")");
    }
    out("</g>\n");
    line(x0, y1, x1, y1, rd::colour_axis);
    line(x0, y0, x0, y1, rd::colour_axis);
    text(x0 + 8, y0 - 8, "blue: on the co-trained weights", std::string("fill=\"") + rd::colour_plain + "\"");
    text(x1, y0 - 8, "orange: trained alone",
         std::string("text-anchor=\"end\" fill=\"") + rd::colour_front + "\"");
    text(x0 + 8, y1 - 6, fmt::format("bars start at {:.{}f}%", yt.lo, yt.decimals), R"(fill="#666666")");
    text(18, (y0 + y1) / 2, "validation accuracy (%)",
         "text-anchor=\"middle\" transform=\"rotate(-90 18 215)\"");
  }
  if (histogram) {  // ---- right panel: every structure on the shared weights ----
    constexpr double x0 = 600, x1 = 970;
    text((x0 + x1) / 2, 24, "every structure on the shared weights",
         R"(text-anchor="middle" font-size="15" font-weight="bold")");
    double lo = 100, hi = 0;
    for (const auto& e : f.all) {
      lo = std::min(lo, 100 * e.accuracy);
      hi = std::max(hi, 100 * e.accuracy);
    }
    const auto xt = rd::percent_ticks(lo, hi, 0.05, 0.05);
    const rd::LinearScale xs{xt.lo, xt.hi, x0, x1};
    const int bins = std::clamp(static_cast<int>(std::sqrt(double(f.all.size())) * 2), 5, 40);
    std::vector<int> count(static_cast<std::size_t>(bins), 0);
    const double bw = (xt.hi - xt.lo) / bins;
    for (const auto& e : f.all)
      ++count[static_cast<std::size_t>(
          std::clamp(static_cast<int>((100 * e.accuracy - xt.lo) / bw), 0, bins - 1))];
    const int top = std::max(1, *std::max_element(count.begin(), count.end()));
    const auto yt = rd::nice_ticks(0, top, 4);
    const rd::LinearScale ys{0, yt.hi, y1, y0};
    for (const double v : yt.values) {
      line(x0, ys(v), x1, ys(v), rd::colour_grid);
      text(x0 - 6, ys(v) + 4, fmt::format("{:.0f}", v), R"(text-anchor="end")");
    }
    for (const double v : xt.values)
      text(xs(v), y1 + 16, fmt::format("{:.{}f}", v, xt.decimals), R"(text-anchor="middle")");
    out("<g id=\"histogram\">\n");
    for (int b = 0; b < bins; ++b) {
      const auto c = count[static_cast<std::size_t>(b)];
      if (c == 0) continue;
      const double xa = xs(xt.lo + b * bw), xb = xs(xt.lo + (b + 1) * bw);
      rect(xa + 0.5, ys(c), xb - xa - 1, y1 - ys(c), rd::colour_plain);
    }
    out("</g>\n<g id=\"cotrained\">\n");
    for (const auto& e : f.all)
      if (e.cotrained) {
        const double x = xs(100 * e.accuracy);
        out("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"2\"/>\n", num(x),
            num(y1 + 2), num(y1 - 10), rd::colour_front);
      }
    out("</g>\n");
    line(x0, y1, x1, y1, rd::colour_axis);
    line(x0, y0, x0, y1, rd::colour_axis);
    text(x1, y0 - 8, "orange ticks: the co-trained structures",
         std::string("text-anchor=\"end\" fill=\"") + rd::colour_front + "\"");
    text((x0 + x1) / 2, y1 + 36, "validation accuracy (%)", R"(text-anchor="middle")");
    text(x0 - 40, (y0 + y1) / 2, "structures", "text-anchor=\"middle\" transform=\"rotate(-90 560 215)\"");
  }
  text(20, height - 10,
       fmt::format("{} \u00b7 {} \u00b7 {} structures co-trained{}", f.family, f.mode, f.structures.size(),
                   histogram ? fmt::format(", {} evaluated", f.all.size()) : std::string()),
       "fill=\"#666666\"");
  out("</svg>\n");
  return o;
}

/// Writes cotrain_svg(f) to `path` atomically.
inline void write_cotrain_svg(const std::filesystem::path& path, const CoTrainFigure& f) {
  write_file_atomically(path, std::string_view(cotrain_svg(f)));
}

}  // namespace additive
