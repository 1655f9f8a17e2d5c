// The outputs of a structure search: leaderboard, JSON, CSV, top-K list and SVG, on a
// hand-built report whose Pareto front is derived by hand.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/exp/report.hpp"

namespace fs = std::filesystem;
using additive::SearchEntry;
using additive::SearchReport;

namespace {

constexpr double mib = 1024.0 * 1024.0;

SearchEntry entry(int rank, std::uint64_t mask, std::string structure, int runs, double acc, double acc_std,
                  double comm_mib) {
  SearchEntry e;
  e.rank = rank;
  e.mask = mask;
  e.structure = std::move(structure);
  e.runs = runs;
  e.acc_mean = acc;
  e.acc_std = acc_std;
  e.loss_mean = 0.05 + 0.01 * rank;
  e.loss_std = runs > 1 ? 0.002 : 0.0;
  e.cost.active_params = 1'260'000 - 100'000 * rank;
  e.cost.flops_per_sample = 2.52e6 - 1e5 * rank;
  e.cost.allreduces = 8 - rank;
  e.cost.comm_bytes = comm_mib * mib;
  e.cost.comm_seconds = e.cost.comm_bytes / 25e9 + 1e-5 * (8 - rank);
  return e;
}

// Front by hand, (accuracy, MiB):
//   1 (98.5, 3)    front: the most accurate
//   2 (98.3, 1)    front: less communication than 1
//   3 (98.3, 2)    dominated by 2 (same accuracy, more communication)
//   4 (97.5, 0.25) front
//   5 (97.0, 0.25) dominated by 4 (same communication, less accurate)
//   6 (95.0, 0)    front: the cheapest
const std::vector<bool> expected_front = {true, true, false, true, false, true};

SearchReport sample_report() {
  SearchReport r;
  r.family = "MLP, 2 blocks, 4 shards";
  r.candidates = 225;
  r.trained = 140;
  r.top_k = 4;
  r.entries = {entry(1, 0x2d, "[12|34] . [1|234]", 3, 0.985, 0.001, 3.0),
               entry(2, 0x1b, "[1234] . [12|34]", 3, 0.983, 0.002, 1.0),
               entry(3, 0x0f, "[1|234] . [1234]", 3, 0.983, 0.0015, 2.0),
               entry(4, 0x33, "[1|2|34] . [12|3|4]", 1, 0.975, 0.0, 0.25),
               entry(5, 0x07, "[1|2|3|4] . [12|34]", 1, 0.970, 0.0, 0.25),
               entry(6, 0x00, "[1|2|3|4] . [1|2|3|4]", 1, 0.950, 0.0, 0.0)};
  r.entries[0].equivalent = {0x2e, 0x31};
  additive::mark_pareto(r.entries);
  additive::RankTrust t;
  t.short_epochs = 3;
  t.long_epochs = 12;
  t.masks = {0x2d, 0x1b, 0x0f, 0x33};
  t.short_acc = {0.985, 0.983, 0.983, 0.975};
  t.long_acc = {0.990, 0.989, 0.986, 0.981};
  t.tau = 0.9128709;
  r.trust = t;
  return r;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::size_t count(std::string_view text, std::string_view what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string_view::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

/// RFC 4180 records of `text` ("\n" line ends, quoted fields may hold anything).
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> record;
  std::string field;
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      record.push_back(std::move(field));
      field.clear();
    } else if (c == '\n') {
      record.push_back(std::move(field));
      field.clear();
      records.push_back(std::move(record));
      record.clear();
    } else {
      field += c;
    }
  }
  REQUIRE_MESSAGE(field.empty(), "the CSV does not end with a line break");
  REQUIRE_MESSAGE(!quoted, "the CSV ends inside a quoted field");
  return records;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A fresh directory, removed at the end of the scope.
struct TempDir {
  fs::path path;
  explicit TempDir(std::string_view name)
      : path(fs::temp_directory_path() /
             (std::string("additive_test_report_") + std::string(name) + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

/// Parses `svg` with python3's xml.etree (a real XML parser): the root must be an SVG
/// element with `circles` <circle> elements. python3 is part of every supported setup,
/// so its absence fails the test.
void check_with_python(const fs::path& svg, std::size_t circles) {
  REQUIRE_MESSAGE(std::system("python3 -c 'import xml.etree.ElementTree' >/dev/null 2>&1") == 0,
                  "python3 with xml.etree is required to check the SVG and was not found on PATH");
  const std::string command =
      "python3 -c 'import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); "
      "n=\"{http://www.w3.org/2000/svg}\"; assert r.tag==n+\"svg\", r.tag; "
      "assert len(r.findall(\".//\"+n+\"circle\"))==int(sys.argv[2])' '" +
      svg.string() + "' " + std::to_string(circles);
  CHECK_MESSAGE(std::system(command.c_str()) == 0, "python3 rejected " << svg);
}

}  // namespace

TEST_CASE("formatting helpers") {
  namespace report = additive::report;
  CHECK(report::human_count(950) == "950");
  CHECK(report::human_count(12'345) == "12.3k");
  CHECK(report::human_count(1'264'000) == "1.26M");
  CHECK(report::human_count(999'600) == "1.00M");  // rounds into the next unit, not "1000k"
  CHECK(report::human_bytes(0) == "0 B");
  CHECK(report::human_bytes(512) == "512 B");
  CHECK(report::human_bytes(1536) == "1.50 KiB");
  CHECK(report::human_bytes(12.0 * mib) == "12.0 MiB");
  CHECK(report::mask_hex(0x2d) == "0x2d");
  CHECK(report::xml_escape("a<b>&\"c'\x01") == "a&lt;b&gt;&amp;&quot;c&apos;?");
  CHECK(report::csv_field("plain") == "plain");
  CHECK(report::csv_field("a,b") == "\"a,b\"");
  CHECK(report::truncate("short", 10) == "short");
  CHECK(report::truncate("[12|34] . [1234]", 10) == "[12|34]\u2026");
  CHECK(report::text_width("\u00b1 \u00b5s") == 4);
  const report::Ticks t = report::nice_ticks(97.3, 98.6);
  CHECK(t.step == doctest::Approx(0.5));  // 1.3 / 5 = 0.26 -> 0.5
  CHECK(t.lo == doctest::Approx(97.0));
  CHECK(t.hi == doctest::Approx(99.0));
  CHECK(t.decimals == 1);
  CHECK(t.values.size() == 5);
  const report::Ticks big = report::nice_ticks(0, 3.12);
  CHECK(big.step == 1);
  CHECK(big.hi == 4);
  CHECK(big.decimals == 0);
}

TEST_CASE("mark_pareto: the hand-derived front of the sample report") {
  const SearchReport r = sample_report();
  REQUIRE(r.entries.size() == expected_front.size());
  for (std::size_t i = 0; i < r.entries.size(); ++i) {
    INFO("entry ", i + 1);
    CHECK(r.entries[i].pareto == expected_front[i]);
  }
}

TEST_CASE("mark_pareto: ties, duplicates and NaN") {
  auto e = [](double acc, double comm) {
    SearchEntry x;
    x.acc_mean = acc;
    x.cost.comm_bytes = comm;
    x.pareto = true;  // must be overwritten either way
    return x;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<SearchEntry> v = {
      e(0.90, 10),  // front: ties with the next one, which does not dominate it
      e(0.90, 10),  // front
      e(0.90, 12),  // dominated by the two above (same accuracy, more communication)
      e(0.80, 5),   // dominated by the next (same communication, less accurate)
      e(0.85, 5),   // front
      e(0.95, 20),  // front: the most accurate
      e(0.70, 0),   // front: the cheapest
      e(0.70, 1),   // dominated by the one above
      e(nan, 0),    // never on the front, and dominates nothing
  };
  additive::mark_pareto(v);
  const std::vector<bool> want = {true, true, false, false, true, true, true, false, false};
  for (std::size_t i = 0; i < v.size(); ++i) {
    INFO("entry ", i);
    CHECK(v[i].pareto == want[i]);
  }

  std::vector<SearchEntry> one = {e(0.5, 100)};
  one[0].pareto = false;
  additive::mark_pareto(one);
  CHECK(one[0].pareto);
  std::vector<SearchEntry> none;
  additive::mark_pareto(none);
}

TEST_CASE("leaderboard: rows in rank order, front marks, footer and trust line") {
  const SearchReport r = sample_report();
  const std::string text = additive::leaderboard_text(r, 10);
  const auto lines = lines_of(text);
  MESSAGE("\n" << text);

  std::size_t header = lines.size();
  for (std::size_t i = 0; i < lines.size(); ++i)
    if (lines[i].find("rank") != std::string::npos && lines[i].find("structure") != std::string::npos)
      header = i;
  REQUIRE(header < lines.size());

  std::size_t previous = header;
  for (std::size_t i = 0; i < r.entries.size(); ++i) {
    const SearchEntry& e = r.entries[i];
    const std::string prefix = std::to_string(e.rank) + "  " + fmt::format("{:#x}", e.mask);
    std::size_t at = lines.size();
    for (std::size_t l = header + 1; l < lines.size(); ++l) {
      const auto first = lines[l].find_first_not_of(' ');
      if (first != std::string::npos && lines[l].compare(first, prefix.size(), prefix) == 0) at = l;
    }
    INFO("rank ", e.rank);
    REQUIRE(at < lines.size());
    CHECK(at == previous + 1);  // consecutive, best first
    previous = at;
    const std::string& row = lines[at];
    CHECK(row.find(e.structure) != std::string::npos);
    CHECK(row.ends_with("*") == expected_front[i]);
    CHECK((row.find("±") != std::string::npos) == (e.runs > 1));
  }
  const std::string& first_row = lines[header + 1];
  CHECK(first_row.find("1.26M") == std::string::npos);  // rank 1 has 1.16M
  CHECK(first_row.find("1.16M") != std::string::npos);
  CHECK(first_row.find("3.00 MiB") != std::string::npos);
  CHECK(first_row.find("98.50 ± 0.10") != std::string::npos);
  CHECK(first_row.find("+2") != std::string::npos);
  CHECK(lines[header + 4].find("256 KiB") != std::string::npos);
  CHECK(lines[header + 6].find("0 B") != std::string::npos);
  // aligned: every front mark sits under the "front" header (widths in code points: ± and µ)
  const auto width = [](std::string_view s) { return additive::report::text_width(s); };
  const auto mark_column = width(std::string_view(lines[header]).substr(0, lines[header].find("front")));
  for (std::size_t i = 0; i < r.entries.size(); ++i)
    if (expected_front[i]) CHECK(width(lines[header + 1 + i]) == mark_column + 1);

  CHECK(text.find("front *: on the Pareto front") != std::string::npos);
  CHECK(text.find("Kendall's tau between 3 and 12 epochs over the top 4: 0.913\n") != std::string::npos);
  CHECK(text.find("not shown") == std::string::npos);
  for (const auto& line : lines) CHECK(!line.ends_with(" "));

  const std::string short_board = additive::leaderboard_text(r, 3);
  CHECK(short_board.find("[1|2|34] . [12|3|4]") == std::string::npos);
  CHECK(short_board.find("(3 more structures not shown)") != std::string::npos);

  SearchReport empty;
  empty.family = "f";
  CHECK(additive::leaderboard_text(empty, 5).find("no structures ranked") != std::string::npos);
}

/// The sample report with paired statistics and gate effects, as a search adds them.
SearchReport paired_report() {
  SearchReport r = sample_report();
  const double diffs[] = {0, -0.002, -0.002, -0.010, -0.015, -0.035};
  for (std::size_t i = 0; i < r.entries.size(); ++i) {
    auto& e = r.entries[i];
    e.diff = diffs[i];
    e.diff_lo = i == 0 ? 0 : diffs[i] - 0.004;
    e.diff_hi = i == 0 ? 0 : diffs[i] + 0.004;
    e.p_adjusted = i == 0 ? 1 : (i < 3 ? 0.4 : 0.001);
    e.top_group = i < 3;
  }
  additive::PairedSummary p;
  p.test = "paired bootstrap (Wald, bootstrap standard error)";
  p.interval = "paired bootstrap percentile";
  p.seeds = 3;
  p.images = 5000;
  p.resamples = 2000;
  p.top_group = 3;
  p.seed_tau = 0.5;
  r.paired = p;
  additive::GateEffectSummary g;
  g.terms = {{"b1 1+2", 0.0123, 0.0051, 0.0195, 0.001}, {"b2 res", -0.0011, -0.0040, 0.0018, 0.4}};
  g.r2 = 0.83;
  g.r2_main = 0.8;
  g.residual_df = 10;
  r.gate_effects = g;
  return r;
}

TEST_CASE(
    "leaderboard with paired statistics: difference to #1 with its interval, the top group, gate effects") {
  const SearchReport r = paired_report();
  const std::string text = additive::leaderboard_text(r, 10);
  MESSAGE("\n" << text);
  const auto lines = lines_of(text);
  std::size_t header = lines.size();
  for (std::size_t i = 0; i < lines.size(); ++i)
    if (lines[i].find("rank") != std::string::npos && lines[i].find("vs #1, points") != std::string::npos)
      header = i;
  REQUIRE(header < lines.size());
  CHECK(lines[header + 1].find("leader") != std::string::npos);
  CHECK(lines[header + 2].find("-0.20 [-0.60, +0.20]") != std::string::npos);
  CHECK(lines[header + 4].find("-1.00 [-1.40, -0.60]") != std::string::npos);
  // "=" marks the top group, in its own column under "top".
  const auto width = [](std::string_view s) { return additive::report::text_width(s); };
  const auto top_column = width(std::string_view(lines[header]).substr(0, lines[header].find("top")));
  for (std::size_t i = 0; i < r.entries.size(); ++i) {
    const std::string& row = lines[header + 1 + i];
    const auto at = row.find('=');
    const bool marked = at != std::string::npos && width(std::string_view(row).substr(0, at)) == top_column;
    INFO("rank ", i + 1, ": ", row);
    CHECK(marked == r.entries[i].top_group);
    CHECK(row.ends_with("*") == expected_front[i]);
  }
  CHECK(text.find(
            "top =: the 3 of 6 structures that cannot be told apart from #1 (Holm-adjusted p >= 0.05 over 5 "
            "comparisons; paired bootstrap (Wald, bootstrap standard error), 2000 resamples)") !=
        std::string::npos);
  CHECK(text.find("resolution: 5000 validation images x 3 seeds: one image is 0.020 points") !=
        std::string::npos);
  CHECK(text.find("Kendall's tau between the seeds' rankings (mean over pairs): 0.500") != std::string::npos);
  CHECK(text.find("explain 83% of the variance between structures, main effects alone 80%") !=
        std::string::npos);
  CHECK(text.find("  b1 1+2  +1.23 [+0.51, +1.95]  *\n") != std::string::npos);
  CHECK(text.find("  b2 res  -0.11 [-0.40, +0.18]\n") != std::string::npos);
  for (const auto& line : lines) CHECK(!line.ends_with(" "));

  const nlohmann::json j = additive::to_json(r);
  CHECK(j.at("paired").at("top_group") == 3);
  CHECK(j.at("paired").at("correction") == "Holm");
  CHECK(j.at("entries").at(3).at("diff_lo") == -0.014);
  CHECK(j.at("entries").at(1).at("top_group") == true);
  CHECK(j.at("gate_effects").at("terms").at(0).at("term") == "b1 1+2");
  const auto records = parse_csv(additive::results_csv(r));
  CHECK(records.at(4).at(16) == "-0.014");
  CHECK(records.at(2).at(19) == "true");
}

TEST_CASE("a raced report: each entry's budget, cut marks, the race in every output, the gate-effect chart") {
  SearchReport r = paired_report();
  // Rung 1: all 6 at 1 seed x 1 epoch, top group 5, the best 3 go on; rung 2: 3 x 2 epochs.
  r.eta = 2;
  r.rungs = {{.seeds = 1, .epochs = 1, .structures = 6, .top_group = 5, .kept = 3, .seed_tau = std::nan("")},
             {.seeds = 3, .epochs = 2, .structures = 3, .top_group = 3, .kept = 0, .seed_tau = 0.25}};
  const double screen[] = {0.90, 0.91, 0.89, 0.92, 0.88, 0.85};
  for (std::size_t i = 0; i < r.entries.size(); ++i) {
    auto& e = r.entries[i];
    e.rung = i < 3 ? 1 : 0;
    e.runs = i < 3 ? 3 : 1;
    e.epochs = i < 3 ? 2 : 1;
    e.screen_acc = screen[i];
    e.cut = i == 3;
    e.top_group = i < 3;
  }
  // The front compares the first rung's accuracies: (0.92, 0.25 MiB) and (0.85, 0 MiB).
  additive::mark_pareto(r.entries);
  for (std::size_t i = 0; i < r.entries.size(); ++i) CHECK(r.entries[i].pareto == (i == 3 || i == 5));

  const std::string text = additive::leaderboard_text(r, 10);
  MESSAGE("\n" << text);
  const auto lines = lines_of(text);
  std::size_t header = lines.size();
  for (std::size_t i = 0; i < lines.size(); ++i)
    if (lines[i].find("seeds x epochs") != std::string::npos && header == lines.size()) header = i;
  REQUIRE(header < lines.size());
  CHECK(lines[header].find("vs its rung's #1, points") != std::string::npos);
  CHECK(lines[header + 1].find(" 3x2 ") != std::string::npos);
  CHECK(lines[header + 4].find(" 1x1 ") != std::string::npos);
  CHECK(lines[header + 4].find(" cut ") != std::string::npos);
  CHECK(lines[header + 5].find(" cut ") == std::string::npos);
  CHECK(text.find("rung 1: 6 structures x 1 seed x 1 epoch: top group 5, 3 went on\n") != std::string::npos);
  CHECK(text.find("rung 2: 3 structures x 3 seeds x 2 epochs: top group 3, seed tau 0.250\n") !=
        std::string::npos);
  CHECK(text.find("at most 1/2 of its structures") != std::string::npos);
  CHECK(text.find(
            "top =: the 3 of 3 structures of the last rung that cannot be told apart from #1 (Holm-adjusted "
            "p >= 0.05 over 2 comparisons") != std::string::npos);
  CHECK(text.find("front *: on the Pareto front of (max val accuracy at the first rung") !=
        std::string::npos);
  CHECK(text.find("gate effects on val accuracy at 1x1, the first rung") != std::string::npos);
  for (const auto& line : lines) CHECK(!line.ends_with(" "));

  const nlohmann::json j = additive::to_json(r);
  CHECK(j.at("eta") == 2);
  CHECK(j.at("rungs").size() == 2);
  CHECK(j.at("rungs").at(0).at("kept") == 3);
  CHECK(j.at("rungs").at(0).at("seed_tau").is_null());
  CHECK(j.at("entries").at(3).at("cut") == true);
  CHECK(j.at("entries").at(3).at("rung") == 0);
  CHECK(j.at("entries").at(0).at("epochs") == 2);
  CHECK(j.at("entries").at(0).at("screen_acc") == 0.90);
  const auto records = parse_csv(additive::results_csv(r));
  REQUIRE(records.at(0).size() == 24);
  CHECK(records.at(0).at(20) == "epochs");
  CHECK(records.at(4).at(20) == "1");
  CHECK(records.at(4).at(21) == "0");
  CHECK(records.at(4).at(22) == "true");
  CHECK(records.at(4).at(23) == "0.92");

  const std::string svg = additive::report_svg(r);
  CHECK(svg.find("id=\"gate-effects\"") != std::string::npos);
  CHECK(svg.find("gate effects on validation accuracy at 1x1 (the first rung)") != std::string::npos);
  CHECK(svg.find("<title>b1 1+2: +1.23 points [+0.51, +1.95]</title>") != std::string::npos);
  CHECK(svg.find("<title>b2 res: -0.11 points [-0.40, +0.18]</title>") != std::string::npos);
  CHECK(svg.find("height=\"440\"") == std::string::npos);  // the chart adds rows below
  // The scatter is at the first rung's accuracy; whiskers only for the last rung's entries
  // (top 4: #2 and #3; #4 was compared with another rung's leader).
  CHECK(svg.find("#4 0x33 [1|2|34] . [12|3|4]: 92.00% val accuracy") != std::string::npos);
  CHECK(count(svg, "stroke=\"#222222\" stroke-width=\"1.2\"") == 2);
  CHECK(svg.find("validation accuracy (%) at 1x1 (the first rung)") != std::string::npos);
  TempDir dir("raced");
  additive::write_report_svg(dir.path / "raced.svg", r);
  check_with_python(dir.path / "raced.svg", r.entries.size());
  if (const char* keep = std::getenv("ADDITIVE_KEEP_REPORT_SVG"))
    additive::write_report_svg(fs::path(keep) / "raced.svg", r);
}

TEST_CASE("JSON: the full report, and run records that read back") {
  const SearchReport r = sample_report();
  const nlohmann::json j = additive::to_json(r);
  CHECK(j.at("family") == r.family);
  CHECK(j.at("candidates") == 225);
  CHECK(j.at("trained") == 140);
  CHECK(j.at("top_k") == 4);
  REQUIRE(j.at("entries").size() == 6);
  const auto& e0 = j.at("entries")[0];
  CHECK(e0.at("mask").is_number_unsigned());
  CHECK(e0.at("mask") == 0x2d);
  CHECK(e0.at("mask_hex") == "0x2d");
  CHECK(e0.at("equivalent") == nlohmann::json::array({0x2e, 0x31}));
  CHECK(e0.at("runs") == 3);
  CHECK(e0.at("acc_mean").get<double>() == r.entries[0].acc_mean);
  CHECK(e0.at("loss_std").get<double>() == r.entries[0].loss_std);
  CHECK(e0.at("cost").at("active_params") == r.entries[0].cost.active_params);
  CHECK(e0.at("cost").at("comm_bytes").get<double>() == r.entries[0].cost.comm_bytes);
  CHECK(e0.at("cost").at("comm_seconds").get<double>() == r.entries[0].cost.comm_seconds);
  CHECK(e0.at("cost").at("allreduces") == r.entries[0].cost.allreduces);
  CHECK(e0.at("cost").at("flops_per_sample").get<double>() == r.entries[0].cost.flops_per_sample);
  for (std::size_t i = 0; i < 6; ++i) CHECK(j.at("entries")[i].at("pareto") == expected_front[i]);
  CHECK(j.at("trust").at("tau").get<double>() == r.trust->tau);
  CHECK(j.at("trust").at("masks") == nlohmann::json::array({0x2d, 0x1b, 0x0f, 0x33}));
  CHECK(j.at("trust").at("long_epochs") == 12);

  SearchReport no_trust = r;
  no_trust.trust.reset();
  CHECK(additive::to_json(no_trust).at("trust").is_null());
  nlohmann::json via_adl = no_trust;  // the two-argument form, found by nlohmann through ADL
  CHECK(via_adl == additive::to_json(no_trust));

  additive::RunRecord run;
  run.phase = "long";
  run.mask = 0xffffffffffffffffULL;  // all 64 bits survive
  run.seed = 2;
  run.val_accuracy = 0.9812;
  run.val_loss = std::numeric_limits<double>::quiet_NaN();  // a diverged run
  run.train_loss = 0.1234567890123;
  run.seconds = 12.5;
  const nlohmann::json rj = run;
  CHECK(rj.dump().find("\"val_loss\":null") != std::string::npos);
  const auto back = nlohmann::json::parse(rj.dump()).get<additive::RunRecord>();
  CHECK(back.phase == "long");
  CHECK(back.mask == run.mask);
  CHECK(back.seed == 2);
  CHECK(back.val_accuracy == run.val_accuracy);
  CHECK(std::isnan(back.val_loss));
  CHECK(back.train_loss == run.train_loss);
  CHECK(back.seconds == 12.5);

  CHECK_THROWS_AS(nlohmann::json({{"phase", "short"}}).get<additive::RunRecord>(), nlohmann::json::exception);
}

TEST_CASE("CSV: one record per entry, RFC 4180 quoting that parses back") {
  SearchReport r = sample_report();
  r.entries[2].structure = "odd \"name\", with comma";
  const std::string csv = additive::results_csv(r);
  CHECK(csv.find("\"odd \"\"name\"\", with comma\"") != std::string::npos);
  CHECK(csv.find("\"[12|34] . [1|234]\"") != std::string::npos);  // the structure is always quoted
  CHECK(count(csv, "\n") == 7);

  const auto records = parse_csv(csv);
  REQUIRE(records.size() == 7);
  const std::vector<std::string> header = {"rank",
                                           "mask",
                                           "structure",
                                           "equivalent",
                                           "runs",
                                           "acc_mean",
                                           "acc_std",
                                           "loss_mean",
                                           "loss_std",
                                           "active_params",
                                           "flops_per_sample",
                                           "allreduces",
                                           "comm_bytes",
                                           "comm_seconds",
                                           "pareto",
                                           "diff_vs_leader",
                                           "diff_lo",
                                           "diff_hi",
                                           "p_adjusted",
                                           "top_group",
                                           "epochs",
                                           "rung",
                                           "cut",
                                           "screen_acc"};
  CHECK(records[0] == header);
  for (std::size_t i = 0; i < r.entries.size(); ++i) {
    const SearchEntry& e = r.entries[i];
    const auto& f = records[i + 1];
    INFO("rank ", e.rank);
    REQUIRE(f.size() == header.size());
    CHECK(f[0] == std::to_string(e.rank));
    CHECK(f[1] == fmt::format("{:#x}", e.mask));
    CHECK(f[2] == e.structure);
    CHECK(std::stod(f[5]) == e.acc_mean);  // exact: shortest round-trip text
    CHECK(std::stod(f[12]) == e.cost.comm_bytes);
    CHECK(std::stoll(f[9]) == e.cost.active_params);
    CHECK(f[14] == (expected_front[i] ? "true" : "false"));
    CHECK(f[16].empty());  // no interval: a missing value, not "nan"
    CHECK(f[19] == "false");
  }
  CHECK(records[1][3] == "0x2e 0x31");
  CHECK(records[2][3].empty());
}

TEST_CASE("top-K list: k structures in rank order with integer masks") {
  SearchReport r = sample_report();
  const nlohmann::json j = additive::topk_json(r);
  CHECK(j.at("family") == r.family);
  CHECK(j.at("k") == 4);
  REQUIRE(j.at("structures").size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    const auto& s = j.at("structures")[i];
    CHECK(s.at("rank") == i + 1);
    CHECK(s.at("mask").is_number_unsigned());
    CHECK(s.at("mask") == r.entries[i].mask);
    CHECK(s.at("mask_hex") == fmt::format("{:#x}", r.entries[i].mask));
    CHECK(s.at("structure") == r.entries[i].structure);
    CHECK(s.at("val_accuracy").get<double>() == r.entries[i].acc_mean);
    CHECK(s.at("comm_bytes").get<double>() == r.entries[i].cost.comm_bytes);
  }
  r.top_k = 50;  // more than there are
  CHECK(additive::topk_json(r).at("k") == 6);
  r.top_k = 0;
  CHECK(additive::topk_json(r).at("structures").empty());
}

TEST_CASE("SVG: well-formed, one circle per entry, escaped, deterministic") {
  SearchReport r = sample_report();
  r.entries[0].structure = "[1<2&3>4] \"q\" 'a'";
  const std::string svg = additive::report_svg(r);
  CHECK(svg.starts_with("<svg"));
  CHECK(svg.ends_with("</svg>\n"));
  CHECK(svg.find("width=\"1000\" height=\"440\"") != std::string::npos);
  CHECK(count(svg, "<g ") + count(svg, "<g>") == count(svg, "</g>"));
  CHECK(count(svg, "<g ") > 0);
  CHECK(count(svg, "<circle") == r.entries.size());
  CHECK(count(svg, "<text") == count(svg, "</text>"));
  CHECK(svg.find("[1&lt;2&amp;3&gt;4] &quot;q&quot; &apos;a&apos;") != std::string::npos);
  CHECK(svg.find("[1<2") == std::string::npos);
  CHECK(svg.find("<script") == std::string::npos);
  CHECK(svg.find("font-family=\"sans-serif\"") != std::string::npos);
  CHECK(svg.find("accuracy vs communication") != std::string::npos);
  CHECK(svg.find("bars start at") != std::string::npos);
  CHECK(svg.find("Kendall's tau") == std::string::npos);  // escaped: Kendall&apos;s
  CHECK(svg.find("Kendall&apos;s tau") != std::string::npos);
  // the front: 4 filled dots and a staircase through them
  CHECK(count(svg, "fill=\"#dd8452\" stroke=\"#b0582a\" stroke-width=\"1\">") == 4);
  CHECK(count(svg, "fill=\"none\" stroke=\"#dd8452\"") == 1);
  CHECK(svg == additive::report_svg(r));  // byte-identical

  TempDir dir("svg");
  const fs::path main_svg = dir.path / "report.svg";
  additive::write_report_svg(main_svg, r);
  CHECK(read_text(main_svg) == svg);
  check_with_python(main_svg, r.entries.size());

  // the corner cases must stay well-formed too
  SearchReport single_device = sample_report();
  for (auto& e : single_device.entries) e.cost.comm_bytes = 0;
  additive::mark_pareto(single_device.entries);
  single_device.top_k = 20;
  single_device.trust.reset();
  const fs::path p1 = dir.path / "single_device.svg";
  additive::write_report_svg(p1, single_device);
  check_with_python(p1, single_device.entries.size());

  SearchReport many = sample_report();
  for (int i = 0; i < 24; ++i)
    many.entries.push_back(entry(7 + i, 0x100u + static_cast<unsigned>(i),
                                 "[12|34] . [1|2|3|4] . [1234] . [12|34] . [1|234] . [123|4]", 2,
                                 0.94 - 0.001 * i, 0.003, 0.1 * i));
  additive::mark_pareto(many.entries);
  many.top_k = 20;  // more rows than 440 px hold: the figure grows
  const std::string tall = additive::report_svg(many);
  CHECK(tall.find("height=\"440\"") == std::string::npos);
  CHECK(count(tall, "<circle") == many.entries.size());
  const fs::path p2 = dir.path / "many.svg";
  additive::write_report_svg(p2, many);
  check_with_python(p2, many.entries.size());

  SearchReport empty;
  empty.family = "empty <family>";
  const std::string none = additive::report_svg(empty);
  CHECK(count(none, "<circle") == 0);
  const fs::path p3 = dir.path / "empty.svg";
  additive::write_report_svg(p3, empty);
  check_with_python(p3, 0);

  if (const char* keep = std::getenv("ADDITIVE_KEEP_REPORT_SVG")) {  // for looking at it by eye
    additive::write_report_svg(fs::path(keep) / "report.svg", r);
    additive::write_report_svg(fs::path(keep) / "single_device.svg", single_device);
    additive::write_report_svg(fs::path(keep) / "many.svg", many);
    additive::write_report_svg(fs::path(keep) / "empty.svg", empty);
  }
}

TEST_CASE("writing: every output goes through an atomic file") {
  const SearchReport r = sample_report();
  TempDir dir("write");
  const fs::path csv = dir.path / "results.csv", topk = dir.path / "topk.json", svg = dir.path / "report.svg";
  {
    std::ofstream old(csv);
    old << "an older file\n";
  }
  additive::write_results_csv(csv, r);
  additive::write_topk_json(topk, r);
  additive::write_report_svg(svg, r);
  CHECK(read_text(csv) == additive::results_csv(r));  // replaced, not appended
  CHECK(nlohmann::json::parse(read_text(topk)) == additive::topk_json(r));
  CHECK(read_text(topk).ends_with("}\n"));
  CHECK(read_text(svg) == additive::report_svg(r));

  std::size_t files = 0;
  for (const auto& f : fs::directory_iterator(dir.path)) {
    ++files;
    CHECK_MESSAGE(f.path().filename().string().find(".tmp.") == std::string::npos,
                  "left behind: " << f.path());
  }
  CHECK(files == 3);

  CHECK_THROWS_AS(additive::write_results_csv(dir.path / "missing" / "results.csv", r), additive::InputError);
  CHECK_THROWS_AS(additive::write_topk_json(dir.path, r), additive::InputError);  // a directory
}
