// The co-training figure (include/additive/exp/cotrain_report.hpp): well-formed SVG (a
// real XML parser reads it), one bar per accuracy given, one tick per co-trained
// structure in the distribution, names escaped, deterministic, written atomically.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "additive/exp/cotrain_report.hpp"

using namespace additive;
namespace fs = std::filesystem;

namespace {

std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

/// The text between <g id="name"> and its </g>.
std::string group(const std::string& svg, const std::string& name) {
  const auto start = svg.find("<g id=\"" + name + "\">");
  REQUIRE(start != std::string::npos);
  return svg.substr(start, svg.find("</g>", start) - start);
}

/// python3's xml.etree parses the file; the root is <svg> with `rects` <rect> elements.
void check_with_python(const fs::path& svg, std::size_t rects) {
  REQUIRE_MESSAGE(std::system("python3 -c 'import xml.etree.ElementTree' >/dev/null 2>&1") == 0,
                  "python3 with xml.etree is required to check the SVG and was not found on PATH");
  const std::string command =
      "python3 -c 'import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); "
      "n=\"{http://www.w3.org/2000/svg}\"; assert r.tag==n+\"svg\", r.tag; "
      "assert len(r.findall(\".//\"+n+\"rect\"))==int(sys.argv[2])' '" +
      svg.string() + "' " + std::to_string(rects);
  CHECK_MESSAGE(std::system(command.c_str()) == 0, "python3 rejected " << svg);
}

CoTrainFigure figure() {
  CoTrainFigure f{.family = "MlpFamily<4,2>", .mode = "local-sgd H 8", .structures = {}, .all = {}};
  f.structures.push_back(
      {.mask = 0x3f, .structure = "[1234] . [1234]", .accuracy = 0.82, .solo = 0.83, .cotrained = true});
  f.structures.push_back(
      {.mask = 0x15, .structure = "[1<2&3>4] \"q\"", .accuracy = 0.80, .solo = 0.81, .cotrained = true});
  f.structures.push_back(
      {.mask = 0x2a, .structure = "[12|34]", .accuracy = 0.79, .solo = std::nullopt, .cotrained = true});
  for (std::uint64_t m = 0; m < 64; ++m) {
    const bool co = m == 0x3f || m == 0x15 || m == 0x2a;
    f.all.push_back({.mask = m,
                     .structure = "s",
                     .accuracy = 0.70 + 0.002 * double(m),
                     .solo = std::nullopt,
                     .cotrained = co});
  }
  return f;
}

}  // namespace

TEST_CASE("co-training SVG: bars, distribution, escaped, well-formed, deterministic") {
  const auto f = figure();
  const std::string svg = cotrain_svg(f);
  CHECK(svg.starts_with("<svg"));
  CHECK(svg.ends_with("</svg>\n"));
  CHECK(svg.find("width=\"1000\" height=\"440\"") != std::string::npos);
  CHECK(count(svg, "<g ") == count(svg, "</g>"));
  CHECK(count(svg, "<text") == count(svg, "</text>"));
  // Two bars for each structure with an accuracy alone, one for the third.
  CHECK(count(group(svg, "bars"), "<rect") == 5);
  CHECK(count(group(svg, "bars"), std::string("fill=\"") + report::colour_front + "\"") == 2);
  // The histogram counts 64 structures; three ticks mark the co-trained ones.
  CHECK(count(group(svg, "cotrained"), "<line") == 3);
  CHECK(count(group(svg, "histogram"), "<rect") >= 5);
  CHECK(svg.find("[1&lt;2&amp;3&gt;4] &quot;q&quot;") != std::string::npos);
  CHECK(svg.find("[1<2") == std::string::npos);
  CHECK(svg.find("bars start at") != std::string::npos);
  CHECK(svg == cotrain_svg(f));

  const fs::path dir = fs::temp_directory_path() / "additive_test_cotrain_report";
  fs::create_directories(dir);
  write_cotrain_svg(dir / "cotrain.svg", f);
  std::ifstream in(dir / "cotrain.svg");
  CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == svg);
  // Every <rect>: the background, the bars, the histogram's non-empty bins.
  check_with_python(dir / "cotrain.svg", 1 + 5 + count(group(svg, "histogram"), "<rect"));

  SUBCASE("without the all-structures table: the bars alone, narrower") {
    auto g = f;
    g.all.clear();
    const std::string s = cotrain_svg(g);
    CHECK(s.find("width=\"560\"") != std::string::npos);
    CHECK(s.find("id=\"histogram\"") == std::string::npos);
    write_cotrain_svg(dir / "bars.svg", g);
    check_with_python(dir / "bars.svg", 1 + 5);
  }
  fs::remove_all(dir);
}
