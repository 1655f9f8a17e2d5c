// All-structure evaluation on shared weights (include/additive/exp/evaluate_all.hpp), in
// float64: the prefix-tree plan gives every structure the logits, loss and accuracy of its
// own cpu::MlpModel forward, for every structure of small families of both gate layouts
// and both final-norm options, whatever the threads, chunk size, mask order or subset.
//
// Tolerance: the tree computes the same sums as MlpModel with the same backend kernels,
// only grouped differently (norm/up/down GEMMs batched over several streams, the head
// applied once per stream and scaled afterwards instead of inside the GEMM), so the two
// differ by rounding alone: a few ulps per operation through ~10 layers of O(1) values,
// i.e. ~1e-15 relative. 1e-12 leaves room for accumulation without hiding a wrong term,
// which changes logits at O(1e-2) or more with these random parameters.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "additive/cpu/mlp_model.hpp"
#include "additive/exp/evaluate_all.hpp"

#include "test_support.hpp"

using namespace additive;

namespace {

constexpr double rel_tol = 1e-12;
constexpr Index batch = 101;  // two column tiles, not a multiple of the GEMM register blocks
const MlpConfig small{.in_dim = 12, .d = 8, .h = 12, .classes = 3};

std::vector<std::uint64_t> all_masks(int gates) {
  std::vector<std::uint64_t> m(std::size_t{1} << gates);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = i;
  return m;
}

/// How many different functions the masks compute, by DESIGN: gates of skipped blocks do
/// not matter, and without the final norm neither do the merge gates of the last block
/// that runs (property 3: the head is linear and the segment scales cancel).
template <class F>
std::size_t distinct_functions(const std::vector<std::uint64_t>& masks) {
  std::set<std::uint64_t> keys;
  for (const auto b : masks) {
    std::uint64_t key = F::canonical(typename F::mask_type(b)).bits();
    if constexpr (F::final_norm == FinalNorm::none)
      for (int l = F::blocks - 1; l >= 0; --l)
        if (F::block(typename F::mask_type(b), l).residual()) {
          key &= ~(F::block_gates::merge_field << (l * F::gates_per_block));
          break;
        }
    keys.insert(key);
  }
  return keys.size();
}

/// Prefix-tree logits equal MlpModel logits for every structure; the inputs are
/// non-trivial (the structures' functions differ); the FLOP counts are what ran.
template <class F>
void check_logits(std::uint64_t seed) {
  const auto masks = all_masks(F::gates);
  cpu::MlpModel<F, double> model(small, 1);
  const auto params = test::random_params<double>(model.layout(), seed);
  const auto xs = test::random_inputs<double>(small.in_dim, batch, seed + 1);
  const auto y = test::random_labels(batch, small.classes, seed + 2);
  const MatView<const double> x(xs.data(), small.in_dim, batch);

  cpu::PrefixTreeForward<F, double> tree(small, masks, 1);
  tree.set_block_cols(128);  // the whole batch at once
  tree.forward(params, x);
  REQUIRE(tree.size() == masks.size());

  std::vector<std::vector<double>> naive;
  double worst = 0;
  for (const auto b : masks) {
    model.forward(typename F::mask_type(b), params, x, y);
    const auto ref = test::to_vector(model.logits());
    const auto got = test::to_vector(tree.logits(naive.size()));
    const double scale = test::max_abs<double>(ref);
    REQUIRE(scale > 0.1);
    worst = std::max(worst, test::max_abs_diff<double>(ref, got) / scale);
    naive.push_back(ref);
  }
  MESSAGE(F::describe() << ": worst relative logit difference " << worst);
  CHECK(worst <= rel_tol);

  // Blocks of 64 samples (the batch split in two, the second partial) give the bits of one
  // block over the whole batch, thread count included.
  static_assert(batch > 64 && batch % 64 != 0);
  cpu::PrefixTreeForward<F, double> blocked(small, masks, 2);
  blocked.set_block_cols(64);
  blocked.forward(params, x);
  for (std::size_t i = 0; i < masks.size(); ++i)
    CHECK(test::to_vector(blocked.logits(i)) == test::to_vector(tree.logits(i)));
  CHECK_THROWS_AS(blocked.set_block_cols(96), InputError);
  CHECK_THROWS_AS(blocked.set_block_cols(0), InputError);

  // Scores without keeping the logits are the same bits; logits() then says why it has none.
  blocked.forward(x, y);
  std::vector<typename cpu::PrefixTreeForward<F, double>::Score> kept;
  for (std::size_t i = 0; i < masks.size(); ++i) kept.push_back(blocked.score(i));
  blocked.keep_logits(false);
  blocked.forward(x, y);
  for (std::size_t i = 0; i < masks.size(); ++i) {
    CHECK(blocked.score(i).loss_sum == kept[i].loss_sum);
    CHECK(blocked.score(i).correct == kept[i].correct);
  }
  CHECK_THROWS_AS((void)blocked.logits(0), RuntimeError);

  // Non-trivial: the structures compute as many different functions as DESIGN says.
  std::vector<std::vector<double>> distinct;
  for (const auto& v : naive)
    if (std::none_of(distinct.begin(), distinct.end(), [&](const auto& u) {
          return test::max_abs_diff<double>(u, v) < 1e-6 * test::max_abs<double>(v);
        }))
      distinct.push_back(v);
  CHECK(distinct.size() == distinct_functions<F>(masks));
  CHECK(distinct.size() >= 7);

  // The FLOP counts are the GEMM work each path actually ran, and sharing saves work.
  const auto flops = tree.flops();
  // (the head runs outside the backend, fused with the final norm: head_flops())
  CHECK(tree.backend().counters().gemm_flops + tree.head_flops() * batch ==
        doctest::Approx(flops.tree * batch).epsilon(1e-12));
  CHECK(model.backend().counters().gemm_flops == doctest::Approx(flops.naive * batch).epsilon(1e-12));
  CHECK(flops.ratio() > 2.0);
}

/// A dataset of random bytes; labels in [0, classes).
ImageDataset random_dataset(std::int64_t count, std::uint64_t seed) {
  ImageDataset ds;
  ds.count = count;
  ds.rows = 3;
  ds.cols = 4;  // in_dim 12
  ds.num_classes = int(small.classes);
  std::mt19937_64 rng(seed);
  ds.pixels.resize(static_cast<std::size_t>(count * 12));
  for (auto& p : ds.pixels) p = static_cast<std::uint8_t>(rng() % 256);
  ds.labels.resize(static_cast<std::size_t>(count));
  for (auto& l : ds.labels) l = static_cast<std::uint8_t>(rng() % 3);
  return ds;
}

void check_close(const std::vector<StructureEval>& a, const std::vector<StructureEval>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].mask == b[i].mask);
    CHECK(std::abs(a[i].loss - b[i].loss) <= rel_tol * std::abs(b[i].loss));
    CHECK(a[i].accuracy == b[i].accuracy);
  }
}

void check_equal(const std::vector<StructureEval>& a, const std::vector<StructureEval>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].mask == b[i].mask);
    CHECK(a[i].loss == b[i].loss);
    CHECK(a[i].accuracy == b[i].accuracy);
  }
}

/// evaluate_structures: tree equals naive per structure, independent of threads, chunk,
/// order and subset.
template <class F>
void check_evaluate(std::uint64_t seed) {
  const auto ds = random_dataset(83, seed);
  const DatasetView data(ds);
  const auto params = test::random_params<double>(mlp_layout(small, F::blocks), seed + 3);
  const std::span<const double> p(params);
  const auto masks = all_masks(F::gates);

  const auto naive = evaluate_structures<cpu::MlpModel<F, double>>(
      small, p, data, masks, {.chunk = 32, .method = EvalMethod::naive});
  const auto tree = evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, masks, {.chunk = 32});
  check_close(tree, naive);

  // Non-trivial: the losses differ between structures, and are plausible cross-entropies.
  std::set<double> losses;
  for (const auto& r : naive) {
    CHECK(r.loss > 0);
    CHECK(r.accuracy >= 0);
    CHECK(r.accuracy <= 1);
    losses.insert(r.loss);
  }
  CHECK(losses.size() >= distinct_functions<F>(masks));

  // Threads: the backend's fixed tasks make this bitwise.
  check_equal(
      evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, masks, {.threads = 2, .chunk = 32}),
      tree);
  // The tree's block size: bitwise too (83 samples: one block of 128, or 64 + 19).
  check_equal(
      evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, masks, {.chunk = 100, .tree_block = 64}),
      evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, masks,
                                                    {.chunk = 100, .tree_block = 128}));
  // Chunk size: the samples are scored in different groups, the sums added in another order.
  check_close(evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, masks, {.chunk = 7}), tree);
  check_close(evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, masks, {.chunk = 1000}), tree);

  // Order and subset: results follow the mask list.
  std::vector<std::uint64_t> subset = {masks.back(), 5, 0, 5, 17};
  const auto sub = evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, subset, {.chunk = 32});
  std::vector<StructureEval> expect;
  for (const auto b : subset) expect.push_back(tree[static_cast<std::size_t>(b)]);
  check_close(sub, expect);
  std::vector<std::uint64_t> reversed(masks.rbegin(), masks.rend());
  auto rev =
      evaluate_structures<cpu::MlpModel<F, double>>(small, p, data, reversed, {.threads = 2, .chunk = 32});
  std::reverse(rev.begin(), rev.end());
  check_close(rev, tree);
}

}  // namespace

TEST_CASE("prefix-tree logits equal MlpModel logits for every structure") {
  SUBCASE("S=3 L=2 merge_and_branch") { check_logits<MlpFamily<3, 2>>(11); }
  SUBCASE("S=4 L=2 merge_only") { check_logits<MlpFamily<4, 2, GateLayout::merge_only>>(12); }
  SUBCASE("S=3 L=3 merge_only") { check_logits<MlpFamily<3, 3, GateLayout::merge_only>>(13); }
  SUBCASE("S=3 L=2 merge_and_branch, no final norm") {
    check_logits<MlpFamily<3, 2, GateLayout::merge_and_branch, FinalNorm::none>>(14);
  }
  SUBCASE("S=4 L=2 merge_only, no final norm") {
    check_logits<MlpFamily<4, 2, GateLayout::merge_only, FinalNorm::none>>(15);
  }
}

TEST_CASE("evaluate_structures: prefix tree equals naive; threads, chunk, order and subset do not matter") {
  SUBCASE("S=3 L=2 merge_and_branch") { check_evaluate<MlpFamily<3, 2>>(21); }
  SUBCASE("S=4 L=2 merge_only") { check_evaluate<MlpFamily<4, 2, GateLayout::merge_only>>(22); }
  SUBCASE("S=3 L=3 merge_only") { check_evaluate<MlpFamily<3, 3, GateLayout::merge_only>>(23); }
  SUBCASE("S=3 L=2 no final norm") {
    check_evaluate<MlpFamily<3, 2, GateLayout::merge_and_branch, FinalNorm::none>>(24);
  }
}

TEST_CASE("evaluate_structures in float: prefix tree equals naive, for few and many classes") {
  // The tree's float scoring (a packet of columns at a time, Eigen's SIMD exp and log)
  // against the naive method's; 19 classes span more than one SIMD packet of classes.
  using F = MlpFamily<4, 2, GateLayout::merge_only>;
  const auto masks = all_masks(F::gates);
  for (const Index classes : {Index(3), Index(19)}) {
    CAPTURE(classes);
    MlpConfig config = small;
    config.classes = classes;
    auto ds = random_dataset(83, 31);
    ds.num_classes = int(classes);
    std::mt19937_64 rng(5);
    for (auto& l : ds.labels) l = static_cast<std::uint8_t>(rng() % std::uint64_t(classes));
    const DatasetView data(ds);
    const auto pd = test::random_params<double>(mlp_layout(config, F::blocks), 32);
    const std::vector<float> pf(pd.begin(), pd.end());
    const auto naive = evaluate_structures<cpu::MlpModel<F, float>>(
        config, std::span<const float>(pf), data, masks, {.chunk = 32, .method = EvalMethod::naive});
    const auto tree = evaluate_structures<cpu::MlpModel<F, float>>(config, std::span<const float>(pf), data,
                                                                   masks, {.chunk = 32});
    const auto exact = evaluate_structures<cpu::MlpModel<F, double>>(config, std::span<const double>(pd),
                                                                     data, masks, {.chunk = 32});
    REQUIRE(tree.size() == naive.size());
    for (std::size_t i = 0; i < tree.size(); ++i) {
      CHECK(std::abs(tree[i].loss - naive[i].loss) <= 1e-5 * naive[i].loss);
      CHECK(std::abs(tree[i].loss - exact[i].loss) <= 1e-5 * exact[i].loss);
      CHECK(tree[i].accuracy == naive[i].accuracy);
    }
    // All logits equal (zero weights): the loss is log(classes) and the prediction the
    // first class, in both methods.
    const std::vector<float> zero(pf.size(), 0.0f);
    const double label0 = double(std::count(ds.labels.begin(), ds.labels.end(), 0)) / double(ds.count);
    for (const auto method : {EvalMethod::prefix_tree, EvalMethod::naive}) {
      const auto flat = evaluate_structures<cpu::MlpModel<F, float>>(
          config, std::span<const float>(zero), data, {0, 63}, {.chunk = 32, .method = method});
      for (const auto& r : flat) {
        CHECK(r.loss == doctest::Approx(std::log(double(classes))).epsilon(1e-6));
        CHECK(r.accuracy == label0);
      }
    }
  }
}

TEST_CASE("evaluate_structures: bad input is one clear error") {
  using F = MlpFamily<3, 2>;
  const auto ds = random_dataset(10, 1);
  const DatasetView data(ds);
  const auto params = test::random_params<double>(mlp_layout(small, F::blocks), 2);
  const std::span<const double> p(params);
  for (const auto method : {EvalMethod::prefix_tree, EvalMethod::naive}) {
    const EvalAllOptions o{.method = method};
    const auto eval = [&](std::span<const double> par, const DatasetView& d, std::vector<std::uint64_t> m,
                          const EvalAllOptions& opt) {
      return evaluate_structures<cpu::MlpModel<F, double>>(small, par, d, m, opt);
    };
    CHECK_THROWS_WITH_AS(eval(p, data, {}, o), "evaluate_structures: no structures to evaluate", InputError);
    const DatasetView empty(ds, std::vector<std::int64_t>{});
    CHECK_THROWS_WITH_AS(eval(p, empty, {1}, o), "evaluate_structures: the data set is empty", InputError);
    CHECK_THROWS_AS(eval(p, data, {0, 1ULL << F::gates}, o), InputError);
    CHECK_THROWS_AS(eval(p.first(p.size() - 1), data, {0}, o), InputError);
    EvalAllOptions bad_chunk = o;
    bad_chunk.chunk = 0;
    CHECK_THROWS_AS(eval(p, data, {0}, bad_chunk), InputError);
  }
  using Tree = cpu::PrefixTreeForward<F, double>;
  CHECK_THROWS_AS(Tree(small, {}, 1), InputError);
}
