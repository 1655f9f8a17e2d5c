// The report module's SVG toolkit and histogram (include/additive/report/): how many
// bins, which bin each value falls in (equal values, values on bin edges, one value, out
// of range, NaN), and the bars draw_histogram writes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "additive/report/histogram.hpp"
#include "additive/report/svg.hpp"

namespace report = additive::report;

namespace {

/// The lines of `text`, without their line breaks.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

int total(const report::Histogram& h) { return std::accumulate(h.counts.begin(), h.counts.end(), 0); }

}  // namespace

TEST_CASE("histogram bins: 2 sqrt(n), within [5, 40]") {
  CHECK(report::histogram_bins(0) == 5);
  CHECK(report::histogram_bins(1) == 5);
  CHECK(report::histogram_bins(7) == 5);  // 2 sqrt(7) = 5.29
  CHECK(report::histogram_bins(64) == 16);
  CHECK(report::histogram_bins(100) == 20);
  CHECK(report::histogram_bins(400) == 40);
  CHECK(report::histogram_bins(100'000) == 40);
}

TEST_CASE("binning: values on bin edges go to the bin above, hi to the last bin") {
  // [0, 10] in 5 bins of 2: edges 0, 2, 4, 6, 8, 10
  const std::vector<double> v = {0, 2, 4, 6, 8, 10};
  const auto h = report::bin_values(v, 0, 10, 5);
  CHECK(h.bins() == 5);
  CHECK(h.bin_width == 2);
  CHECK(h.edge(0) == 0);
  CHECK(h.edge(5) == 10);
  CHECK(h.counts == std::vector<int>{1, 1, 1, 1, 2});
  // fractions counted as % (scale 100), 0.25 on the edge of the second bin
  CHECK(report::bin_values(std::vector<double>{0.25}, 0, 100, 4, 100).counts == std::vector<int>{0, 1, 0, 0});
  // just below an edge stays in the bin below it
  CHECK(report::bin_values(std::vector<double>{1.999, 3.999}, 0, 10, 5).counts ==
        std::vector<int>{1, 1, 0, 0, 0});
}

TEST_CASE("binning: all values equal, one value, out of range, NaN") {
  SUBCASE("all equal: one full bin") {
    const std::vector<double> v(9, 5.0);
    const auto h = report::bin_values(v, 0, 10, 5);
    CHECK(h.counts == std::vector<int>{0, 0, 9, 0, 0});
    CHECK(h.max_count() == 9);
  }
  SUBCASE("all equal, over the figures' range (percent_ticks of the values)") {
    const std::vector<double> v(30, 80.0);
    const auto t = report::percent_ticks(80, 80, 0.05, 0.05);
    REQUIRE(t.lo < 80);
    REQUIRE(t.hi > 80);
    const auto h = report::bin_values(v, t.lo, t.hi, report::histogram_bins(v.size()));
    CHECK(h.bins() == 10);
    CHECK(total(h) == 30);
    CHECK(h.max_count() == 30);
  }
  SUBCASE("one value") {
    const std::vector<double> v = {3.0};
    const auto h = report::bin_values(v, 0, 10, report::histogram_bins(v.size()));
    CHECK(h.counts == std::vector<int>{0, 1, 0, 0, 0});
  }
  SUBCASE("below lo and above hi: the end bins; NaN: not counted") {
    const std::vector<double> v = {-5, 15, std::numeric_limits<double>::quiet_NaN()};
    const auto h = report::bin_values(v, 0, 10, 5);
    CHECK(h.counts == std::vector<int>{1, 0, 0, 0, 1});
  }
  SUBCASE("no values; an empty range is read as [lo, lo + 1]") {
    CHECK(report::bin_values({}, 0, 10, 5).max_count() == 0);
    const auto h = report::bin_values(std::vector<double>{2.5}, 2, 2, 4);
    CHECK(h.hi == 3);
    CHECK(h.counts == std::vector<int>{0, 0, 1, 0});
  }
}

TEST_CASE("draw_histogram: a bar per non-empty bin, in a well-formed document") {
  report::SvgWriter svg(560, 440);
  const std::vector<double> v = {80.0, 80.0, 80.0, 81.3, 84.9};
  const auto xt = report::percent_ticks(80, 84.9, 0.05, 0.05);
  const report::PlotArea area{60, 520, 60, 370};
  const auto xs = report::draw_histogram(svg, v, xt, area);
  CHECK(xs(xt.lo) == 60);
  CHECK(xs(xt.hi) == 520);
  const std::string doc = std::move(svg).finish();
  CHECK(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"560\" height=\"440\""));
  CHECK(doc.ends_with("</svg>\n"));
  // the group: its opening line, then one <rect> line per non-empty bin, then </g>
  const auto lines = lines_of(doc);
  const auto g = std::find(lines.begin(), lines.end(), "<g id=\"histogram\">");
  REQUIRE(g != lines.end());
  const auto end = std::find(g, lines.end(), "</g>");
  REQUIRE(end != lines.end());
  CHECK(std::all_of(g + 1, end, [](const std::string& l) { return l.starts_with("<rect "); }));
  const auto h = report::bin_values(v, xt.lo, xt.hi, report::histogram_bins(v.size()));
  CHECK(end - g - 1 == std::count_if(h.counts.begin(), h.counts.end(), [](int c) { return c > 0; }));
  CHECK(end - g - 1 == 3);
  // the count grid runs to the largest count (3): its top label is "3"
  CHECK(doc.find(">3</text>") != std::string::npos);
  for (const auto& l : lines)
    if (l.starts_with("<text")) CHECK(l.ends_with("</text>"));
}

TEST_CASE("SvgWriter: escaped text, default stroke width, coordinates never -0.00") {
  report::SvgWriter svg(100.4, 50);
  svg.text(-0.001, 1.005, "a<b & \"c\"", R"(text-anchor="end")");
  svg.line(0, 1, 2, 3, report::colour_axis);
  const std::string doc = std::move(svg).finish();
  CHECK(doc.find("width=\"100\" height=\"50\" viewBox=\"0 0 100 50\"") != std::string::npos);
  CHECK(doc.find("<text x=\"0.00\" y=\"1.00\" text-anchor=\"end\">a&lt;b &amp; &quot;c&quot;</text>\n") !=
        std::string::npos);
  CHECK(doc.find("<line x1=\"0.00\" y1=\"1.00\" x2=\"2.00\" y2=\"3.00\" stroke=\"#444444\" "
                 "stroke-width=\"1\"/>\n") != std::string::npos);
}
