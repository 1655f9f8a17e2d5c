// DESIGN section 2, properties 1, 2, 3, 5 and 6 for the MLP family, in float64.
// (Property 4, gradients, is in test_mlp_gradients.cpp.)
#include <doctest/doctest.h>

#include <map>
#include <vector>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "additive/cpu/mlp_model.hpp"
#include "additive/nn/reference.hpp"

#include "test_support.hpp"

using namespace additive;
using test::max_abs;
using test::max_abs_diff;

namespace {

using F42 = MlpFamily<4, 2>;                          // n = 8, every gate of DESIGN section 2
using F52 = MlpFamily<5, 2, GateLayout::merge_only>;  // n = 8, residuals always on
using Mat = Eigen::MatrixXd;

const MlpConfig small4{.in_dim = 7, .d = 6, .h = 8, .classes = 5};
const MlpConfig small5{.in_dim = 7, .d = 6, .h = 10, .classes = 5};
constexpr Index batch = 9;

template <class F>
struct Fixture {
  MlpConfig config;
  cpu::MlpModel<F, double> model;
  std::vector<double> params, x;
  std::vector<std::int32_t> y;
  explicit Fixture(const MlpConfig& c, std::uint64_t seed = 1)
      : config(c),
        model(c, 2),
        params(test::random_params<double>(model.layout(), seed)),
        x(test::random_inputs<double>(c.in_dim, batch, seed + 1)),
        y(test::random_labels(batch, c.classes, seed + 2)) {}
  MatView<const double> xv() const { return {x.data(), config.in_dim, batch}; }
  std::vector<double> logits(typename F::mask_type m) {
    model.forward(m, params, xv(), y);
    return test::to_vector(model.logits());
  }
};

// ---- an independent dense / narrow MLP written with Eigen expressions ----

Mat layer_norm(const Mat& x, const double* w, const double* b, double eps) {
  Mat y(x.rows(), x.cols());
  for (Index j = 0; j < x.cols(); ++j) {
    const double mu = x.col(j).mean();
    const double var = (x.col(j).array() - mu).square().mean();
    for (Index i = 0; i < x.rows(); ++i) y(i, j) = (x(i, j) - mu) / std::sqrt(var + eps) * w[i] + b[i];
  }
  return y;
}

Mat gelu(const Mat& u) { return (u.array() * 0.5 * (1.0 + (u.array() / std::sqrt(2.0)).erf())).matrix(); }

/// The plain residual MLP over rows [r0, r0 + rows) of every A and columns of every B,
/// down-projection scaled by `scale`. rows = h: the dense model. rows = hs: narrow net.
template <class F>
Mat plain_mlp_logits(const Fixture<F>& fx, Index r0, Index rows, double scale) {
  const MlpParamViews<const double> p(fx.config, F::blocks, fx.params);
  const auto m = [](MatView<const double> v) { return cpu::map(v); };
  const Eigen::Map<const Mat> x(fx.x.data(), fx.config.in_dim, batch);
  Mat y = m(p.embed_t).transpose() * x;
  y.colwise() += Eigen::Map<const Eigen::VectorXd>(p.embed_b, fx.config.d);
  for (const auto& b : p.blocks) {
    Mat u =
        m(b.up_t).middleCols(r0, rows).transpose() * layer_norm(y, b.norm_w, b.norm_b, fx.config.norm_eps);
    u.colwise() += Eigen::Map<const Eigen::VectorXd>(b.up_b + r0, rows);
    Mat z = scale * m(b.down_t).middleRows(r0, rows).transpose() * gelu(u);
    z.colwise() += Eigen::Map<const Eigen::VectorXd>(b.down_b, fx.config.d);
    y += z;
  }
  Mat logits = m(p.head_t).transpose() * layer_norm(y, p.final_w, p.final_b, fx.config.norm_eps);
  logits.colwise() += Eigen::Map<const Eigen::VectorXd>(p.head_b, fx.config.classes);
  return logits;
}

std::vector<double> flat(const Mat& m) { return {m.data(), m.data() + m.size()}; }

}  // namespace

TEST_CASE_TEMPLATE("property 1: all gates active is the plain dense residual MLP", F, F42, F52) {
  Fixture<F> fx(F::shards == 4 ? small4 : small5);
  const auto dense = flat(plain_mlp_logits(fx, 0, fx.config.h, 1.0));
  REQUIRE(max_abs<double>(dense) > 0.1);  // non-trivial outputs
  CHECK(max_abs_diff<double>(fx.logits(F::mask_type::all()), dense) < 1e-12);
}

TEST_CASE_TEMPLATE("property 2: all merge gates inactive is the average of S narrow networks", F, F42, F52) {
  Fixture<F> fx(F::shards == 4 ? small4 : small5);
  constexpr int S = F::shards;
  const Index hs = fx.config.h / S;
  Mat mean = Mat::Zero(fx.config.classes, batch);
  for (int j = 0; j < S; ++j) mean += plain_mlp_logits(fx, j * hs, hs, double(S)) / double(S);
  // Residual gates (if any) on, merge gates off.
  std::uint64_t bits = 0;
  if constexpr (F::layout == GateLayout::merge_and_branch)
    for (int l = 0; l < F::blocks; ++l) bits |= std::uint64_t{1} << (l * F::gates_per_block + S - 1);
  REQUIRE(max_abs<double>(flat(mean)) > 0.1);
  CHECK(max_abs_diff<double>(fx.logits(typename F::mask_type(bits)), flat(mean)) < 1e-12);
  // And it is not the dense model: the property is not vacuous.
  CHECK(max_abs_diff<double>(fx.logits(typename F::mask_type(bits)), fx.logits(F::mask_type::all())) > 1e-3);
}

TEST_CASE("property 3: the 2^8 structures of the merge-only family are 2^8 different functions") {
  Fixture<F52> fx(small5, 7);
  std::vector<std::vector<double>> out;
  for (std::uint64_t b = 0; b < F52::mask_type::count; ++b) out.push_back(fx.logits(F52::mask_type(b)));
  double closest = 1e300;
  for (std::size_t a = 0; a < out.size(); ++a)
    for (std::size_t b = a + 1; b < out.size(); ++b)
      closest = std::min(closest, max_abs_diff<double>(out[a], out[b]));
  MESSAGE("closest pair of the 256 structures differs by " << closest);
  CHECK(closest > 1e-6);  // rounding is ~1e-15: every pair is a different function
}

TEST_CASE(
    "property 3: with branch gates, masks are equal functions exactly when their canonical forms agree") {
  Fixture<F42> fx(small4, 11);
  std::map<std::uint64_t, std::vector<double>> by_canonical;
  double closest = 1e300;
  for (std::uint64_t b = 0; b < F42::mask_type::count; ++b) {
    const auto m = F42::mask_type(b);
    const auto out = fx.logits(m);
    const auto c = F42::canonical(m).bits();
    auto [it, fresh] = by_canonical.emplace(c, out);
    if (!fresh) CHECK(out == it->second);  // same canonical form: bit-identical function
  }
  CHECK(by_canonical.size() == 81);
  for (auto a = by_canonical.begin(); a != by_canonical.end(); ++a)
    for (auto b = std::next(a); b != by_canonical.end(); ++b)
      closest = std::min(closest, max_abs_diff<double>(a->second, b->second));
  MESSAGE("closest pair of the 81 canonical structures differs by " << closest);
  CHECK(closest > 1e-6);
}

TEST_CASE_TEMPLATE("property 5: specialised, per-block table, whole-model table and reference agree", F, F42,
                   F52) {
  Fixture<F> fx(F::shards == 4 ? small4 : small5, 3);
  int checked = 0;
  for_each_variant(structure_variants<F>{}, [&]<std::size_t B>() {
    const auto m = typename F::mask_type(B);
    const double loss_spec = fx.model.template forward<Structure<F, B>>(fx.params, fx.xv(), fx.y);
    const auto spec = test::to_vector(fx.model.logits());
    const double loss_table = fx.model.forward(m, fx.params, fx.xv(), fx.y);
    const auto table = test::to_vector(fx.model.logits());
    const double loss_whole = fx.model.forward_whole_model(m, fx.params, fx.xv(), fx.y);
    const auto whole = test::to_vector(fx.model.logits());
    const auto ref = reference::logits<F, double>(fx.config, m, fx.params, fx.x, batch);
    const double loss_ref = reference::cross_entropy<double>(ref, fx.y, fx.config.classes);
    CHECK(spec == table);  // the same plan: bit-identical
    CHECK(spec == whole);
    CHECK(loss_spec == loss_table);
    CHECK(loss_spec == loss_whole);
    CHECK(max_abs_diff<double>(spec, ref) < 1e-12);
    CHECK(std::abs(loss_spec - loss_ref) < 1e-12);
    ++checked;
  });
  CHECK(checked == 256);
}

namespace {
/// GEMMs the plan of a structure must run: embedding, then per active block one per input
/// stream and one per segment, then one head GEMM per final stream; backward doubles each
/// of those (input and weight gradient) except the embedding's single weight gradient.
template <class F>
std::pair<std::uint64_t, std::uint64_t> expected_gemms(typename F::mask_type m) {
  const auto cuts = F::stream_cuts(m);
  std::uint64_t fwd = 1, bwd = 1;
  for (int l = 0; l < F::blocks; ++l) {
    const auto g = F::block(m, l);
    if (!g.residual()) continue;
    const auto n =
        std::uint64_t(intervals_from_cuts<F::shards>(cuts[std::size_t(l)]).size() + g.segments().size());
    fwd += n;
    bwd += 2 * n;
  }
  const auto finals = std::uint64_t(intervals_from_cuts<F::shards>(cuts[F::blocks]).size());
  return {fwd + finals, bwd + 2 * finals};
}
}  // namespace

TEST_CASE("property 6: a skipped branch computes nothing and its parameters get exact zero gradients") {
  Fixture<F42> fx(small4, 5);
  auto& be = fx.model.backend();
  std::vector<double> grads(fx.params.size(), 1.0);
  const auto& layout = fx.model.layout();

  SUBCASE("GEMM counts of every structure match its plan") {
    for (std::uint64_t b = 0; b < F42::mask_type::count; ++b) {
      const auto m = F42::mask_type(b);
      const auto [fwd, bwd] = expected_gemms<F42>(m);
      be.reset_counters();
      fx.model.forward(m, fx.params, fx.xv(), fx.y);
      CHECK(be.counters().gemms == fwd);
      be.reset_counters();
      fx.model.backward(fx.params, grads);
      CHECK(be.counters().gemms == bwd);
    }
  }

  SUBCASE("block 1 skipped: no work, exact zeros; block 0 active: real gradients") {
    // Block 1 has the segments of block 0, so both structures end in the same streams
    // and differ only by block 1's branch.
    const auto skipped = F42::mask_type(0x5D);  // [12|34] res=1 . [12|34] res=0
    const auto active = F42::mask_type(0xDD);   // [12|34] res=1 . [12|34] res=1
    be.reset_counters();
    fx.model.forward(active, fx.params, fx.xv(), fx.y);
    const double flops_active = be.counters().gemm_flops;
    be.reset_counters();
    fx.model.forward(skipped, fx.params, fx.xv(), fx.y);
    const double flops_skipped = be.counters().gemm_flops;
    // Block 1's branch is 2 * batch * (d*h + h*d) flops; it is exactly what is saved.
    CHECK(flops_active - flops_skipped == doctest::Approx(2.0 * batch * 2 * small4.d * small4.h));
    fx.model.backward(fx.params, grads);
    for (const auto& t : layout.tensors()) {
      const std::span<const double> g(grads.data() + t.offset, t.size);
      if (t.name.starts_with("blocks.1.")) {
        CHECK_MESSAGE(max_abs<double>(g) == 0.0, t.name);
      } else {
        CHECK_MESSAGE(max_abs<double>(g) > 0.0, t.name);
      }
    }
  }
}

TEST_CASE("without a final per-stream norm the last block's merge gates cancel out, as DESIGN warns") {
  using Degenerate = MlpFamily<4, 2, GateLayout::merge_only, FinalNorm::none>;  // n = 6
  Fixture<Degenerate> fx(small4, 13);
  std::map<std::uint64_t, std::vector<double>> by_first_block;
  std::size_t distinct_pairs = 0;
  for (std::uint64_t b = 0; b < Degenerate::mask_type::count; ++b) {
    const auto m = Degenerate::mask_type(b);
    const auto out = fx.logits(m);
    // The reference path agrees with the fast path here too.
    const auto ref = reference::logits<Degenerate, double>(fx.config, m, fx.params, fx.x, batch);
    CHECK(max_abs_diff<double>(out, ref) < 1e-12);
    auto [it, fresh] = by_first_block.emplace(b & 0x7, out);           // block 0's three merge gates
    if (!fresh) CHECK(max_abs_diff<double>(out, it->second) < 1e-12);  // block 1's gates do nothing
  }
  REQUIRE(by_first_block.size() == 8);
  for (auto a = by_first_block.begin(); a != by_first_block.end(); ++a)
    for (auto c = std::next(a); c != by_first_block.end(); ++c)
      distinct_pairs += max_abs_diff<double>(a->second, c->second) > 1e-6 ? 1 : 0;
  CHECK(distinct_pairs == 8 * 7 / 2);  // block 0's gates still matter
}
