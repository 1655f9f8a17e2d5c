// The statistics layer (include/additive/stats/): distribution functions, McNemar, Holm,
// the paired bootstrap, the top group, Kendall's tau between seeds and the gate-effect
// model, against hand-computed cases, against the golden fixture of an independent
// numpy/scipy implementation (tests/golden/make_paired_stats.py), and on synthetic
// searches with known truth: interval coverage and the top group's calibration.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/exp/stats.hpp"
#include "additive/stats/distributions.hpp"
#include "additive/stats/gate_effects.hpp"
#include "additive/stats/paired.hpp"
#include "additive/stats/runs.hpp"

using namespace additive::stats;
using nlohmann::json;

namespace {

const json& golden() {
  static const json j =
      json::parse(std::ifstream(std::string(ADDITIVE_SOURCE_DIR) + "/tests/golden/paired_stats_golden.json"));
  return j;
}

/// |a - b| <= rel * |b| + abs
bool close(double a, double b, double rel, double abs = 0) {
  return std::abs(a - b) <= rel * std::abs(b) + abs;
}

/// A uniform double in [0, 1) from 53 bits of the generator (the same on every platform).
double uniform(std::mt19937_64& gen) { return double(gen() >> 11) * 0x1.0p-53; }

/// A standard normal draw (Box-Muller from our uniforms).
double normal(std::mt19937_64& gen) {
  const double u1 = 1.0 - uniform(gen);  // (0, 1]
  const double u2 = uniform(gen);
  return std::sqrt(-2 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2);
}

/// The largest count c with P(Binomial(n, p) > c) <= tail: an acceptance bound that a
/// correct procedure exceeds with probability at most `tail`.
std::int64_t binomial_upper(std::int64_t n, double p, double tail) {
  std::int64_t c = 0;
  while (1 - binomial_cdf(c, n, p) > tail) ++c;
  return c;
}

/// The largest count c with P(Binomial(n, p) < c) <= tail: a correct procedure falls
/// below it with probability at most `tail`.
std::int64_t binomial_lower(std::int64_t n, double p, double tail) {
  std::int64_t c = 0;
  while (binomial_cdf(c, n, p) <= tail) ++c;
  return c;
}

RunTable table_from_golden(const json& c) {
  const auto masks = c["masks"].get<std::vector<std::uint64_t>>();
  const int seeds = c["seeds"].get<int>();
  const auto images = c["images"].get<std::vector<std::size_t>>();
  RunTable t(masks, seeds);
  for (const auto& run : c["runs"]) {
    const int r = run["seed"].get<int>();
    t.set(run["structure"].get<std::size_t>(), r,
          CorrectBits::from_hex(run["correct"].get<std::string>(), images[std::size_t(r)]),
          run["loss"].get<double>());
  }
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Distributions, McNemar, Holm

TEST_CASE("distribution functions agree with scipy.stats") {
  const auto& d = golden()["distributions"];
  int checked = 0;
  for (const auto& v : d["t_quantile"]) {
    INFO("t quantile p=" << v[0].get<double>() << " df=" << v[1].get<double>());
    CHECK(close(student_t_quantile(v[0], v[1]), v[2], 1e-11, 1e-13));
    ++checked;
  }
  for (const auto& v : d["t_two_sided"]) {
    INFO("t two-sided t=" << v[0].get<double>() << " df=" << v[1].get<double>());
    CHECK(close(student_t_two_sided(v[0], v[1]), v[2], 1e-11, 1e-300));
    ++checked;
  }
  for (const auto& v : d["t_cdf"]) {
    INFO("t cdf t=" << v[0].get<double>() << " df=" << v[1].get<double>());
    CHECK(close(student_t_cdf(v[0], v[1]), v[2], 1e-11, 1e-15));
  }
  for (const auto& v : d["f_survival"]) {
    INFO("F sf f=" << v[0].get<double>() << " d1=" << v[1].get<double>() << " d2=" << v[2].get<double>());
    CHECK(close(f_survival(v[0], v[1], v[2]), v[3], 1e-11, 1e-300));
    ++checked;
  }
  for (const auto& v : d["normal_quantile"]) {
    INFO("normal quantile p=" << v[0].get<double>());
    CHECK(close(normal_quantile(v[0]), v[1], 1e-13, 1e-15));
    ++checked;
  }
  for (const auto& v : d["incomplete_beta"]) {
    INFO("I_x(a,b) a=" << v[0].get<double>() << " b=" << v[1].get<double>() << " x=" << v[2].get<double>());
    CHECK(close(incomplete_beta(v[0], v[1], v[2]), v[3], 1e-10, 1e-300));
    ++checked;
  }
  for (const auto& v : d["binomial_two_sided_half"]) {
    INFO("binomial k=" << v[0].get<std::int64_t>() << " n=" << v[1].get<std::int64_t>());
    CHECK(close(binomial_two_sided_half(v[0], v[1]), v[2], 1e-11, 1e-300));
    ++checked;
  }
  CHECK(checked > 150);
  // Closed forms: df = 1 is Cauchy, t_p = tan(pi (p - 1/2)) (= -cot(pi p), better
  // conditioned in the tails); df = 2: t_p = (2p - 1) / sqrt(2 p (1 - p)).
  for (const double p : {0.5 + 1e-9, 0.6, 0.975, 0.9999, 1e-7}) {
    INFO("p = " << p);
    const double cauchy = std::abs(p - 0.5) < 0.25 ? std::tan(std::numbers::pi * (p - 0.5))
                          : p < 0.5                ? -1 / std::tan(std::numbers::pi * p)
                                                   : 1 / std::tan(std::numbers::pi * (1 - p));
    CHECK(close(student_t_quantile(p, 1), cauchy, 1e-12));
    CHECK(close(student_t_quantile(p, 2), (2 * p - 1) / std::sqrt(2 * p * (1 - p)), 1e-12));
    CHECK(close(normal_quantile(p), -normal_quantile(1 - p), 1e-9));
  }
  CHECK(close(normal_quantile(0.5 + 1e-9), 1e-9 * std::sqrt(2 * std::numbers::pi), 1e-6));
}

TEST_CASE("McNemar's exact test on hand-computed tables") {
  // b = 0, c = 5: 2 * (1/2)^5
  CHECK(mcnemar_exact_p(0, 5) == doctest::Approx(2.0 / 32).epsilon(1e-14));
  CHECK(mcnemar_exact_p(5, 0) == doctest::Approx(2.0 / 32).epsilon(1e-14));
  // b = 1, c = 5: 2 * (1 + 6) / 2^6
  CHECK(mcnemar_exact_p(1, 5) == doctest::Approx(14.0 / 64).epsilon(1e-14));
  // b = 2, c = 8: 2 * (1 + 10 + 45) / 1024
  CHECK(mcnemar_exact_p(2, 8) == doctest::Approx(112.0 / 1024).epsilon(1e-14));
  CHECK(mcnemar_exact_p(0, 1) == 1.0);
  CHECK(mcnemar_exact_p(4, 4) == 1.0);
  CHECK(mcnemar_exact_p(0, 0) == 1.0);
  // From per-image bits: a right on images {0,1,2,3,4,6}, b on {0,1,5}: b = 4, c = 1.
  CorrectBits a(7), b(7);
  for (int i : {0, 1, 2, 3, 4, 6}) a.set(std::size_t(i), true);
  for (int i : {0, 1, 5}) b.set(std::size_t(i), true);
  CHECK(right_only_in_first(a, b) == 4);
  CHECK(right_only_in_first(b, a) == 1);
  CHECK(mcnemar_exact_p(4, 1) == doctest::Approx(12.0 / 32).epsilon(1e-14));
}

TEST_CASE("Holm's correction on known p-values") {
  // sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
  const std::vector<double> p{0.01, 0.04, 0.03, 0.005};
  const auto adj = holm_adjust(p);
  CHECK(adj[0] == doctest::Approx(0.03));
  CHECK(adj[1] == doctest::Approx(0.06));
  CHECK(adj[2] == doctest::Approx(0.06));
  CHECK(adj[3] == doctest::Approx(0.02));
  CHECK(holm_adjust(std::vector<double>{0.6, 0.7})[1] == 1.0);  // capped at 1
  CHECK(holm_adjust(std::vector<double>{}).empty());
  CHECK_THROWS_AS(holm_adjust(std::vector<double>{0.1, NAN}), additive::RuntimeError);
  for (const auto& c : golden()["holm"]) {
    const auto got = holm_adjust(c["p"].get<std::vector<double>>());
    const auto want = c["adjusted"].get<std::vector<double>>();
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-14));
  }
}

TEST_CASE("sample quantiles interpolate between order statistics (type 7)") {
  const std::vector<double> v{1, 2, 4, 8};
  CHECK(sorted_quantile(v, 0.0) == 1);
  CHECK(sorted_quantile(v, 1.0) == 8);
  CHECK(sorted_quantile(v, 0.5) == doctest::Approx(3.0));    // h = 1.5
  CHECK(sorted_quantile(v, 0.25) == doctest::Approx(1.75));  // h = 0.75
}

// ---------------------------------------------------------------------------------------
// Data types

TEST_CASE("per-image correctness: packing, hex round trip and refusals") {
  std::vector<std::uint8_t> flags(131);
  for (std::size_t i = 0; i < flags.size(); ++i) flags[i] = (i * 7 + i / 5) % 3 == 0;
  const auto bits = CorrectBits::from_flags(std::span<const std::uint8_t>(flags));
  REQUIRE(bits.size() == 131);
  REQUIRE(bits.words().size() == 3);
  std::int64_t count = 0;
  for (std::size_t i = 0; i < flags.size(); ++i) {
    CHECK(bits.get(i) == bool(flags[i]));
    count += flags[i];
  }
  CHECK(bits.count() == count);
  CHECK(count > 20);
  CHECK(bits.accuracy() == doctest::Approx(double(count) / 131));
  const auto hex = bits.to_hex();
  CHECK(hex.size() == 33);
  CHECK(CorrectBits::from_hex(hex, 131) == bits);
  CHECK(CorrectBits::from_words(bits.words(), 131) == bits);
  // image 4k + j is bit j of hex digit k
  CorrectBits one(6);
  one.set(1, true);
  one.set(4, true);
  CHECK(one.to_hex() == "21");
  CHECK(CorrectBits::from_hex("A", 4).get(1));
  CHECK(CorrectBits::from_hex("A", 4).get(3));
  CHECK_THROWS_AS(CorrectBits::from_hex("22", 5), additive::InputError);  // image 5 of 5 images
  CHECK_THROWS_AS(CorrectBits::from_hex("2", 6), additive::InputError);   // too short
  CHECK_THROWS_AS(CorrectBits::from_hex("2g", 6), additive::InputError);  // not hex
  CHECK_THROWS_AS(CorrectBits::from_words({1, 1}, 64), additive::InputError);
  CHECK_THROWS_AS(CorrectBits::from_words({~std::uint64_t{0}}, 63), additive::InputError);
}

TEST_CASE("run table: every cell filled, consistent image counts, refusals name the run") {
  CHECK_THROWS_AS(RunTable({}, 1), additive::InputError);
  CHECK_THROWS_AS(RunTable({1, 2}, 0), additive::InputError);
  CHECK_THROWS_AS(RunTable({1, 1}, 1), additive::InputError);
  RunTable t({0x3, 0x5}, 2);
  t.set(0, 0, 0.5);
  t.set(0, 1, 0.6);
  t.set(1, 0, 0.7);
  try {
    t.validate();
    FAIL("an empty cell passed validation");
  } catch (const additive::InputError& e) {
    CHECK(std::string(e.what()).find("0x5 seed 1") != std::string::npos);
  }
  t.set(1, 1, 0.8);
  CHECK_NOTHROW(t.validate());
  CHECK(t.mean_accuracy()[1] == doctest::Approx(0.75));
  CHECK(!t.has_correct());
  CHECK(!t.has_loss());
  t.set(1, 1, CorrectBits(10));
  CHECK_THROWS_AS(t.validate(), additive::InputError);  // bits on one run only
  t.at(1, 1).accuracy = 1.5;
  CHECK_THROWS_AS(t.validate(), additive::InputError);
  RunTable u({0x3, 0x5}, 1);
  u.set(0, 0, CorrectBits(10));
  u.set(1, 0, CorrectBits(11));
  CHECK_THROWS_AS(u.validate(), additive::InputError);  // 10 and 11 images
  u.set(1, 0, CorrectBits(10));
  u.at(1, 0).accuracy = 0.2;  // disagrees with its bits
  CHECK_THROWS_AS(u.validate(), additive::InputError);
  CHECK_THROWS_AS(top_group(RunTable({1, 2}, 1)), additive::InputError);
}

// ---------------------------------------------------------------------------------------
// Paired comparisons against the fixture

TEST_CASE("paired comparisons, top group and seed agreement agree with numpy/scipy") {
  for (const auto& c : golden()["paired"]) {
    INFO(c["name"].get<std::string>());
    const RunTable table = table_from_golden(c);
    CHECK(table.has_correct());
    const auto mean_loss = table.mean_loss();
    for (std::size_t s = 0; s < table.structures(); ++s)
      CHECK(mean_loss[s] == doctest::Approx(c["mean_loss"][s].get<double>()).epsilon(1e-14));
    CHECK(table.masks()[leader(table)] == c["leader"].get<std::uint64_t>());
    for (const auto& named :
         {std::pair{"bootstrap", PairedTest::bootstrap}, std::pair{"mcnemar", PairedTest::mcnemar},
          std::pair{"seed_t", PairedTest::seed_t}}) {
      const std::string test_name = named.first;
      const PairedTest test = named.second;
      if (!c["tests"].contains(test_name)) {
        CHECK_THROWS_AS(top_group(table, PairedOptions{.test = test}), additive::InputError);
        continue;
      }
      INFO("test " << test_name);
      PairedOptions o;
      o.test = test;
      o.resamples = c["resamples"];
      o.seed = c["bootstrap_seed"];
      o.level = c["level"];
      o.alpha = c["alpha"];
      o.same_images_across_seeds = c["same_images_across_seeds"];
      const auto cmp = top_group(table, o);
      CHECK(cmp.reference_mask == c["leader"].get<std::uint64_t>());
      CHECK(cmp.test == test);
      CHECK(cmp.family == table.structures() - 1);
      std::vector<std::uint64_t> group;
      for (const auto s : cmp.top_group) group.push_back(table.masks()[s]);
      CHECK(group == c["tests"][test_name]["top_group"].get<std::vector<std::uint64_t>>());
      for (std::size_t s = 0; s < table.structures(); ++s) {
        const auto& row = cmp.rows[s];
        const auto& want = c["rows"][s];
        INFO("mask " << row.mask);
        CHECK(row.mask == want["mask"].get<std::uint64_t>());
        CHECK(row.rank == want["rank"].get<int>());
        CHECK(row.accuracy == doctest::Approx(want["accuracy"].get<double>()).epsilon(1e-14));
        CHECK(row.is_reference == want["is_reference"].get<bool>());
        if (row.is_reference) {
          CHECK(row.in_top_group);
          CHECK(row.difference == 0);
          continue;
        }
        CHECK(close(row.difference, want["difference"], 1e-12, 1e-15));
        CHECK(row.right_only == want["right_only"].get<std::int64_t>());
        CHECK(row.wrong_only == want["wrong_only"].get<std::int64_t>());
        CHECK(close(row.p_mcnemar, want["p_mcnemar"], 1e-10, 1e-300));
        CHECK(close(row.p_bootstrap, want["p_bootstrap"], 1e-9, 1e-300));
        if (table.seeds() >= 2) {
          CHECK(close(row.p_seed_t, want["p_seed_t"], 1e-10, 1e-300));
        } else {
          CHECK(std::isnan(row.p_seed_t));
        }
        if (test == PairedTest::seed_t) {
          CHECK(close(row.lo, want["t_lo"], 1e-10, 1e-15));
          CHECK(close(row.hi, want["t_hi"], 1e-10, 1e-15));
          CHECK(close(row.se, want["t_se"], 1e-10, 1e-15));
        } else {
          CHECK(close(row.lo, want["boot_lo"], 1e-12, 1e-15));
          CHECK(close(row.hi, want["boot_hi"], 1e-12, 1e-15));
          CHECK(close(row.se, want["boot_se"], 1e-10, 1e-15));
        }
        CHECK(
            close(row.p_adjusted, c["tests"][test_name]["adjusted"][std::to_string(row.mask)], 1e-9, 1e-300));
      }
      CHECK(describe(cmp).find("Holm over") != std::string::npos);
    }
    // Kendall's tau-b between seeds.
    const auto agreement = seed_rank_agreement(table);
    REQUIRE(agreement.pairs.size() == c["kendall"].size());
    double sum = 0;
    for (std::size_t k = 0; k < agreement.pairs.size(); ++k) {
      CHECK(agreement.pairs[k].a == c["kendall"][k][0].get<int>());
      CHECK(agreement.pairs[k].b == c["kendall"][k][1].get<int>());
      CHECK(agreement.pairs[k].tau == doctest::Approx(c["kendall"][k][2].get<double>()).epsilon(1e-12));
      sum += agreement.pairs[k].tau;
    }
    if (agreement.pairs.empty()) {
      CHECK(std::isnan(agreement.mean_tau));
    } else {
      CHECK(agreement.mean_tau == doctest::Approx(sum / double(agreement.pairs.size())));
    }
  }
}

TEST_CASE("the bootstrap is deterministic, paired, and seeded") {
  // Structure 1 equals structure 0 on every image; structure 2 is right on 12 images
  // where 0 is wrong; the others differ at random.
  constexpr std::size_t n = 500;
  constexpr int seeds = 2;
  RunTable t({0, 1, 2, 3}, seeds);
  std::mt19937_64 gen(11);
  for (int r = 0; r < seeds; ++r) {
    CorrectBits base(n);
    for (std::size_t i = 0; i < n; ++i) base.set(i, uniform(gen) < 0.8);
    CorrectBits better = base;
    int flipped = 0;
    for (std::size_t i = 0; i < n && flipped < 12; ++i)
      if (!better.get(i)) {
        better.set(i, true);
        ++flipped;
      }
    CorrectBits other(n);
    for (std::size_t i = 0; i < n; ++i) other.set(i, uniform(gen) < 0.8);
    t.set(0, r, base);
    t.set(1, r, base);
    t.set(2, r, better);
    t.set(3, r, other);
  }
  const auto c1 = compare_to_reference(t, 0, PairedOptions{.resamples = 400, .seed = 5});
  const auto c2 = compare_to_reference(t, 0, PairedOptions{.resamples = 400, .seed = 5});
  const auto c3 = compare_to_reference(t, 0, PairedOptions{.resamples = 400, .seed = 6});
  // identical structures: every resample's difference is exactly 0
  CHECK(c1.rows[1].difference == 0);
  CHECK(c1.rows[1].lo == 0);
  CHECK(c1.rows[1].hi == 0);
  CHECK(c1.rows[1].p == 1);
  CHECK(c1.rows[1].in_top_group);
  // strictly better on 12 images per seed, never worse: every resample is > 0 (paired),
  // while an unpaired resample of two accuracies near 0.8 would straddle 0
  CHECK(c1.rows[2].difference == doctest::Approx(12.0 / n));
  CHECK(c1.rows[2].lo > 0);
  CHECK(c1.rows[2].wrong_only == 0);
  CHECK(c1.rows[2].right_only == 24);
  CHECK(c1.rows[2].p_mcnemar == doctest::Approx(std::pow(0.5, 23)));
  // same seed, same numbers; another seed, other numbers
  CHECK(c1.rows[3].lo == c2.rows[3].lo);
  CHECK(c1.rows[3].se == c2.rows[3].se);
  CHECK(c1.rows[3].lo != c3.rows[3].lo);
  // the replicates do not depend on how many follow (replicate b has its own stream)
  const auto few = bootstrap_accuracies(t, 10, 5, true, true);
  const auto many = bootstrap_accuracies(t, 40, 5, true, true);
  for (std::size_t k = 0; k < few.size(); ++k) CHECK(few[k] == many[k]);
}

// ---------------------------------------------------------------------------------------
// Gate effects

TEST_CASE("gate effects: a 2x2 design solved by hand") {
  // masks 0..3, y = 1, 3, 2, 6; x_g = bit_g - 1/2. Means: 3; gate 0: (3+6)/2 - (1+2)/2 = 3;
  // gate 1: (2+6)/2 - (1+3)/2 = 2. Residuals +-0.5, RSS 1, df 1, sigma 1, X^T X = diag(4, 1, 1).
  const std::vector<std::uint64_t> masks{0, 1, 2, 3};
  const std::vector<double> y{1, 3, 2, 6};
  const auto fit =
      fit_gate_effects(masks, y, 2, GateEffectsOptions{.interactions = false, .min_residual_df = 1});
  REQUIRE(fit.terms().size() == 3);
  const double t975_1 = 12.706204736174698;  // t_{0.975, 1}
  CHECK(fit.terms()[0].estimate == doctest::Approx(3));
  CHECK(fit.terms()[0].se == doctest::Approx(0.5));
  CHECK(fit.terms()[1].name == "g0");
  CHECK(fit.terms()[1].estimate == doctest::Approx(3));
  CHECK(fit.terms()[1].se == doctest::Approx(1));
  CHECK(fit.terms()[1].lo == doctest::Approx(3 - t975_1));
  CHECK(fit.terms()[2].estimate == doctest::Approx(2));
  CHECK(fit.terms()[2].hi == doctest::Approx(2 + t975_1));
  CHECK(fit.terms()[2].t == doctest::Approx(2));
  // two-sided p of t = 2 with 1 df: 1 - (2/pi) atan(2)
  CHECK(fit.terms()[2].p == doctest::Approx(1 - 2 / std::numbers::pi * std::atan(2.0)));
  CHECK(fit.residual_df() == 1);
  CHECK(fit.sigma() == doctest::Approx(1));
  CHECK(fit.r2() == doctest::Approx(13.0 / 14));  // TSS = 4 + 0 + 1 + 9
  CHECK(fit.adjusted_r2() == doctest::Approx(11.0 / 14));
  const auto p = fit.predict(3);
  CHECK(p.mean == doctest::Approx(5.5));
  CHECK(p.se_mean == doctest::Approx(std::sqrt(0.75)));
  CHECK(p.se == doctest::Approx(std::sqrt(1.75)));
  CHECK(p.hi == doctest::Approx(5.5 + t975_1 * std::sqrt(1.75)));
  CHECK_THROWS_AS((void)fit.predict(4), additive::InputError);  // a bit beyond the 2 gates
  // the saturated model (3 coefficients, 3 structures) has no residual df
  CHECK_THROWS_AS(fit_gate_effects(std::vector<std::uint64_t>{0, 1, 2}, std::vector<double>{1, 2, 3}, 2),
                  additive::InputError);
  CHECK_THROWS_AS(fit_gate_effects(masks, std::vector<double>{1, 2, 3}, 2), additive::InputError);
  CHECK_THROWS_AS(fit_gate_effects(masks, std::vector<double>{1, 2, NAN, 3}, 2), additive::InputError);
}

TEST_CASE("gate effects agree with numpy least squares, including selection and rank deficiency") {
  for (const auto& c : golden()["gate_effects"]) {
    INFO(c["name"].get<std::string>());
    const auto masks = c["masks"].get<std::vector<std::uint64_t>>();
    const auto y = c["response"].get<std::vector<double>>();
    GateEffectsOptions o;
    o.interactions = c["options"]["interactions"];
    o.level = c["options"]["level"];
    if (c["options"].contains("max_interactions")) o.max_interactions = c["options"]["max_interactions"];
    if (c["options"].contains("min_residual_df")) o.min_residual_df = c["options"]["min_residual_df"];
    const auto fit = fit_gate_effects(masks, y, c["gates"].get<int>(), o);
    REQUIRE(fit.terms().size() == c["terms"].size());
    for (std::size_t j = 0; j < fit.terms().size(); ++j) {
      const auto& t = fit.terms()[j];
      const auto& w = c["terms"][j];
      INFO("term " << w["name"].get<std::string>());
      CHECK(t.name == w["name"].get<std::string>());
      const double scale = std::abs(w["se"].get<double>());
      CHECK(close(t.estimate, w["estimate"], 1e-10, 1e-9 * scale));
      CHECK(close(t.se, w["se"], 1e-9));
      CHECK(close(t.lo, w["lo"], 1e-10, 1e-9 * scale));
      CHECK(close(t.hi, w["hi"], 1e-10, 1e-9 * scale));
      CHECK(close(t.t, w["t"], 1e-8, 1e-9));
      CHECK(close(t.p, w["p"], 1e-7, 1e-300));
    }
    CHECK(fit.dropped_gates() == c["dropped"].get<std::vector<int>>());
    CHECK(fit.notes().size() == fit.dropped_gates().size());
    CHECK(fit.residual_df() == c["df"].get<int>());
    CHECK(close(fit.sigma(), c["sigma"], 1e-9));
    CHECK(close(fit.r2(), c["r2"], 1e-10));
    CHECK(close(fit.adjusted_r2(), c["adj_r2"], 1e-10));
    CHECK(close(fit.r2_main(), c["r2_main"], 1e-10));
    CHECK(close(fit.adjusted_r2_main(), c["adj_r2_main"], 1e-10));
    for (const auto& w : c["predictions"]) {
      const auto p = fit.predict(w["mask"].get<std::uint64_t>());
      INFO("predict " << w["mask"].get<std::uint64_t>());
      CHECK(close(p.mean, w["mean"], 1e-11));
      CHECK(close(p.se_mean, w["se_mean"], 1e-9));
      CHECK(close(p.lo_mean, w["lo_mean"], 1e-10));
      CHECK(close(p.hi_mean, w["hi_mean"], 1e-10));
      CHECK(close(p.se, w["se"], 1e-9));
      CHECK(close(p.lo, w["lo"], 1e-10));
      CHECK(close(p.hi, w["hi"], 1e-10));
    }
    if (c.contains("undetermined"))
      for (const auto& m : c["undetermined"])
        CHECK_THROWS_AS((void)fit.predict(m.get<std::uint64_t>()), additive::InputError);
  }
}

namespace {

/// Responses of the full factorial over `gates` gates from known main effects and one
/// interaction, plus N(0, noise^2).
struct Truth {
  int gates = 6;
  std::vector<double> effect{0.004, -0.002, 0.0, 0.0065, 0.001, -0.003};
  double intercept = 0.86;
  int ia = 1, ib = 3;        // interacting gates
  double interaction = 0.0;  // gamma
  double noise = 0.0012;

  [[nodiscard]] double mean(std::uint64_t m) const {
    auto x = [&](int g) { return double((m >> g) & 1U) - 0.5; };
    double v = intercept + interaction * x(ia) * x(ib);
    for (int g = 0; g < gates; ++g) v += effect[std::size_t(g)] * x(g);
    return v;
  }
  [[nodiscard]] std::vector<double> draw(std::mt19937_64& gen,
                                         const std::vector<std::uint64_t>& masks) const {
    std::vector<double> y;
    y.reserve(masks.size());
    for (const auto m : masks) y.push_back(mean(m) + noise * normal(gen));
    return y;
  }
};

std::vector<std::uint64_t> all_masks(int gates) {
  std::vector<std::uint64_t> m(std::size_t(1) << gates);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = i;
  return m;
}

}  // namespace

TEST_CASE("gate effects: known effects are recovered within their intervals, which cover at 95%") {
  const Truth truth;
  const auto masks = all_masks(truth.gates);
  std::mt19937_64 gen(2024);
  {
    const auto fit = fit_gate_effects(masks, truth.draw(gen, masks), truth.gates, {.interactions = false});
    for (int g = 0; g < truth.gates; ++g) {
      const auto e = fit.main_effect(g);
      REQUIRE(e);
      INFO("gate " << g << ": " << e->lo << " .. " << e->hi);
      CHECK(e->lo <= truth.effect[std::size_t(g)]);
      CHECK(truth.effect[std::size_t(g)] <= e->hi);
      CHECK(e->hi - e->lo < 0.002);  // informative: noise 0.0012 over 64 structures
    }
    // signal variance sum(beta^2)/4 against noise^2: R^2 about 0.89
    CHECK(fit.r2() > 0.8);
    CHECK(fit.r2() < 0.97);
    CHECK(fit.adjusted_r2() < fit.r2());
    const auto p = fit.predict(0x2a);
    CHECK(p.lo <= truth.mean(0x2a));
    CHECK(truth.mean(0x2a) <= p.hi);
  }
  // Coverage over 200 repetitions: each coefficient's interval covers the truth in
  // Binomial(200, 0.95) repetitions; a correct procedure stays in the band except with
  // probability < 1e-3 per coefficient, and a standard error off by sqrt(2) either way
  // (coverage about 86% or 99%, with 9 residual df) falls outside it. (The band is too wide
  // to tell t from z quantiles, 95% from 92%: the hand-computed 2x2 case checks those.)
  constexpr int reps = 200;
  std::vector<int> covered(std::size_t(truth.gates) + 1, 0);
  int pred_covered = 0;
  const std::int64_t lo = binomial_lower(reps, 0.95, 5e-4), hi = binomial_upper(reps, 0.95, 5e-4);
  for (int k = 0; k < reps; ++k) {
    // Few structures make the t quantile matter: 16 of the 64, a quarter fraction of the
    // factorial (gates 4 and 5 the parities of gates 0-2 and 1-3, flipped by k), in which
    // the main effects stay orthogonal; 9 residual df, t_{0.975, 9} = 2.26 against z = 1.96.
    std::vector<std::uint64_t> sample;
    for (std::uint64_t m = 0; m < 16; ++m) {
      const std::uint64_t g4 = (std::popcount(m & 0b0111) + std::uint64_t(k)) & 1U;
      const std::uint64_t g5 = (std::popcount(m & 0b1110) + std::uint64_t(k >> 1)) & 1U;
      sample.push_back(m | g4 << 4 | g5 << 5);
    }
    const auto fit = fit_gate_effects(sample, truth.draw(gen, sample), truth.gates, {.interactions = false});
    const auto& terms = fit.terms();
    REQUIRE(fit.dropped_gates().empty());
    REQUIRE(fit.residual_df() == 9);
    REQUIRE(terms.size() == std::size_t(truth.gates) + 1);
    if (terms[0].lo <= truth.intercept && truth.intercept <= terms[0].hi) ++covered[0];
    for (int g = 0; g < truth.gates; ++g)
      if (const auto e = fit.main_effect(g);
          e && e->lo <= truth.effect[std::size_t(g)] && truth.effect[std::size_t(g)] <= e->hi)
        ++covered[std::size_t(g) + 1];
    const std::uint64_t unseen = (std::uint64_t(k) * 5 + 1) % 64;
    const auto p = fit.predict(unseen);
    const double y_new = truth.mean(unseen) + truth.noise * normal(gen);  // a new structure's response
    if (p.lo <= y_new && y_new <= p.hi) ++pred_covered;
  }
  MESSAGE("coverage band [" << lo << ", " << hi << "] of " << reps);
  for (std::size_t j = 0; j < covered.size(); ++j) {
    INFO("coefficient " << j << " covered " << covered[j] << " of " << reps);
    CHECK(covered[j] >= lo);
    CHECK(covered[j] <= hi);
  }
  INFO("prediction intervals covered a new response " << pred_covered << " times");
  CHECK(pred_covered >= lo);
  CHECK(pred_covered <= hi);
}

TEST_CASE("gate effects: a true interaction is selected, spurious ones rarely") {
  const auto masks = all_masks(6);
  std::mt19937_64 gen(99);
  constexpr int reps = 200;
  Truth with;
  with.interaction = 0.006;  // 2.5 noise SDs
  Truth without;
  int found = 0, spurious_with = 0, spurious_without = 0;
  for (int k = 0; k < reps; ++k) {
    const auto a = fit_gate_effects(masks, with.draw(gen, masks), 6);
    bool hit = false;
    for (const auto& t : a.interactions()) {
      if (t.gate == with.ia && t.other == with.ib) {
        hit = true;
        if (k == 0) {
          CHECK(t.lo <= with.interaction);
          CHECK(with.interaction <= t.hi);
        }
      } else {
        ++spurious_with;
      }
    }
    found += hit;
    if (hit) CHECK(a.r2() > a.r2_main());
    const auto b = fit_gate_effects(masks, without.draw(gen, masks), 6);
    if (!b.interactions().empty()) ++spurious_without;
  }
  MESSAGE("true interaction found in " << found << "/" << reps
                                       << "; fits with a spurious one: " << spurious_without);
  // |gamma| / se(gamma) = 0.006 / (0.0012 * 4 / 8) = 10: found essentially always
  CHECK(found >= reps * 95 / 100);
  // Bonferroni per step at 0.05: P(any spurious) <= ~0.05 per fit
  CHECK(spurious_without <= binomial_upper(reps, 0.05, 1e-3));
  CHECK(spurious_with <= binomial_upper(reps, 0.05, 1e-3));
}

TEST_CASE("gate effects: main effects do not move when interactions enter a full factorial") {
  Truth truth;
  truth.interaction = 0.01;
  const auto masks = all_masks(truth.gates);
  std::mt19937_64 gen(5);
  const auto y = truth.draw(gen, masks);
  const auto main = fit_gate_effects(masks, y, truth.gates, {.interactions = false});
  const auto full = fit_gate_effects(masks, y, truth.gates);
  REQUIRE(!full.interactions().empty());
  for (int g = 0; g < truth.gates; ++g)
    CHECK(full.main_effect(g)->estimate == doctest::Approx(main.main_effect(g)->estimate).epsilon(1e-12));
  CHECK(full.sigma() < main.sigma());
  CHECK(full.r2() > main.r2());
}

// ---------------------------------------------------------------------------------------
// Calibration of the top group

namespace {

/// A synthetic search: N validation images shared by the seeds, 35% of them hard. A run
/// of structure s with seed r is right on an easy image with probability 0.97 and on a
/// hard one with 0.55 + shift_s + u_{s,r}, u_{s,r} ~ N(0, training_sd^2) (training noise
/// of that run); image noise is independent per run.
RunTable synthetic_search(std::mt19937_64& gen, const std::vector<double>& shift, int seeds,
                          std::size_t images, double training_sd) {
  std::vector<std::uint64_t> masks(shift.size());
  for (std::size_t s = 0; s < masks.size(); ++s) masks[s] = s;
  RunTable t(masks, seeds);
  std::vector<bool> hard(images);
  for (std::size_t i = 0; i < images; ++i) hard[i] = uniform(gen) < 0.35;
  for (int r = 0; r < seeds; ++r)
    for (std::size_t s = 0; s < shift.size(); ++s) {
      const double p_hard = 0.55 + shift[s] + training_sd * normal(gen);
      CorrectBits bits(images);
      for (std::size_t i = 0; i < images; ++i) bits.set(i, uniform(gen) < (hard[i] ? p_hard : 0.97));
      t.set(s, r, std::move(bits));
    }
  return t;
}

struct Calibration {
  int exact = 0;          ///< top group == the truly best set
  int tied_excluded = 0;  ///< a structure tied with the best left out (a family-wise error)
  int worse_included = 0;
};

Calibration calibrate(const std::vector<double>& shift, int seeds, std::size_t images, double training_sd,
                      int reps, PairedTest test, int resamples, std::uint64_t seed) {
  const double best = *std::max_element(shift.begin(), shift.end());
  Calibration c;
  std::mt19937_64 gen(seed);
  for (int k = 0; k < reps; ++k) {
    const auto table = synthetic_search(gen, shift, seeds, images, training_sd);
    const auto cmp =
        top_group(table, PairedOptions{.test = test, .resamples = resamples, .seed = std::uint64_t(k)});
    bool exact = true, tied_out = false;
    for (std::size_t s = 0; s < shift.size(); ++s) {
      const bool truly_best = shift[s] == best;
      if (truly_best != cmp.rows[s].in_top_group) exact = false;
      if (truly_best && !cmp.rows[s].in_top_group) tied_out = true;
      if (!truly_best && cmp.rows[s].in_top_group) ++c.worse_included;
    }
    c.exact += exact;
    c.tied_excluded += tied_out;
  }
  return c;
}

}  // namespace

TEST_CASE("calibration: two truly better structures, the rest identical") {
  // 8 structures, two of them 0.22 better on hard images (7.7 points of accuracy), 3 seeds
  // of 400 images. With two tied at the top the leader is either, and the two-sided test of
  // |X| is that of X: the chance of excluding the other is at most alpha (Holm's last step).
  const std::vector<double> shift{0, 0.22, 0, 0, 0.22, 0, 0, 0};
  constexpr int reps = 200;
  const std::int64_t fwe_bound = binomial_upper(reps, 0.05, 1e-3);  // alpha plus a margin
  struct Case {
    std::string name;
    PairedTest test;
    double training_sd;
  };
  for (const Case& one :
       {Case{"bootstrap", PairedTest::bootstrap, 0.0}, Case{"bootstrap", PairedTest::bootstrap, 0.015},
        Case{"mcnemar", PairedTest::mcnemar, 0.0}}) {
    const std::string name = one.name;
    const PairedTest test = one.test;
    const double training_sd = one.training_sd;
    // (McNemar's decisions do not use the bootstrap: 2 resamples save the time)
    const auto c =
        calibrate(shift, 3, 400, training_sd, reps, test, test == PairedTest::mcnemar ? 2 : 200, 17);
    MESSAGE(name << " (training noise " << training_sd << "): top group exact in " << c.exact << "/" << reps
                 << ", tied structure excluded in " << c.tied_excluded << " (bound " << fwe_bound
                 << "), worse structures included " << c.worse_included << " times");
    INFO(name << " training noise " << training_sd);
    CHECK(c.tied_excluded <= fwe_bound);
    CHECK(c.exact >= reps * 3 / 4);
  }
}

TEST_CASE("calibration: the winner's curse with many structures tied at the top") {
  // One structure truly worse, seven tied: the leader is the best of seven equals, so the
  // comparisons with it exclude a tied structure more often than alpha. Measured here so
  // that docs/statistics.md can state it.
  const std::vector<double> shift{0, 0, 0, -0.2, 0, 0, 0, 0};
  constexpr int reps = 200;
  const auto c = calibrate(shift, 3, 400, 0.0, reps, PairedTest::bootstrap, 200, 23);
  const auto m = calibrate(shift, 3, 400, 0.0, reps, PairedTest::mcnemar, 2, 23);
  MESSAGE("bootstrap: a tied structure excluded in " << c.tied_excluded << "/" << reps << ", exact "
                                                     << c.exact << "; McNemar: excluded in "
                                                     << m.tied_excluded << ", exact " << m.exact);
  CHECK(c.worse_included == 0);
  CHECK(c.tied_excluded <= binomial_upper(reps, 0.05, 1e-3));
}

TEST_CASE("calibration: one comparison with a fixed reference under training noise") {
  // Two identical structures whose runs carry training noise (the chance on hard images
  // moves by N(0, 0.04^2) per run: 1.4 points of accuracy): the paired bootstrap, which
  // resamples seeds too, keeps its level; McNemar's test, which sees only images, does not.
  constexpr int reps = 300;
  std::mt19937_64 gen(31);
  int boot = 0, mcnemar = 0, seed_t = 0;
  for (int k = 0; k < reps; ++k) {
    const auto table = synthetic_search(gen, {0, 0}, 3, 400, 0.04);
    const auto c = compare_to_reference(table, 0, PairedOptions{.resamples = 200, .seed = std::uint64_t(k)});
    boot += c.rows[1].p_bootstrap < 0.05;
    mcnemar += c.rows[1].p_mcnemar < 0.05;
    seed_t += c.rows[1].p_seed_t < 0.05;
  }
  const std::int64_t bound = binomial_upper(reps, 0.05, 1e-3);
  MESSAGE("type I error at 0.05 of " << reps << ": bootstrap " << boot << ", McNemar " << mcnemar
                                     << ", t over seeds " << seed_t << " (bound " << bound << ")");
  CHECK(boot <= bound);
  CHECK(seed_t <= bound);
  CHECK(mcnemar > bound);  // the caveat of docs/statistics.md is real
}
