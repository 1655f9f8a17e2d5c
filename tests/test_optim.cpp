// Optimizers and schedules against hand-computed values (exact decimal arithmetic
// written out below; cross-checked once against torch.optim.AdamW / SGD).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <additive/optim/adamw.hpp>
#include <additive/optim/optimizer.hpp>
#include <additive/optim/schedule.hpp>
#include <additive/optim/sgd.hpp>

namespace {

using additive::AdamW;
using additive::AdamWConfig;
using additive::ParamLayout;
using additive::Sgd;
using additive::SgdConfig;

// ---------------------------------------------------------------- concepts

struct NoState {  // steppable but without state(): a checkpoint could not resume it
  void step(std::span<float>, std::span<const float>, float) {}
  [[nodiscard]] std::int64_t steps() const { return 0; }
  void set_steps(std::int64_t) {}
  [[nodiscard]] const char* name() const { return "nostate"; }
};

static_assert(additive::Optimizer<AdamW<double>, double>);
static_assert(additive::Optimizer<AdamW<float>, float>);
static_assert(additive::Optimizer<Sgd<double>, double>);
static_assert(additive::Optimizer<Sgd<float>, float>);
static_assert(!additive::Optimizer<int, float>);
static_assert(!additive::Optimizer<AdamW<double>, float>);  // precision mismatch
static_assert(!additive::Optimizer<AdamW<float>, int>);     // not a floating type
static_assert(!additive::Optimizer<NoState, float>);
static_assert(additive::LrSchedule<additive::WarmupCosine>);
static_assert(additive::LrSchedule<additive::ConstantLr>);
static_assert(!additive::LrSchedule<int>);

// ---------------------------------------------------------------- helpers

// Two tensors: "w" (2 elements, decay) and "b" (1 element, no decay).
ParamLayout two_tensors() {
  ParamLayout l;
  l.add("w", {2}, true);
  l.add("b", {1}, false);
  return l;
}

// p0 and three gradients shared by the AdamW and SGD cases.
constexpr double kP0[3] = {1.0, -2.0, 0.5};
constexpr double kG[3][3] = {{0.5, -1.0, 2.0}, {-0.5, 0.25, 2.0}, {1.0, 0.0, -1.0}};

template <class T>
std::vector<T> to(const double (&a)[3]) {
  return {static_cast<T>(a[0]), static_cast<T>(a[1]), static_cast<T>(a[2])};
}

// |got - want| <= tol * max(1, |want|) for every element.
template <class T>
void check_close(std::span<const T> got, const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    CAPTURE(i);
    CAPTURE(static_cast<double>(got[i]));
    CAPTURE(want[i]);
    CHECK(std::abs(static_cast<double>(got[i]) - want[i]) <= tol * std::max(1.0, std::abs(want[i])));
  }
}

// The message of the InputError `f` throws, or a marker when it throws none.
template <class F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const additive::InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---------------------------------------------------------------- AdamW
//
// lr = 0.1, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, wd = 0.01 (keep = 1 - lr*wd = 0.999
// on "w" only). p0 = [1, -2 | 0.5], grads g1 = [0.5, -1 | 2], g2 = [-0.5, 0.25 | 2],
// g3 = [1, 0 | -1]. upd = lr * m_hat / (sqrt(v_hat) + eps), p = keep*p - upd.
//
// t=1: bc1 = 0.1, bc2 = 0.001; m = 0.1 g, v = 0.001 g^2, so m_hat = g, sqrt(v_hat) = |g|
//   w0: 0.999*1    - 0.1*0.5/(0.5+1e-8)   = 0.999  - 0.099999998  = 0.899000002
//   w1: 0.999*(-2) - 0.1*(-1)/(1+1e-8)    = -1.998 + 0.099999999  = -1.898000001
//   b : 0.5        - 0.1*2/(2+1e-8)       = 0.5    - 0.0999999995 = 0.4000000005
// t=2: bc1 = 1 - 0.81 = 0.19, bc2 = 1 - 0.998001 = 0.001999
//   w0: m = 0.9*0.05 + 0.1*(-0.5) = -0.005,  v = 0.999*0.00025 + 0.001*0.25 = 0.00049975
//       m_hat = -0.005/0.19 = -0.0263157894736842, sqrt(v_hat) = sqrt(0.25) = 0.5
//       p = 0.999*0.899000002 + 0.1*0.0263157894736842/0.50000001
//         = 0.898101001998 + 0.00526315778947369 = 0.90336415978747365
//   w1: m = -0.09 + 0.025 = -0.065,  v = 0.000999 + 0.0000625 = 0.0010615
//       m_hat = -0.342105263157895, sqrt(v_hat) = sqrt(0.0010615/0.001999) = 0.728708108747170
//       p = 0.999*(-1.898000001) + 0.0469468164765419 = -1.8491551845224581
//   b : m = 0.18 + 0.2 = 0.38, v = 0.003996 + 0.004 = 0.007996, m_hat = 2, sqrt(v_hat) = 2
//       p = 0.4000000005 - 0.1*2/(2+1e-8) = 0.300000001
// t=3: bc1 = 1 - 0.729 = 0.271, bc2 = 1 - 0.997002999 = 0.002997001
//   w0: m = -0.0045 + 0.1 = 0.0955, v = 0.00049925025 + 0.001 = 0.00149925025
//       m_hat = 0.352398523985240, sqrt(v_hat) = 0.707283653670879, upd = 0.0498242136904807
//       p = 0.999*0.90336415978747365 - upd = 0.85263658193720543
//   w1: m = -0.0585 + 0 = -0.0585, v = 0.0010604385 + 0 = 0.0010604385
//       m_hat = -0.215867158671587, sqrt(v_hat) = 0.594838814529504, upd = -0.0362900250908017
//       p = 0.999*(-1.8491551845224581) - upd = -1.8110160042471340
//   b : m = 0.342 - 0.1 = 0.242, v = 0.007988004 + 0.001 = 0.008988004
//       m_hat = 0.892988929889299, sqrt(v_hat) = 1.73176191579555, upd = 0.0515653402807703
//       p = 0.300000001 - upd = 0.24843466071922967
const std::vector<double> kAdamWP[3] = {{0.899000002, -1.898000001, 0.4000000005},
                                        {0.90336415978747365, -1.8491551845224581, 0.300000001},
                                        {0.85263658193720543, -1.8110160042471340, 0.24843466071922967}};
const std::vector<double> kAdamWM3 = {0.0955, -0.0585, 0.242};
const std::vector<double> kAdamWV3 = {0.00149925025, 0.0010604385, 0.008988004};

template <class T>
void run_adamw_three_steps(double tol) {
  AdamW<T> opt(two_tensors(), AdamWConfig{});
  std::vector<T> p = to<T>(kP0);
  for (int t = 0; t < 3; ++t) {
    CAPTURE(t);
    const std::vector<T> g = to<T>(kG[t]);
    opt.step(std::span<T>(p), std::span<const T>(g), static_cast<T>(0.1));
    check_close<T>(p, kAdamWP[t], tol);
  }
  CHECK(opt.steps() == 3);
  auto st = opt.state();
  check_close<T>(st[0].second, kAdamWM3, tol);
  check_close<T>(st[1].second, kAdamWV3, tol);
}

TEST_CASE("AdamW: three steps match hand-computed values (double, 1e-12)") {
  run_adamw_three_steps<double>(1e-12);
}

TEST_CASE("AdamW: three steps match hand-computed values (float, 1e-6 relative)") {
  run_adamw_three_steps<float>(1e-6);
}

TEST_CASE("AdamW: a no-decay tensor receives no decay") {
  // Zero gradient: m = v = 0, update = 0/(0 + eps) = 0, so only the decay acts:
  // "w" becomes 0.99 * p (lr = 1, wd = 0.01), "b" stays bit-identical.
  AdamW<double> opt(two_tensors(),
                    AdamWConfig{.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01});
  std::vector<double> p = {1.0, -2.0, 0.5};
  const std::vector<double> g(3, 0.0);
  opt.step(std::span<double>(p), std::span<const double>(g), 1.0);
  CHECK(p[0] == 0.99);
  CHECK(p[1] == -1.98);
  CHECK(p[2] == 0.5);
}

// Resume as a checkpoint does it: after two steps, copy every state buffer and the step
// count into a fresh optimizer; step 3 must then be bit-identical to the unbroken run.
template <class Opt>
void check_resume(Opt a, Opt b) {
  std::vector<double> p = to<double>(kP0);
  for (int t = 0; t < 2; ++t) {
    const std::vector<double> g = to<double>(kG[t]);
    a.step(std::span<double>(p), std::span<const double>(g), 0.1);
  }
  auto sa = a.state();
  auto sb = b.state();
  REQUIRE(sa.size() == sb.size());
  for (std::size_t k = 0; k < sa.size(); ++k) {
    CHECK(sa[k].first == sb[k].first);
    std::copy(sa[k].second.begin(), sa[k].second.end(), sb[k].second.begin());
  }
  b.set_steps(a.steps());
  std::vector<double> q = p;
  const std::vector<double> before = p;
  const std::vector<double> g3 = to<double>(kG[2]);
  a.step(std::span<double>(p), std::span<const double>(g3), 0.1);
  b.step(std::span<double>(q), std::span<const double>(g3), 0.1);
  CHECK(p != before);  // the step did something
  CHECK(p == q);
  CHECK(b.steps() == 3);
}

TEST_CASE("AdamW: bit-identical for 1, 2 and 3 threads over many chunks") {
  // Tensors larger than one work chunk (32768 elements), uneven sizes, both decay kinds:
  // a reference loop over the flat buffer written out here, then the optimizer on 1..3
  // threads; every element must agree bit for bit.
  ParamLayout layout;
  layout.add("w", {300, 301}, true);  // 90300 elements: three chunks
  layout.add("b", {7}, false);
  layout.add("u", {40000}, true);
  const std::size_t n = layout.total();
  std::vector<float> p0(n), g(n);
  std::uint64_t state = 0x9e3779b97f4a7c15ULL;
  auto next = [&state] {  // xorshift64*: values in [-1, 1)
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return static_cast<float>(static_cast<double>((state * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-52 - 1.0);
  };
  for (std::size_t i = 0; i < n; ++i) {
    p0[i] = next();
    g[i] = next();
  }
  // Reference: two steps, as the class documents it, in float with double-rounded scalars.
  std::vector<float> ref = p0, m(n, 0.0f), v(n, 0.0f);
  const AdamWConfig c{};
  for (int t = 1; t <= 2; ++t) {
    const double lr = static_cast<double>(1e-3f);  // the optimizer receives lr as T
    const auto step_size = static_cast<float>(lr / (1.0 - std::pow(c.beta1, t)));
    const auto sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(c.beta2, t)));
    const auto decayed = static_cast<float>(1.0 - lr * c.weight_decay);
    for (const auto& spec : layout.tensors())
      for (std::size_t i = spec.offset; i < spec.offset + spec.size; ++i) {
        m[i] = static_cast<float>(c.beta1) * m[i] + static_cast<float>(1.0 - c.beta1) * g[i];
        v[i] = static_cast<float>(c.beta2) * v[i] + static_cast<float>(1.0 - c.beta2) * g[i] * g[i];
        ref[i] = ref[i] * (spec.decay ? decayed : 1.0f) -
                 step_size * (m[i] / (std::sqrt(v[i]) / sqrt_bc2 + static_cast<float>(c.eps)));
      }
  }
  for (int threads = 1; threads <= 3; ++threads) {
    CAPTURE(threads);
    AdamW<float> opt(layout, c);
    opt.set_threads(threads);
    CHECK(opt.threads() == threads);
    std::vector<float> p = p0;
    for (int t = 0; t < 2; ++t) opt.step(std::span<float>(p), std::span<const float>(g), 1e-3f);
    CHECK(p != p0);
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < n; ++i) mismatches += p[i] != ref[i] ? 1 : 0;
    CHECK(mismatches == 0);
  }
}

TEST_CASE("AdamW: state names, sizes, step counter and resume") {
  AdamW<double> a(two_tensors());
  auto st = a.state();
  REQUIRE(st.size() == 2);
  CHECK(st[0].first == "m");
  CHECK(st[1].first == "v");
  CHECK(st[0].second.size() == 3);
  CHECK(st[1].second.size() == 3);
  CHECK(a.name() == "adamw");
  CHECK(a.steps() == 0);
  check_resume(AdamW<double>(two_tensors()), AdamW<double>(two_tensors()));
}

TEST_CASE("AdamW: config and step arguments are validated") {
  const ParamLayout l = two_tensors();
  auto make = [&](AdamWConfig c) { return [=] { AdamW<float> o(l, c); }; };
  CHECK(contains(input_error_of(make({.beta1 = 1.0})), "beta1 = 1,"));
  CHECK(contains(input_error_of(make({.beta1 = -0.1})), "beta1 = -0.1"));
  CHECK(contains(input_error_of(make({.beta1 = std::nan("")})), "beta1 = nan"));
  CHECK(contains(input_error_of(make({.beta2 = 1.5})), "beta2 = 1.5"));
  CHECK(contains(input_error_of(make({.eps = 0.0})), "eps = 0"));
  CHECK(contains(input_error_of(make({.weight_decay = -0.01})), "weight_decay = -0.01"));
  CHECK(input_error_of(make({.beta1 = 0.0})) == "<no InputError>");

  AdamW<double> opt(l);
  std::vector<double> p(3, 0.0), g(3, 0.0), short_g(2, 0.0);
  CHECK(
      contains(input_error_of([&] { opt.step(std::span<double>(p), std::span<const double>(short_g), 0.1); }),
               "grads has 2 elements, expected the layout's 3"));
  CHECK(contains(
      input_error_of([&] { opt.step(std::span<double>(p).first(1), std::span<const double>(g), 0.1); }),
      "params has 1 elements"));
  CHECK(contains(input_error_of([&] { opt.step(std::span<double>(p), std::span<const double>(g), -0.1); }),
                 "lr = -0.1"));
  CHECK(opt.steps() == 0);  // rejected steps do not count
  CHECK(contains(input_error_of([&] { opt.set_steps(-1); }), "steps = -1"));
}

// ---------------------------------------------------------------- SGD
//
// lr = 0.1, momentum = 0.9, wd = 0.1 on "w" only. Same p0 and grads as AdamW.
// g' = g + wd*p; buf = g' (t=1), else 0.9*buf + g'; heavy ball u = buf; nesterov
// u = g' + 0.9*buf; p -= 0.1*u.
//
// Heavy ball:
// t=1: g' = [0.5+0.1, -1-0.2 | 2] = [0.6, -1.2 | 2] = buf;  p = [0.94, -1.88 | 0.3]
// t=2: g' = [-0.5+0.094, 0.25-0.188 | 2] = [-0.406, 0.062 | 2]
//      buf = [0.54-0.406, -1.08+0.062 | 1.8+2] = [0.134, -1.018 | 3.8]
//      p = [0.94-0.0134, -1.88+0.1018 | 0.3-0.38] = [0.9266, -1.7782 | -0.08]
// t=3: g' = [1+0.09266, 0-0.17782 | -1] = [1.09266, -0.17782 | -1]
//      buf = [0.1206+1.09266, -0.9162-0.17782 | 3.42-1] = [1.21326, -1.09402 | 2.42]
//      p = [0.9266-0.121326, -1.7782+0.109402 | -0.08-0.242] = [0.805274, -1.668798 | -0.322]
//
// Nesterov:
// t=1: g' = buf = [0.6, -1.2 | 2]; u = g' + 0.9 g' = [1.14, -2.28 | 3.8]
//      p = [1-0.114, -2+0.228 | 0.5-0.38] = [0.886, -1.772 | 0.12]
// t=2: g' = [-0.5+0.0886, 0.25-0.1772 | 2] = [-0.4114, 0.0728 | 2]
//      buf = [0.54-0.4114, -1.08+0.0728 | 3.8] = [0.1286, -1.0072 | 3.8]
//      u = [-0.4114+0.11574, 0.0728-0.90648 | 2+3.42] = [-0.29566, -0.83368 | 5.42]
//      p = [0.886+0.029566, -1.772+0.083368 | 0.12-0.542] = [0.915566, -1.688632 | -0.422]
// t=3: g' = [1+0.0915566, 0-0.1688632 | -1] = [1.0915566, -0.1688632 | -1]
//      buf = [0.11574+1.0915566, -0.90648-0.1688632 | 3.42-1]
//          = [1.2072966, -1.0753432 | 2.42]
//      u = [1.0915566+1.08656694, -0.1688632-0.96780888 | -1+2.178]
//        = [2.17812354, -1.13667208 | 1.178]
//      p = [0.915566-0.217812354, -1.688632+0.113667208 | -0.422-0.1178]
//        = [0.697753646, -1.574964792 | -0.5398]
struct SgdCase {
  bool nesterov;
  std::vector<double> p[3];
  std::vector<double> buf3;
};
const SgdCase kSgdCases[] = {
    {false,
     {{0.94, -1.88, 0.3}, {0.9266, -1.7782, -0.08}, {0.805274, -1.668798, -0.322}},
     {1.21326, -1.09402, 2.42}},
    {true,
     {{0.886, -1.772, 0.12}, {0.915566, -1.688632, -0.422}, {0.697753646, -1.574964792, -0.5398}},
     {1.2072966, -1.0753432, 2.42}},
};

template <class T>
void run_sgd_three_steps(const SgdCase& c, double tol) {
  Sgd<T> opt(two_tensors(), SgdConfig{.momentum = 0.9, .nesterov = c.nesterov, .weight_decay = 0.1});
  std::vector<T> p = to<T>(kP0);
  for (int t = 0; t < 3; ++t) {
    CAPTURE(t);
    const std::vector<T> g = to<T>(kG[t]);
    opt.step(std::span<T>(p), std::span<const T>(g), static_cast<T>(0.1));
    check_close<T>(p, c.p[t], tol);
  }
  CHECK(opt.steps() == 3);
  auto st = opt.state();
  REQUIRE(st.size() == 1);
  CHECK(st[0].first == "momentum");
  check_close<T>(st[0].second, c.buf3, tol);
}

TEST_CASE("SGD: momentum and nesterov match hand-computed values") {
  for (const SgdCase& c : kSgdCases) {
    CAPTURE(c.nesterov);
    run_sgd_three_steps<double>(c, 1e-12);
    run_sgd_three_steps<float>(c, 1e-6);
  }
}

TEST_CASE("SGD: state names, sizes and resume") {
  const SgdConfig c{.momentum = 0.9, .nesterov = true, .weight_decay = 0.1};
  Sgd<double> opt(two_tensors(), c);
  auto st = opt.state();
  REQUIRE(st.size() == 1);
  CHECK(st[0].first == "momentum");
  CHECK(st[0].second.size() == 3);
  check_resume(Sgd<double>(two_tensors(), c), Sgd<double>(two_tensors(), c));
}

TEST_CASE("SGD: momentum = 0 is plain SGD with no state") {
  // p -= lr * (g + wd*p) on "w", p -= lr*g on "b"; lr = 0.5, wd = 0.5:
  // w0: 1 - 0.5*(0.5 + 0.5)    = 0.5;   w1: -2 - 0.5*(-1 - 1) = -1;   b: 0.5 - 0.5*2 = -0.5
  Sgd<double> opt(two_tensors(), SgdConfig{.momentum = 0.0, .nesterov = false, .weight_decay = 0.5});
  CHECK(opt.state().empty());
  CHECK(opt.name() == "sgd");
  std::vector<double> p = to<double>(kP0);
  const std::vector<double> g = to<double>(kG[0]);
  opt.step(std::span<double>(p), std::span<const double>(g), 0.5);
  CHECK(p == std::vector<double>{0.5, -1.0, -0.5});
}

TEST_CASE("SGD: config is validated") {
  const ParamLayout l = two_tensors();
  auto make = [&](SgdConfig c) { return [=] { Sgd<double> o(l, c); }; };
  CHECK(contains(input_error_of(make({.momentum = 1.0})), "momentum = 1,"));
  CHECK(contains(input_error_of(make({.momentum = -0.5})), "momentum = -0.5"));
  CHECK(contains(input_error_of(make({.momentum = 0.0, .nesterov = true})), "nesterov"));
  CHECK(contains(input_error_of(make({.weight_decay = -1.0})), "weight_decay = -1"));
  CHECK(input_error_of(make({.momentum = 0.0})) == "<no InputError>");
}

// ---------------------------------------------------------------- schedules

TEST_CASE("WarmupCosine: warmup, cosine and clamp") {
  // base 1, W = 4, T = 14, min 0.1.
  const additive::WarmupCosine s{1.0, 4, 14, 0.1};
  CHECK(s.lr(0) == 0.25);  // 1 * (0+1)/4
  CHECK(s.lr(1) == 0.5);   // 1 * 2/4
  CHECK(s.lr(3) == 1.0);   // end of warmup: 1 * 4/4
  CHECK(s.lr(4) == 1.0);   // cosine start: 0.1 + 0.9 * (1 + cos 0)/2
  // Midpoint, step 9: progress (9-4)/(14-4) = 0.5, 0.1 + 0.9 * (1 + cos(pi/2))/2 = 0.55
  CHECK(std::abs(s.lr(9) - 0.55) < 1e-15);
  // Step 6: progress 0.2, 0.1 + 0.45 * (1 + cos(0.2 pi)) = 0.1 + 0.45 * 1.80901699437494742
  CHECK(std::abs(s.lr(6) - 0.914057647468726) < 1e-14);
  CHECK(std::abs(s.lr(13) - 0.1) < 0.03);  // one step before the end: near min
  CHECK(s.lr(13) > 0.1);
  CHECK(s.lr(14) == 0.1);  // end
  CHECK(s.lr(20) == 0.1);  // past the end: clamped

  const additive::WarmupCosine no_warmup{2.0, 0, 10};
  CHECK(no_warmup.lr(0) == 2.0);
  CHECK(std::abs(no_warmup.lr(5) - 1.0) < 1e-15);
  CHECK(no_warmup.lr(10) == 0.0);

  const additive::WarmupCosine only_warmup{1.0, 2, 2};
  CHECK(only_warmup.lr(1) == 1.0);
  CHECK(only_warmup.lr(2) == 0.0);
}

TEST_CASE("Schedules: arguments are validated") {
  using additive::WarmupCosine;
  CHECK(contains(input_error_of([] { WarmupCosine s(0.0, 1, 10); }), "base_lr = 0"));
  CHECK(contains(input_error_of([] { WarmupCosine s(1.0, -1, 10); }), "warmup_steps = -1"));
  CHECK(contains(input_error_of([] { WarmupCosine s(1.0, 5, 4); }), "total_steps = 4"));
  CHECK(contains(input_error_of([] { WarmupCosine s(1.0, 0, 0); }), "total_steps = 0"));
  CHECK(contains(input_error_of([] { WarmupCosine s(1.0, 1, 10, 2.0); }), "min_lr = 2"));
  CHECK(contains(input_error_of([] { (void)WarmupCosine(1.0, 1, 10).lr(-1); }), "step = -1"));
  CHECK(contains(input_error_of([] { additive::ConstantLr s(-1.0); }), "lr = -1"));
  CHECK(contains(input_error_of([] { additive::ConstantLr s(INFINITY); }), "lr = inf"));

  const additive::ConstantLr c{3e-4};
  CHECK(c.lr(0) == 3e-4);
  CHECK(c.lr(1000000) == 3e-4);
}

}  // namespace
