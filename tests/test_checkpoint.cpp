// Tests of io/checkpoint.hpp: round trips in float and double (parameters, optimizer
// state, metadata, RNG state), and every way a checkpoint can fail to match the model,
// each an InputError that leaves the destination untouched.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "additive/io/checkpoint.hpp"
#include "additive/io/safetensors.hpp"

namespace fs = std::filesystem;
using additive::CheckpointState;
using additive::InputError;
using additive::ParamLayout;
using additive::SafetensorsFile;
using additive::SafetensorsWriter;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("additive_test_checkpoint_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] fs::path operator/(const std::string& name) const { return path / name; }
};

std::string input_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  }
  return "<no exception>";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

/// A small model's layout, in the order and names of docs/design-notes.md.
ParamLayout small_layout(std::int64_t hidden = 6) {
  ParamLayout layout;
  layout.add("embed.weight", {3, 4}, true);
  layout.add("embed.bias", {3}, false);
  layout.add("blocks.0.up.weight", {hidden, 3}, true);
  layout.add("blocks.0.up.bias", {hidden}, false);
  layout.add("head.weight", {2, 3}, true);
  return layout;
}

template <class T>
std::vector<T> random_buffer(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<T> out(n);
  for (auto& x : out) x = static_cast<T>(normal(rng));
  return out;
}

/// The model, optimizer and metadata of a run in progress.
template <class T>
struct Run {
  ParamLayout layout = small_layout();
  std::vector<T> params = random_buffer<T>(layout.total(), 1);
  std::vector<T> m = random_buffer<T>(layout.total(), 2);
  std::vector<T> v = random_buffer<T>(layout.total(), 3);
  std::mt19937_64 rng{12345};
  std::map<std::string, std::string> metadata;

  Run() {
    rng.discard(1000);
    metadata = {{"step", "123"},
                {"epoch", "4"},
                {"rng", additive::rng_to_string(rng)},
                {"structure", "mask=0b101 [12|3] res=1"},
                {"config", R"({"lr": 0.001, "blocks": 1})"}};
  }
  CheckpointState<T> state() { return {&layout, params, {{"m", m}, {"v", v}}, metadata}; }
};

/// A destination filled with a sentinel, to prove a failed load changes nothing.
template <class T>
struct Destination {
  ParamLayout layout;
  std::vector<T> params, m, v;
  CheckpointState<T> state;

  explicit Destination(ParamLayout l)
      : layout(std::move(l)),
        params(layout.total(), T(7)),
        m(layout.total(), T(8)),
        v(layout.total(), T(9)),
        state{&layout, params, {{"m", m}, {"v", v}}, {{"sentinel", "untouched"}}} {}

  [[nodiscard]] bool untouched() const {
    auto all = [](const std::vector<T>& b, T x) {
      return std::all_of(b.begin(), b.end(), [x](T y) { return y == x; });
    };
    return all(params, T(7)) && all(m, T(8)) && all(v, T(9)) &&
           state.metadata == std::map<std::string, std::string>{{"sentinel", "untouched"}};
  }
};

/// A checkpoint-like file written directly, for the cases `save_checkpoint` refuses to make.
void write_raw_checkpoint(const fs::path& path, const ParamLayout& layout, const std::vector<float>& params,
                          const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w;
  for (const auto& t : layout.tensors()) w.add(t.name, t.shape, std::span(params).subspan(t.offset, t.size));
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.write(path);
}

std::map<std::string, std::string> valid_metadata() {
  return {{"format", "additive-checkpoint-1"},
          {"dtype", "F32"},
          {"step", "1"},
          {"epoch", "0"},
          {"rng", additive::rng_to_string(std::mt19937_64{})}};
}

}  // namespace

static_assert(additive::CheckpointScalar<float> && additive::CheckpointScalar<double>);
static_assert(!additive::CheckpointScalar<int> && !additive::CheckpointScalar<long double>);

TEST_CASE_TEMPLATE("checkpoint: round trip restores parameters, optimizer state, metadata and RNG", T, float,
                   double) {
  TempDir dir;
  Run<T> run;
  REQUIRE(run.layout.total() == 12 + 3 + 18 + 6 + 6);
  const auto path = dir / "ckpt.safetensors";
  additive::save_checkpoint(path, run.state());

  Destination<T> dest(small_layout());
  additive::load_checkpoint(path, dest.state);
  CHECK(dest.params == run.params);
  CHECK(dest.m == run.m);
  CHECK(dest.v == run.v);
  auto expected = run.metadata;
  expected["format"] = "additive-checkpoint-1";
  expected["dtype"] = std::is_same_v<T, float> ? "F32" : "F64";
  CHECK(dest.state.metadata == expected);

  // The restored engine continues the original's sequence.
  std::mt19937_64 restored = additive::rng_from_string(dest.state.metadata.at("rng"));
  for (int i = 0; i < 5; ++i) CHECK(restored() == run.rng());

  // The file is plain safetensors with the documented names.
  const SafetensorsFile file(path);
  CHECK(file.names().size() == 3 * run.layout.tensors().size());
  CHECK(file.shape("optim.m.blocks.0.up.weight") == std::vector<std::int64_t>{6, 3});
  CHECK(file.dtype("optim.v.head.weight") == additive::dtype_of<T>);
  CHECK(file.read<T>("embed.bias") == std::vector<T>(run.params.begin() + 12, run.params.begin() + 15));

  // A resume saves again with the metadata it loaded (format and dtype included).
  dest.state.metadata["step"] = "124";
  additive::save_checkpoint(path, dest.state);
  CHECK(SafetensorsFile(path).metadata("step") == "124");
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("checkpoint: parameters alone load from a file with optimizer state") {
  TempDir dir;
  Run<double> run;
  additive::save_checkpoint(dir / "c", run.state());
  ParamLayout layout = small_layout();
  std::vector<double> params(layout.total());
  CheckpointState<double> into{&layout, params, {}, {}};
  additive::load_checkpoint(dir / "c", into);
  CHECK(params == run.params);
  CHECK(into.metadata.at("epoch") == "4");
}

TEST_CASE("checkpoint: a tensor of the wrong shape names it and both shapes; nothing changes") {
  TempDir dir;
  Run<float> run;
  additive::save_checkpoint(dir / "c.safetensors", run.state());
  Destination<float> dest(small_layout(8));
  const auto msg = input_error_of([&] { additive::load_checkpoint(dir / "c.safetensors", dest.state); });
  CHECK(contains(msg, "checkpoint '" + (dir / "c.safetensors").string() + "'"));
  CHECK(contains(msg, "tensor 'blocks.0.up.weight' has shape [6, 3], expected [8, 3]"));
  CHECK(dest.untouched());
}

TEST_CASE("checkpoint: NaN or Inf is refused on save and on load, naming the tensor and index") {
  TempDir dir;
  Run<float> run;
  const auto path = dir / "c.safetensors";
  additive::save_checkpoint(path, run.state());

  // Saving a diverged state keeps the last good checkpoint.
  const auto& up = run.layout.find("blocks.0.up.weight");
  run.params[up.offset + 4] = std::numeric_limits<float>::quiet_NaN();
  auto msg = input_error_of([&] { additive::save_checkpoint(path, run.state()); });
  CHECK(contains(msg, "refusing to save tensor 'blocks.0.up.weight': NaN at index 4 (element [1, 1])"));
  run.params[up.offset + 4] = 0.f;
  run.v[run.layout.find("head.weight").offset + 5] = -std::numeric_limits<float>::infinity();
  msg = input_error_of([&] { additive::save_checkpoint(path, run.state()); });
  CHECK(contains(msg, "refusing to save tensor 'optim.v.head.weight': -Inf at index 5 (element [1, 2])"));
  Destination<float> check(small_layout());
  additive::load_checkpoint(path, check.state);
  CHECK(check.params[up.offset + 4] != 0.f);

  // A file made by something else.
  std::vector<float> params = random_buffer<float>(run.layout.total(), 4);
  params[run.layout.find("embed.bias").offset + 2] = std::numeric_limits<float>::infinity();
  write_raw_checkpoint(dir / "nan.safetensors", run.layout, params, valid_metadata());
  Destination<float> dest(small_layout());
  dest.state.optimizer_state.clear();
  msg = input_error_of([&] { additive::load_checkpoint(dir / "nan.safetensors", dest.state); });
  CHECK(contains(msg, "nan.safetensors"));
  CHECK(contains(msg, "tensor 'embed.bias' has +Inf at index 2 (element [2])"));
  CHECK(std::all_of(dest.params.begin(), dest.params.end(), [](float x) { return x == 7.f; }));
}

TEST_CASE("checkpoint: missing, unexpected and mistyped tensors are errors; nothing changes") {
  TempDir dir;
  Run<float> run;
  const auto path = dir / "c.safetensors";
  additive::save_checkpoint(path, run.state());

  SUBCASE("a tensor the file lacks") {
    ParamLayout bigger = small_layout();
    bigger.add("head.bias", {2}, false);
    Destination<float> dest(bigger);
    CHECK(contains(input_error_of([&] { additive::load_checkpoint(path, dest.state); }),
                   "missing tensor 'head.bias'"));
    CHECK(dest.untouched());
  }
  SUBCASE("an optimizer state the file lacks") {
    Destination<float> dest(small_layout());
    dest.state.optimizer_state[1].first = "w";
    CHECK(contains(input_error_of([&] { additive::load_checkpoint(path, dest.state); }),
                   "missing tensor 'optim.w.embed.weight'"));
    dest.state.optimizer_state[1].first = "v";
    CHECK(dest.untouched());
  }
  SUBCASE("a tensor the model lacks") {
    const ParamLayout full = small_layout();
    ParamLayout smaller;
    for (const auto& t : full.tensors())
      if (t.name != "head.weight") smaller.add(t.name, t.shape, t.decay);
    Destination<float> dest(smaller);
    CHECK(contains(input_error_of([&] { additive::load_checkpoint(path, dest.state); }),
                   "unexpected tensor 'head.weight'"));
    CHECK(dest.untouched());
  }
  SUBCASE("float checkpoint into a double model") {
    Destination<double> dest(small_layout());
    CHECK(contains(input_error_of([&] { additive::load_checkpoint(path, dest.state); }),
                   "stored as F32, expected F64"));
    CHECK(dest.untouched());
  }
  SUBCASE("a tensor of another dtype") {
    auto params = random_buffer<float>(run.layout.total(), 5);
    const std::vector<double> wide(3, 1.0);
    SafetensorsWriter w;
    for (const auto& t : run.layout.tensors())
      if (t.name == "embed.bias")
        w.add(t.name, t.shape, wide);
      else
        w.add(t.name, t.shape, std::span(params).subspan(t.offset, t.size));
    for (const auto& [k, v] : valid_metadata()) w.set_metadata(k, v);
    w.write(dir / "mixed.safetensors");
    Destination<float> dest(small_layout());
    dest.state.optimizer_state.clear();
    CHECK(contains(input_error_of([&] { additive::load_checkpoint(dir / "mixed.safetensors", dest.state); }),
                   "tensor 'embed.bias' is F64, expected F32"));
    CHECK(std::all_of(dest.params.begin(), dest.params.end(), [](float x) { return x == 7.f; }));
  }
}

TEST_CASE("checkpoint: required metadata is checked on load") {
  TempDir dir;
  const ParamLayout layout = small_layout();
  const auto params = random_buffer<float>(layout.total(), 6);
  struct Case {
    const char* key;
    std::optional<std::string> value;  // nothing: remove the key
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"format", std::nullopt, "missing metadata 'format' (not an additive checkpoint)"},
      {"format", "additive-checkpoint-0", "metadata 'format' is 'additive-checkpoint-0', expected"},
      {"dtype", std::nullopt, "missing metadata 'dtype'"},
      {"step", std::nullopt, "missing metadata 'step'"},
      {"epoch", std::nullopt, "missing metadata 'epoch'"},
      {"rng", std::nullopt, "missing metadata 'rng'"},
      {"step", "-1", "metadata 'step' is '-1', expected an unsigned integer"},
      {"epoch", "2.5", "metadata 'epoch' is '2.5', expected an unsigned integer"},
      {"step", "99999999999999999999", "expected an unsigned integer"},
      {"rng", "1 2 3", "metadata 'rng': malformed std::mt19937_64 state"},
  };
  int index = 0;
  for (const auto& c : cases) {
    CAPTURE(c.key);
    CAPTURE(c.expected);
    auto metadata = valid_metadata();
    if (c.value)
      metadata[c.key] = *c.value;
    else
      metadata.erase(c.key);
    const auto path = dir / ("meta_" + std::to_string(index++) + ".safetensors");
    write_raw_checkpoint(path, layout, params, metadata);
    Destination<float> dest(small_layout());
    dest.state.optimizer_state.clear();
    const auto msg = input_error_of([&] { additive::load_checkpoint(path, dest.state); });
    CHECK(contains(msg, "checkpoint '" + path.string() + "': "));
    CHECK(contains(msg, c.expected));
    CHECK(dest.untouched());
  }
  // The control: the valid metadata loads.
  write_raw_checkpoint(dir / "ok.safetensors", layout, params, valid_metadata());
  Destination<float> dest(small_layout());
  dest.state.optimizer_state.clear();
  additive::load_checkpoint(dir / "ok.safetensors", dest.state);
  CHECK(dest.params == params);

  // A corrupt file is the safetensors reader's InputError.
  std::ofstream(dir / "junk.safetensors") << "not a checkpoint";
  CHECK(contains(input_error_of([&] { additive::load_checkpoint(dir / "junk.safetensors", dest.state); }),
                 "junk.safetensors': header length"));
}

TEST_CASE("checkpoint: save refuses a state that does not fit its layout") {
  TempDir dir;
  Run<float> run;
  const auto path = dir / "c.safetensors";
  auto state = run.state();

  SUBCASE("no layout") {
    state.layout = nullptr;
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }),
                   "no parameter layout given"));
  }
  SUBCASE("params of the wrong size") {
    state.params = state.params.first(10);
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }),
                   "params has 10 elements, the layout has 45"));
  }
  SUBCASE("optimizer state of the wrong size") {
    state.optimizer_state[0].second = state.optimizer_state[0].second.first(3);
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }),
                   "optimizer state 'm' has 3 elements"));
  }
  SUBCASE("a state name with a dot, or twice") {
    state.optimizer_state[0].first = "a.b";
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }), "contain no '.'"));
    state.optimizer_state[0].first = "v";
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }), "given twice"));
  }
  SUBCASE("missing or malformed required metadata") {
    state.metadata.erase("rng");
    CHECK(
        contains(input_error_of([&] { additive::save_checkpoint(path, state); }), "missing metadata 'rng'"));
    state.metadata["rng"] = "garbage";
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }),
                   "metadata 'rng': malformed"));
    state.metadata["rng"] = run.metadata["rng"];
    state.metadata["step"] = "x";
    CHECK(
        contains(input_error_of([&] { additive::save_checkpoint(path, state); }), "metadata 'step' is 'x'"));
  }
  SUBCASE("reserved metadata with another value") {
    state.metadata["dtype"] = "F64";
    CHECK(contains(input_error_of([&] { additive::save_checkpoint(path, state); }),
                   "metadata 'dtype' is 'F64', but this checkpoint is 'F32'"));
  }
  CHECK_FALSE(fs::exists(path));
  CHECK(fs::is_empty(dir.path));
}

TEST_CASE("rng: state round-trips through a string; malformed strings are InputErrors") {
  std::mt19937_64 rng(99);
  rng.discard(777);
  const std::string text = additive::rng_to_string(rng);
  std::mt19937_64 copy = additive::rng_from_string(text);
  CHECK(copy == rng);
  for (int i = 0; i < 1000; ++i) REQUIRE(copy() == rng());

  const std::string valid = additive::rng_to_string(std::mt19937_64{});
  const std::string first_word = valid.substr(0, valid.find(' '));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "expected"},
      {"1 2 3", "found 3"},
      {valid + " 5", "numbers, found"},
      {"-" + valid, "where an unsigned decimal number belongs"},
      {"x" + valid.substr(1), "found 'x"},
      {"99999999999999999999" + valid.substr(first_word.size()), "number 1 does not fit in 64 bits"},
      {valid.substr(0, valid.size() - 1) + "q", "where an unsigned decimal number belongs"},
  };
  for (const auto& c : bad) {
    CAPTURE(c.second);
    const auto msg = input_error_of([&] { (void)additive::rng_from_string(c.first); });
    CHECK(contains(msg, "malformed std::mt19937_64 state"));
    CHECK(contains(msg, c.second));
  }
  // All-zero state words would make the generator emit zeros forever.
  std::string zeros;
  const std::size_t words = static_cast<std::size_t>(std::count(valid.begin(), valid.end(), ' ')) + 1;
  for (std::size_t i = 0; i < words; ++i) zeros += (i ? " 0" : "0");
  CHECK(contains(input_error_of([&] { (void)additive::rng_from_string(zeros); }), "all zero"));
}
