// The histogram of the report figures (the stochastic-gating and co-training figures:
// how many structures reach each accuracy): bin_values() counts values in equal bins,
// draw_histogram() draws the bars with their count grid and x labels into an SvgWriter.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "additive/report/svg.hpp"

namespace additive::report {

/// Bins for n values: 2 sqrt(n), within [5, 40].
inline int histogram_bins(std::size_t n) {
  return std::clamp(static_cast<int>(std::sqrt(double(n)) * 2), 5, 40);
}

/// Counts of values in equal bins over [lo, hi].
struct Histogram {
  double lo = 0, hi = 1;    ///< the range the bins cover
  double bin_width = 1;     ///< (hi - lo) / bins
  std::vector<int> counts;  ///< one per bin, from lo up

  int bins() const { return static_cast<int>(counts.size()); }
  /// The left edge of bin `b` (b = bins(): the right edge of the last one).
  double edge(int b) const { return lo + b * bin_width; }
  /// The largest count (0 when there are no bins).
  int max_count() const { return counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end()); }
};

/// `values` counted in `bins` equal bins over [lo, hi], each value as `scale` * v (100:
/// fractions counted as %). Pass the values as the figure holds them: the product is
/// taken here, inside the binning expression, so that a value on a bin edge falls where
/// the figures have always put it. hi <= lo is read as lo + 1, bins < 1 as 1. Bin b holds
/// edge(b) <= scale * v < edge(b + 1): a value on an inner edge falls in the bin above
/// it. Values below lo count in the first bin, values at or above hi in the last; NaN is
/// not counted.
inline Histogram bin_values(std::span<const double> values, double lo, double hi, int bins,
                            double scale = 1) {
  bins = std::max(bins, 1);
  if (!(hi > lo)) hi = lo + 1;
  Histogram h{
      .lo = lo, .hi = hi, .bin_width = (hi - lo) / bins, .counts = std::vector<int>(std::size_t(bins), 0)};
  for (const double v : values) {
    if (std::isnan(v)) continue;
    const double q = (scale * v - lo) / h.bin_width;
    const int b = q < 0 ? 0 : q >= bins ? bins - 1 : static_cast<int>(q);
    ++h.counts[static_cast<std::size_t>(b)];
  }
  return h;
}

/// Draws the histogram of `values` (bin_values with `scale`, histogram_bins(values.size())
/// bins over [xt.lo, xt.hi]) in `area`: the count grid with labels on the left (about 4
/// ticks, at least up to 1), the x tick labels below, and a bar per non-empty bin
/// (`fill`, 1 px apart) in <g id="histogram">. The axes themselves are left to the caller
/// (svg.frame), who may draw marks over the bars first. Returns the x scale (scale * value
/// -> px) for such marks.
inline LinearScale draw_histogram(SvgWriter& svg, std::span<const double> values, const Ticks& xt,
                                  const PlotArea& area, double scale = 1,
                                  std::string_view fill = colour_plain) {
  const LinearScale xs{xt.lo, xt.hi, area.x0, area.x1};
  const Histogram h = bin_values(values, xt.lo, xt.hi, histogram_bins(values.size()), scale);
  const auto yt = nice_ticks(0, std::max(1, h.max_count()), 4);
  const LinearScale ys{0, yt.hi, area.y1, area.y0};
  svg.y_grid(area, yt, ys, 0);
  svg.x_labels(area, xt, xs);
  svg.out("<g id=\"histogram\">\n");
  for (int b = 0; b < h.bins(); ++b) {
    const int c = h.counts[static_cast<std::size_t>(b)];
    if (c == 0) continue;
    const double xa = xs(h.edge(b)), xb = xs(h.edge(b + 1));
    svg.rect(xa + 0.5, ys(c), std::max(0.5, xb - xa - 1), std::max(0.0, area.y1 - ys(c)), fill);
  }
  svg.out("</g>\n");
  return xs;
}

}  // namespace additive::report
