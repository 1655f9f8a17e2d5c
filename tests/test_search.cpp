// The structure search engine: candidates, the equivalence detector on the shipped and
// the degenerate family, identical results for any worker count, resume, Kendall's tau.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "additive/exp/search.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

/// The search over family F, trained in float on the CPU.
template <class F>
using Search = StructureSearch<cpu::MlpModel<F, float>>;

using Default = MlpFamily<4, 2, GateLayout::merge_only>;  // n = 6
using Branch = MlpFamily<4, 2>;                           // n = 8, 81 functions
using Degenerate = MlpFamily<4, 2, GateLayout::merge_only, FinalNorm::none>;

const MlpConfig model{.in_dim = 20, .d = 8, .h = 16, .classes = 4};
const TrainOptions train{.epochs = 1, .batch = 32, .lr = 5e-3, .seed = 3};

ImageDataset synthetic(std::int64_t count, std::uint64_t seed) { return test::synthetic_images(count, seed); }

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("additive_test_search_" + name + ".json");
}

void check_same_ranking(const SearchReport& a, const SearchReport& b) {
  REQUIRE(a.entries.size() == b.entries.size());
  for (std::size_t i = 0; i < a.entries.size(); ++i) {
    CHECK(a.entries[i].mask == b.entries[i].mask);
    CHECK(a.entries[i].acc_mean == b.entries[i].acc_mean);
    CHECK(a.entries[i].loss_mean == b.entries[i].loss_mean);
  }
}

}  // namespace

TEST_CASE("candidates: every structure, or a seeded sample of distinct ones") {
  CHECK(Search<Default>(model, train, {}).candidates().size() == 64);
  const auto a = Search<Branch>(model, train, {.sample = 20, .sample_seed = 5}).candidates();
  const auto b = Search<Branch>(model, train, {.sample = 20, .sample_seed = 5}).candidates();
  const auto c = Search<Branch>(model, train, {.sample = 20, .sample_seed = 6}).candidates();
  CHECK(a.size() == 20);
  CHECK(std::set<std::uint64_t>(a.begin(), a.end()).size() == 20);
  CHECK(std::is_sorted(a.begin(), a.end()));
  CHECK(a == b);
  CHECK(a != c);
  CHECK_THROWS_WITH_AS(Search<Branch>(model, train, {.sample = 0}), doctest::Contains("empty"), InputError);
  CHECK_THROWS_AS(Search<Default>(model, train, {.sample = 65}), InputError);
}

TEST_CASE("equivalence detector: none in the default family, the known ones elsewhere") {
  SUBCASE("default family: 64 structures, 64 functions") {
    Search<Default> s(model, train, {});
    CHECK(s.equivalence_groups(s.candidates()).size() == 64);
  }
  SUBCASE("no final norm: the last block's merge gates cancel out, 8 groups of 8") {
    Search<Degenerate> s(model, train, {});
    const auto groups = s.equivalence_groups(s.candidates());
    REQUIRE(groups.size() == 8);
    for (const auto& g : groups) {
      CHECK(g.size() == 8);
      for (const auto m : g) CHECK((m & 0x7) == (g.front() & 0x7));  // same first-block gates
    }
  }
  SUBCASE("branch gates: masks group exactly by canonical form, 81 functions") {
    Search<Branch> s(model, train, {});
    const auto groups = s.equivalence_groups(s.candidates());
    CHECK(groups.size() == 81);
    for (const auto& g : groups)
      for (const auto m : g)
        CHECK(Branch::canonical(Branch::mask_type(m)) == Branch::canonical(Branch::mask_type(g.front())));
  }
}

TEST_CASE("results are identical for 1 and 2 workers, and a resumed search matches an uninterrupted one") {
  const auto train_set = synthetic(96, 1);
  const auto val_set = synthetic(48, 2);
  const DatasetView tv(train_set), vv(val_set);
  const nlohmann::json data{{"synthetic", 1}};
  SearchOptions options{
      .sample = 12, .sample_seed = 1, .seeds = 2, .top_k = 4, .long_epochs = 2, .long_top = 4};

  options.workers = 1;
  Search<Default> one(model, train, options);
  const auto a = one.run(tv, vv, {}, false, data, false);
  options.workers = 2;
  Search<Default> two(model, train, options);
  const auto path = temp_path("resume");
  const auto b = two.run(tv, vv, path, false, data, false);
  check_same_ranking(a, b);
  REQUIRE(a.trust.has_value());
  CHECK(a.trust->tau == b.trust->tau);
  CHECK(a.trust->masks.size() == 4);

  // A kill leaves the file as it was after some finished run: keep the first 9 of 24+4.
  nlohmann::json j = nlohmann::json::parse(std::ifstream(path));
  const auto all_runs = j["runs"].size();
  REQUIRE(all_runs == 12 * 2 + 4);
  j["runs"] = nlohmann::json(std::vector<nlohmann::json>(j["runs"].begin(), j["runs"].begin() + 9));
  j["complete"] = false;
  j.erase("report");
  std::ofstream(path) << j.dump();
  Search<Default> resumed(model, train, options);
  const auto c = resumed.run(tv, vv, path, true, data, false);
  CHECK(resumed.runs_trained() == static_cast<std::int64_t>(all_runs) - 9);
  check_same_ranking(a, c);
  CHECK(c.trust->tau == a.trust->tau);

  SUBCASE("resume refuses a results file of another search, and an unreadable one") {
    TrainOptions other = train;
    other.lr = 1e-2;
    Search<Default> s(model, other, options);
    CHECK_THROWS_WITH_AS(s.run(tv, vv, path, true, data, false), doctest::Contains("other train settings"),
                         InputError);
    CHECK_THROWS_WITH_AS(s.run(tv, vv, temp_path("missing"), true, data, false),
                         doctest::Contains("cannot be read"), InputError);
    std::ofstream(temp_path("garbage")) << "{ not json";
    CHECK_THROWS_WITH_AS(s.run(tv, vv, temp_path("garbage"), true, data, false),
                         doctest::Contains("not a search results file"), InputError);
    std::filesystem::remove(temp_path("garbage"));
  }
  std::filesystem::remove(path);
}

TEST_CASE("the search on 3 thread ranks equals one process, and an error on one rank stops all") {
  const auto train_set = synthetic(96, 1);
  const auto val_set = synthetic(48, 2);
  const ImageDataset empty{0, 4, 5, 4, {}, {}};
  const DatasetView tv(train_set), vv(val_set);
  const nlohmann::json data{{"synthetic", 1}};
  const SearchOptions options{.sample = 8, .sample_seed = 2, .seeds = 2, .top_k = 4, .workers = 1};
  const auto want = Search<Default>(model, train, options).run(tv, vv, {}, false, data, false);
  std::vector<SearchReport> got(3);
  dist::run_threads(3, [&](dist::ThreadComm& comm) {
    Search<Default> s(model, train, options);
    got[static_cast<std::size_t>(comm.rank())] = s.run(comm, tv, vv, {}, false, data, false);
    CHECK(s.runs_trained() == 8 * 2);
  });
  for (const auto& g : got) check_same_ranking(g, want);

  std::vector<std::string> errors(3);
  dist::run_threads(3, [&](dist::ThreadComm& comm) {
    Search<Default> s(model, train, options);
    try {
      s.run(comm, comm.rank() == 1 ? DatasetView(empty) : tv, vv, {}, false, data, false);
    } catch (const InputError& e) {
      errors[static_cast<std::size_t>(comm.rank())] = e.what();
    }
  });
  for (const auto& e : errors) CHECK(e == "training set is empty");
}

TEST_CASE("racing: each rung narrows the field; the same for any workers and ranks; a resume is exact") {
  const auto train_set = synthetic(96, 1);
  const auto val_set = synthetic(48, 2);
  const DatasetView tv(train_set), vv(val_set);
  const nlohmann::json data{{"synthetic", 1}};
  SearchOptions options{.sample = 16, .sample_seed = 4, .top_k = 4, .workers = 1};
  options.race = {{1, 1}, {2, 1}, {2, 2}};
  options.eta = 4;

  Search<Default> one(model, train, options);
  const auto a = one.run(tv, vv, {}, false, data, false);
  REQUIRE(a.rungs.size() == 3);  // the data leave ties at every rung: the race runs to its end
  CHECK(a.eta == 4);
  CHECK(a.rungs[0].structures == 16);
  std::int64_t expected_runs = 16;  // rung 2 reuses seed 0 of rung 1 (same seed, same epochs)
  for (std::size_t k = 0; k + 1 < a.rungs.size(); ++k) {
    const RungSummary& g = a.rungs[k];
    CHECK(g.kept == std::min<std::int64_t>(g.top_group, std::max<std::int64_t>(2, (g.structures + 3) / 4)));
    CHECK(a.rungs[k + 1].structures == g.kept);
  }
  expected_runs += a.rungs[1].structures * 1 + a.rungs[2].structures * 2;
  CHECK(one.runs_trained() == expected_runs);
  // The leaderboard: the last rung first, then the dropped, latest rung first; each
  // entry's numbers at its last rung's budget; only the last rung has a top group.
  int previous = 2;
  std::int64_t cut = 0;
  for (const auto& e : a.entries) {
    CHECK(e.rung <= previous);
    previous = e.rung;
    CHECK(e.runs == options.race[static_cast<std::size_t>(e.rung)].seeds);
    CHECK(e.epochs == options.race[static_cast<std::size_t>(e.rung)].epochs);
    CHECK((!e.top_group || e.rung == 2));
    CHECK((!e.cut || e.rung < 2));
    CHECK(std::isfinite(e.screen_acc));
    cut += e.cut ? 1 : 0;
  }
  CHECK(cut == a.rungs[0].top_group - a.rungs[0].kept + a.rungs[1].top_group - a.rungs[1].kept);
  REQUIRE(a.paired.has_value());
  CHECK(a.paired->seeds == 2);
  CHECK(a.paired->top_group == a.rungs[2].top_group);
  REQUIRE(a.gate_effects.has_value());  // fitted at the first rung, where all 16 ran

  auto same = [](const SearchReport& x, const SearchReport& y) {
    check_same_ranking(x, y);
    REQUIRE(x.rungs.size() == y.rungs.size());
    for (std::size_t k = 0; k < x.rungs.size(); ++k) {
      CHECK(x.rungs[k].top_group == y.rungs[k].top_group);
      CHECK(x.rungs[k].kept == y.rungs[k].kept);
    }
    for (std::size_t i = 0; i < x.entries.size(); ++i) {
      CHECK(x.entries[i].rung == y.entries[i].rung);
      CHECK(x.entries[i].cut == y.entries[i].cut);
      CHECK(x.entries[i].top_group == y.entries[i].top_group);
      CHECK(x.entries[i].diff == y.entries[i].diff);
    }
  };
  options.workers = 2;
  Search<Default> two(model, train, options);
  const auto path = temp_path("race");
  const auto b = two.run(tv, vv, path, false, data, false);
  same(a, b);

  std::vector<SearchReport> ranks(3);
  dist::run_threads(3, [&](dist::ThreadComm& comm) {
    Search<Default> s(model, train, options);
    ranks[static_cast<std::size_t>(comm.rank())] = s.run(comm, tv, vv, {}, false, data, false);
  });
  for (const auto& r : ranks) same(a, r);

  // Killed in the second rung: the file holds the first rung and two runs of the second.
  nlohmann::json j = nlohmann::json::parse(std::ifstream(path));
  REQUIRE(j["runs"].size() == static_cast<std::size_t>(expected_runs));
  std::vector<nlohmann::json> kept;
  int second = 0;
  for (const auto& r : j["runs"])
    if (r["epochs"] == 1 && (r["seed"] == 0 || second++ < 2)) kept.push_back(r);
  REQUIRE(kept.size() == 18);
  j["runs"] = kept;
  j["complete"] = false;
  j.erase("report");
  std::ofstream(path) << j.dump();
  Search<Default> resumed(model, train, options);
  same(a, resumed.run(tv, vv, path, true, data, false));
  CHECK(resumed.runs_trained() == expected_runs - 18);
  std::filesystem::remove(path);
}

TEST_CASE("racing: the rungs are read from text and checked") {
  CHECK(parse_rungs("1x1,3x2,5x4") == std::vector<Rung>{{1, 1}, {3, 2}, {5, 4}});
  CHECK(parse_rungs("2x7") == std::vector<Rung>{{2, 7}});
  for (const char* bad :
       {"", "1x", "x2", "1x1,", "0x1", "1y1", "1x1,,2x2", "-1x2", "1x2x3", "1001x1", "1 x1"})
    CHECK_THROWS_WITH_AS(parse_rungs(bad), doctest::Contains("expected SEEDSxEPOCHS"), InputError);
  auto check = [](std::vector<Rung> race, int seeds, const char* message) {
    SearchOptions o;
    o.race = std::move(race);
    o.seeds = seeds;
    CHECK_THROWS_WITH_AS(o.validate(64), doctest::Contains(message), InputError);
  };
  check({{1, 1}, {1, 1}}, 1, "must add seeds or epochs");
  check({{3, 2}, {2, 4}}, 1, "take none away");
  check({{1, 1}}, 2, "seeds must stay 1");
  SearchOptions o;
  o.race = {{1, 1}, {1, 2}};
  o.eta = 1;
  CHECK_THROWS_WITH_AS(o.validate(64), doctest::Contains("eta"), InputError);
  o.eta = 2;
  CHECK_NOTHROW(o.validate(64));
  CHECK(o.max_seeds() == 1);
  CHECK(o.rungs(9) == o.race);
  o.race.clear();
  o.seeds = 3;
  CHECK(o.rungs(9) == std::vector<Rung>{{3, 9}});
}

TEST_CASE("Kendall's tau-b against hand-computed values") {
  CHECK(kendall_tau_b({1, 2, 3, 4}, {10, 20, 30, 40}) == doctest::Approx(1.0));
  CHECK(kendall_tau_b({1, 2, 3, 4}, {4, 3, 2, 1}) == doctest::Approx(-1.0));
  // Pairs of (1,2,3) vs (1,3,2): concordant (1,2) (1,3), discordant (2,3): (2-1)/3.
  CHECK(kendall_tau_b({1, 2, 3}, {1, 3, 2}) == doctest::Approx(1.0 / 3));
  // A tie in the first: pairs (1,1),(1,2),(1,2) vs (1,2,3): C = 2, D = 0, ties_a = 1: 2/sqrt(2*3).
  CHECK(kendall_tau_b({1, 1, 2}, {1, 2, 3}) == doctest::Approx(2.0 / std::sqrt(6.0)));
}
