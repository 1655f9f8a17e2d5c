// The SVG toolkit of the report figures (search, co-training, stochastic gating): XML
// escaping, coordinates, "nice" axis ticks, linear scales, the palette, and SvgWriter,
// which builds one self-contained document (header, text, lines, rectangles, axes,
// footer). Coordinates are SVG user units (px); y grows downwards. Output is
// deterministic: the same calls give the same bytes.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace additive::report {

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

/// An SVG coordinate: two decimals, never "-0.00" (non-finite values print as 0.00).
inline std::string num(double v) {
  if (!std::isfinite(v) || std::abs(v) < 0.005) v = 0;
  return fmt::format("{:.2f}", v);
}

/// Tick values 1, 2 or 5 x 10^k apart covering [lo, hi], about `target` of them.
struct Ticks {
  double lo = 0, hi = 1, step = 1;  ///< the first and last tick, and their spacing
  int decimals = 0;                 ///< enough to print every tick exactly
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

/// Accuracy ticks (in %): the range [lo, hi] of the values widened by the fractions
/// `below` and `above` of itself (at least 0.5 points), within [0, 100].
inline Ticks percent_ticks(double lo, double hi, double below, double above) {
  const double r = std::max(hi - lo, 0.5);
  return nice_ticks(std::max(0.0, lo - below * r), std::min(100.0, hi + above * r));
}

/// Linear map from a domain [d0, d1] to a pixel range [r0, r1] (r0 > r1 for y axes).
struct LinearScale {
  double d0, d1, r0, r1;
  double operator()(double v) const { return r0 + (v - d0) / (d1 - d0) * (r1 - r0); }
};

/// The palette: plain marks, highlighted marks (the Pareto front, trained alone, dense),
/// grid lines and axes.
inline constexpr const char* colour_plain = "#4c72b0";
inline constexpr const char* colour_front = "#dd8452";
inline constexpr const char* colour_front_dark = "#b0582a";
inline constexpr const char* colour_grid = "#e6e6e6";
inline constexpr const char* colour_axis = "#444444";

/// A circle drawn as a path (legend markers, so that the figure's <circle>s are its
/// entries).
inline std::string circle_path(double cx, double cy, double r) {
  return fmt::format("M{} {}m-{} 0a{} {} 0 1 0 {} 0a{} {} 0 1 0 -{} 0", num(cx), num(cy), num(r), num(r),
                     num(r), num(2 * r), num(r), num(r), num(2 * r));
}

/// The plot area of a panel, in px: x from x0 (left, the y axis) to x1, y from y0 (top)
/// to y1 (bottom, the x axis).
struct PlotArea {
  double x0, x1, y0, y1;
  double centre_x() const { return (x0 + x1) / 2; }
  double centre_y() const { return (y0 + y1) / 2; }
};

/// Builds one standalone SVG document: the constructor writes the <svg> element (sans-
/// serif, 11 px, dark text) and a white background, finish() closes it.
class SvgWriter {
 public:
  SvgWriter(double width, double height) : width_(width), height_(height) {
    out("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
        "font-family=\"sans-serif\" font-size=\"11\" fill=\"#222222\">\n",
        fmt::format("{:.0f}", width), fmt::format("{:.0f}", height));
    out("<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");
  }

  double width() const { return width_; }
  double height() const { return height_; }

  /// Raw markup, formatted with fmt (callers escape text with xml_escape).
  template <class... Args>
  void out(fmt::format_string<Args...> f, Args&&... args) {
    fmt::format_to(std::back_inserter(svg_), f, std::forward<Args>(args)...);
  }

  /// <text> at (x, y) (the baseline), `s` escaped, `attrs` (raw) after the position.
  void text(double x, double y, std::string_view s, std::string_view attrs = {}) {
    out("<text x=\"{}\" y=\"{}\"{}{}>{}</text>\n", num(x), num(y), attrs.empty() ? "" : " ", attrs,
        xml_escape(s));
  }

  /// A line from (xa, ya) to (xb, yb); `attrs` (raw) after the stroke colour.
  void line(double xa, double ya, double xb, double yb, std::string_view stroke,
            std::string_view attrs = R"(stroke-width="1")") {
    out("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" {}/>\n", num(xa), num(ya), num(xb),
        num(yb), stroke, attrs);
  }

  /// A filled rectangle, top left (x, y), size w x h.
  void rect(double x, double y, double w, double h, std::string_view fill) {
    out("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\n", num(x), num(y), num(w), num(h),
        fill);
  }

  /// A panel's title: bold, 15 px, centred above the area, 24 px from the top.
  void panel_title(const PlotArea& a, std::string_view s) {
    text(a.centre_x(), 24, s, R"(text-anchor="middle" font-size="15" font-weight="bold")");
  }

  /// A grey note in the middle of an area that has nothing to plot.
  void empty_note(const PlotArea& a, std::string_view s) {
    text(a.centre_x(), a.centre_y(), s, R"(text-anchor="middle" fill="#666666")");
  }

  /// The axes: the x axis along the bottom, then the y axis along the left.
  void frame(const PlotArea& a) {
    line(a.x0, a.y1, a.x1, a.y1, colour_axis);
    line(a.x0, a.y0, a.x0, a.y1, colour_axis);
  }

  /// Per y tick: a grid line across the area and its label (`decimals` after the point),
  /// right-aligned 6 px left of the axis, its baseline `dy` below the line.
  void y_grid(const PlotArea& a, const Ticks& t, const LinearScale& ys, int decimals, double dy = 4) {
    for (const double v : t.values) {
      line(a.x0, ys(v), a.x1, ys(v), colour_grid);
      text(a.x0 - 6, ys(v) + dy, fmt::format("{:.{}f}", v, decimals), R"(text-anchor="end")");
    }
  }

  /// Per x tick: its label, centred 16 px below the x axis.
  void x_labels(const PlotArea& a, const Ticks& t, const LinearScale& xs) {
    for (const double v : t.values)
      text(xs(v), a.y1 + 16, fmt::format("{:.{}f}", v, t.decimals), R"(text-anchor="middle")");
  }

  /// Per x tick: a grid line up the area, a 4 px tick mark below the axis, and its label.
  void x_grid(const PlotArea& a, const Ticks& t, const LinearScale& xs) {
    for (const double v : t.values) {
      line(xs(v), a.y0, xs(v), a.y1, colour_grid);
      line(xs(v), a.y1, xs(v), a.y1 + 4, colour_axis);
      text(xs(v), a.y1 + 16, fmt::format("{:.{}f}", v, t.decimals), R"(text-anchor="middle")");
    }
  }

  /// A grey line of text along the bottom left corner.
  void footer(std::string_view s) { text(20, height_ - 10, s, R"(fill="#666666")"); }

  /// Closes the <svg> element and hands over the document.
  std::string finish() && {
    out("</svg>\n");
    return std::move(svg_);
  }

 private:
  double width_, height_;
  std::string svg_;
};

}  // namespace additive::report
