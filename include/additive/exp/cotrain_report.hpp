// The co-training figure (cotrain.svg, next to cotrain.json and the CSVs the driver
// writes): per co-trained structure, its accuracy on the shared weights next to its
// accuracy trained alone (bars); and the distribution of every structure's accuracy on
// the shared weights, the co-trained ones marked. Drawn with the report module
// (report/svg.hpp, report/histogram.hpp).
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

#include "additive/io/atomic_file.hpp"
#include "additive/report/format.hpp"
#include "additive/report/histogram.hpp"
#include "additive/report/svg.hpp"

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
  using report::colour_front, report::colour_plain;
  const bool histogram = !f.all.empty();
  const double y0 = 60, y1 = 370;
  report::SvgWriter svg(histogram ? 1000 : 560, 440);
  // a bar from the x axis up to y: at least 0.5 px wide
  auto bar_rect = [&](double x, double y, double w, const char* colour) {
    svg.rect(x, y, std::max(0.5, w), std::max(0.0, y1 - y), colour);
  };

  {  // ---- left panel: co-trained vs alone, one pair of bars per structure ----
    const report::PlotArea area{60, 520, y0, y1};
    svg.panel_title(area, "co-trained structures: shared weights vs alone");
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
    const auto yt = report::percent_ticks(lo, hi, 0.3, 0.1);
    const report::LinearScale ys{yt.lo, yt.hi, y1, y0};
    svg.y_grid(area, yt, ys, yt.decimals);
    const double slot = (area.x1 - area.x0) / double(std::max<std::size_t>(1, f.structures.size()));
    const double bar = std::min(40.0, slot * 0.35);
    svg.out("<g id=\"bars\">\n");
    for (std::size_t i = 0; i < f.structures.size(); ++i) {
      const auto& e = f.structures[i];
      const double centre = area.x0 + slot * (double(i) + 0.5);
      bar_rect(centre - bar, ys(100 * e.accuracy), bar - 1, colour_plain);
      if (e.solo) bar_rect(centre + 1, ys(100 * *e.solo), bar - 1, colour_front);
      svg.text(centre, y1 + 16, report::mask_hex(e.mask), R"(text-anchor="middle")");
      if (f.structures.size() <= 8)
        svg.text(centre, y1 + 30, report::truncate(e.structure, static_cast<std::size_t>(slot / 6)),
                 R"(text-anchor="middle" fill="#666666" font-size="9")");
    }
    svg.out("</g>\n");
    svg.frame(area);
    svg.text(area.x0 + 8, y0 - 8, "blue: on the co-trained weights",
             fmt::format("fill=\"{}\"", colour_plain));
    svg.text(area.x1, y0 - 8, "orange: trained alone",
             fmt::format(R"(text-anchor="end" fill="{}")", colour_front));
    svg.text(area.x0 + 8, y1 - 6, fmt::format("bars start at {:.{}f}%", yt.lo, yt.decimals),
             R"(fill="#666666")");
    svg.text(18, area.centre_y(), "validation accuracy (%)",
             "text-anchor=\"middle\" transform=\"rotate(-90 18 215)\"");
  }
  if (histogram) {  // ---- right panel: every structure on the shared weights ----
    const report::PlotArea area{600, 970, y0, y1};
    svg.panel_title(area, "every structure on the shared weights");
    std::vector<double> accuracy;  // in [0, 1], drawn in %
    double lo = 100, hi = 0;
    for (const auto& e : f.all) {
      accuracy.push_back(e.accuracy);
      lo = std::min(lo, 100 * e.accuracy);
      hi = std::max(hi, 100 * e.accuracy);
    }
    const auto xs =
        report::draw_histogram(svg, accuracy, report::percent_ticks(lo, hi, 0.05, 0.05), area, 100);
    svg.out("<g id=\"cotrained\">\n");
    for (const auto& e : f.all)
      if (e.cotrained) {
        const double x = xs(100 * e.accuracy);
        svg.line(x, y1 + 2, x, y1 - 10, colour_front, R"(stroke-width="2")");
      }
    svg.out("</g>\n");
    svg.frame(area);
    svg.text(area.x1, y0 - 8, "orange ticks: the co-trained structures",
             fmt::format(R"(text-anchor="end" fill="{}")", colour_front));
    svg.text(area.centre_x(), y1 + 36, "validation accuracy (%)", R"(text-anchor="middle")");
    svg.text(area.x0 - 40, area.centre_y(), "structures",
             "text-anchor=\"middle\" transform=\"rotate(-90 560 215)\"");
  }
  svg.footer(fmt::format("{} \u00b7 {} \u00b7 {} structures co-trained{}", f.family, f.mode,
                         f.structures.size(),
                         histogram ? fmt::format(", {} evaluated", f.all.size()) : std::string()));
  return std::move(svg).finish();
}

/// Writes cotrain_svg(f) to `path` atomically.
inline void write_cotrain_svg(const std::filesystem::path& path, const CoTrainFigure& f) {
  write_file_atomically(path, std::string_view(cotrain_svg(f)));
}

}  // namespace additive
