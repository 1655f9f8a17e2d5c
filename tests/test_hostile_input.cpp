// Hostile and careless input (issue 18): JSON parsed with a depth limit and echoed short
// (io/json.hpp), results files checked field by field (exp/results_file.hpp), checkpoint
// metadata read field by field (io/checkpoint.hpp), and safetensors files whose header
// is refused before their data is read (io/safetensors.hpp).
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/exp/results_file.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/io/checkpoint.hpp"
#include "additive/io/json.hpp"
#include "additive/io/safetensors.hpp"

namespace fs = std::filesystem;
using additive::InputError;
using additive::SafetensorsFile;
using nlohmann::json;

namespace {

std::string deep_array(std::size_t levels) { return std::string(levels, '[') + std::string(levels, ']'); }

/// The InputError message of `f` ("" when it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return {};
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("additive_test_hostile_" + std::to_string(::getpid()) + "_" + name);
}

/// A safetensors file made of a raw header text and `data_bytes` zero bytes after it.
void write_safetensors(const fs::path& path, std::string header, std::uint64_t data_bytes = 0) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header;
  out.close();
  fs::resize_file(path, 8 + n + data_bytes);  // sparse: no disk space for the zeros
}

}  // namespace

TEST_CASE("parse_json_limited: 64 levels pass, deeper nesting is one InputError naming the input") {
  CHECK(additive::parse_json_limited(deep_array(64), "x").is_array());
  for (const std::size_t levels : {65, 1000, 200000}) {
    CAPTURE(levels);
    const std::string msg =
        error_of([&] { (void)additive::parse_json_limited(deep_array(levels), "file 'f'"); });
    CHECK(msg == "file 'f' nests JSON arrays and objects more than 64 levels deep");
  }
  std::istringstream in("{\"a\": " + deep_array(100000) + "}");
  CHECK(contains(error_of([&] { (void)additive::parse_json_limited(in, "stream"); }), "stream nests JSON"));
  // Malformed JSON stays nlohmann's parse_error, for the caller to word.
  CHECK_THROWS_AS((void)additive::parse_json_limited("{\"a\": ", "x"), json::parse_error);
  // A second callback still runs (and may discard values).
  const auto j = additive::parse_json_limited("{\"keep\": 1, \"drop\": 2}", "x",
                                              [](int, json::parse_event_t e, json& parsed) {
                                                return !(e == json::parse_event_t::key && parsed == "drop");
                                              });
  CHECK(j == json{{"keep", 1}});
}

TEST_CASE("parse_json_limited: a number beyond the range of a double is one InputError naming the input") {
  // Found by fuzz/fuzz_results.cpp: nlohmann throws out_of_range.406 (not parse_error) for
  // such a literal, which escaped every caller that words parse_error alone.
  const std::string long_number(400, '7');  // about 7.8e399
  for (const std::string& text :
       {std::string("[1e999]"), std::string("{\"a\": -1e400}"), "[1, " + long_number + "]"}) {
    CAPTURE(text);
    const std::string msg = error_of([&] { (void)additive::parse_json_limited(text, "file 'f'"); });
    CHECK(msg.starts_with("file 'f' holds a number beyond the range of a double ("));
    CHECK(msg.size() < 140);  // the number is echoed short
    std::istringstream in(text);
    CHECK(error_of([&] { (void)additive::parse_json_limited(in, "file 'f'"); }) == msg);
  }
  CHECK(error_of([&] { (void)additive::parse_json_limited("[1e999]", "file 'f'"); }) ==
        "file 'f' holds a number beyond the range of a double (1e999)");
  CHECK(additive::parse_json_limited("[1e308, -1e308, 1e-400]", "x") == json::array({1e308, -1e308, 0.0}));
}

TEST_CASE("json_echo: short, one line, no recursion whatever the value") {
  CHECK(additive::json_echo(json{{"lr", 0.002}}) == "{\"lr\": 0.002}");
  CHECK(additive::json_echo(json::array({1, "a\nb", nullptr, true})) == "[1, \"a\\x0ab\", null, true]");
  // 100,000 levels built without the parser: the echo stops at its limit.
  json deep = json::array();
  for (int i = 0; i < 100000; ++i) deep = json::array({std::move(deep)});
  const std::string echo = additive::json_echo(deep);
  CHECK(echo.size() == additive::echo_limit + 3);
  CHECK(echo.ends_with("[..."));
  CHECK(additive::json_echo(json(std::string(1000, 'x')), 10) == "\"xxxxxxxxx...");
  // printable: control bytes escaped, long text cut, never inside a UTF-8 sequence.
  CHECK(additive::detail::printable("a\tb\x7f") == "a\\x09b\\x7f");
  CHECK(additive::detail::printable("\xc3\xa9\xc3\xa9", 3) == "\xc3\xa9...");
}

TEST_CASE("read_run_records: what the search could have written, and nothing else") {
  const std::string where = "results file 'r.json'";
  auto record = [](json changes) {
    json r{{"phase", "short"}, {"mask", 5},         {"seed", 1},      {"val_accuracy", 0.5},
           {"val_loss", 1.25}, {"train_loss", 1.5}, {"seconds", 0.25}};
    for (const auto& [k, v] : changes.items()) r[k] = v;
    return r;
  };
  const auto good = additive::read_run_records(json::array({record({}), record({{"seed", 0}})}), where, 64, 2,
                                               std::nullopt);
  REQUIRE(good.size() == 2);
  CHECK(good[0].mask == 5);
  CHECK(good[0].seed == 1);
  CHECK(good[0].val_accuracy == 0.5);
  CHECK(good[0].seconds == 0.25);
  CHECK(good[0].epochs == 0);  // not recorded (files of earlier versions)
  const auto with_epochs = additive::read_run_records(
      json::array({record({{"epochs", 3}}), record({{"epochs", 4}})}), where, 64, 2, std::nullopt);
  REQUIRE(with_epochs.size() == 2);  // one seed at two budgets: two runs
  CHECK(with_epochs[0].epochs == 3);
  CHECK(with_epochs[1].epochs == 4);

  const std::vector<std::pair<json, std::string>> bad = {
      {json{{"val_accuracy", 7.5}},
       "run record 1 has 'val_accuracy' 7.5, expected a finite number in [0, 1]"},
      {json{{"val_accuracy", nullptr}}, "'val_accuracy' null"},
      {json{{"val_accuracy", "0.5"}}, "'val_accuracy' \"0.5\""},
      {json{{"val_loss", -1}}, "'val_loss' -1, expected a finite number >= 0"},
      {json{{"train_loss", nullptr}}, "'train_loss' null"},
      {json{{"seconds", -3}}, "'seconds' -3"},
      {json{{"mask", 64}}, "'mask' 64, beyond the 64 structures of the family"},
      {json{{"mask", -1}}, "'mask' -1, expected a mask"},
      {json{{"mask", std::uint64_t{1} << 40}}, "'mask' 1099511627776, beyond"},
      {json{{"mask", 2.0}}, "'mask' 2.0, expected a mask"},
      {json{{"seed", -1}}, "'seed' -1, expected a seed index in [0, 2)"},
      {json{{"seed", 1e20}}, "'seed' 1e+20"},
      {json{{"seed", 2}}, "'seed' 2, expected a seed index in [0, 2)"},
      {json{{"phase", "long"}}, "'seed' 1, expected a seed index in [0, 1)"},
      {json{{"phase", "medium"}}, "'phase' \"medium\", expected \"short\" or \"long\""},
      {json{{"epochs", 0}}, "'epochs' 0, expected an integer in [1, 1000000]"},
      {json{{"epochs", 2.5}}, "'epochs' 2.5, expected an integer"},
      {json{{"epochs", 1e12}}, "'epochs' 1000000000000.0, expected"},
      {json{{"epochs", "4"}}, "'epochs' \"4\""},
  };
  for (const auto& item : bad) {
    const json& changes = item.first;  // not a structured binding: clang 14 cannot capture those
    const std::string& expected = item.second;
    CAPTURE(changes.dump());
    const std::string msg = error_of([&] {
      (void)additive::read_run_records(json::array({record(changes)}), where, 64, 2, std::nullopt);
    });
    CHECK(msg.starts_with(where + ": run record 1 has "));
    CHECK(contains(msg, expected));
  }
  auto without = record({});
  without.erase("val_loss");
  CHECK(contains(
      error_of([&] { (void)additive::read_run_records(json::array({without}), where, 64, 2, std::nullopt); }),
      "run record 1 has no 'val_loss'"));
  CHECK(contains(error_of([&] {
                   (void)additive::read_run_records(json{{"a", 1}}, where, 64, 2, std::nullopt);
                 }),
                 "'runs' is not a list"));
  CHECK(contains(
      error_of([&] { (void)additive::read_run_records(json::array({1}), where, 64, 2, std::nullopt); }),
      "run record 1 is not a JSON object"));
  // The same run twice: equal records are one, different ones an error.
  CHECK(
      additive::read_run_records(json::array({record({}), record({})}), where, 64, 2, std::nullopt).size() ==
      1);
  CHECK(contains(error_of([&] {
                   (void)additive::read_run_records(
                       json::array({record({}), record({{"val_accuracy", 0.6}})}), where, 64, 2,
                       std::nullopt);
                 }),
                 "run records 1 and 2 are both short mask 5 seed 1, with different values"));

  // Per-image correctness: 8 images, accuracy 0.5 -> 4 bits set ("f0": images 0-3, digit k
  // holding images 4k..4k+3).
  const auto with_bits =
      additive::read_run_records(json::array({record({{"correct", "f0"}})}), where, 64, 2, 8);
  REQUIRE(with_bits.size() == 1);
  CHECK(with_bits[0].correct.size() == 8);
  CHECK(with_bits[0].correct.count() == 4);
  CHECK(with_bits[0].correct.get(3));
  CHECK_FALSE(with_bits[0].correct.get(4));
  CHECK(additive::read_run_records(json::array({record({})}), where, 64, 2, 8)[0].correct.size() == 0);
  auto bits_error = [&](json correct, std::size_t images) {
    return error_of([&] {
      (void)additive::read_run_records(json::array({record({{"correct", correct}})}), where, 64, 2, images);
    });
  };
  CHECK(contains(bits_error(15, 8), "run record 1 has 'correct' 15, expected a hex string"));
  CHECK(contains(bits_error("0f0", 8), "has a 'correct' that does not fit 8 validation images"));
  CHECK(contains(bits_error("0g", 8), "has a 'correct' that does not fit 8 validation images"));
  CHECK(contains(bits_error("07", 8), "has 'correct' bits for 3 right images, but val_accuracy 0.5 of 8"));
  CHECK(contains(bits_error("f", 2), "does not fit 2 validation images"));  // bits beyond image 2
  CHECK(contains(error_of([&] {
                   (void)additive::read_run_records(
                       json::array({record({{"correct", "0f"}}), record({{"correct", "f0"}})}), where, 64, 2,
                       8);
                 }),
                 "with different values"));
}

TEST_CASE("read_report_accuracies: masks of the family, accuracies in [0, 1], one accuracy per mask") {
  const std::string where = "search results 'r.json'";
  auto entry = [](json mask, json acc, json equivalent) {
    return json{{"mask", mask}, {"acc_mean", acc}, {"equivalent", equivalent}};
  };
  std::vector<std::uint64_t> reps;
  const auto acc = additive::read_report_accuracies(
      json{{"entries", {entry(3, 0.75, {4, 5}), entry(0, 0.5, json::array())}}}, where, 8, &reps);
  CHECK(acc == std::map<std::uint64_t, double>{{0, 0.5}, {3, 0.75}, {4, 0.75}, {5, 0.75}});
  CHECK(reps == std::vector<std::uint64_t>{3, 0});
  auto refused = [&](const std::vector<json>& entries) {
    return error_of([&] {
      (void)additive::read_report_accuracies(json{{"entries", entries}}, where, 8, nullptr);
    });
  };
  CHECK(contains(refused({entry(3, 7.5, json::array())}), "report entry 1 has 'acc_mean' 7.5"));
  CHECK(contains(refused({entry(3, nullptr, json::array())}), "'acc_mean' null"));
  CHECK(contains(refused({entry(8, 0.5, json::array())}), "'mask' 8, beyond the 8 structures"));
  CHECK(contains(refused({entry(3, 0.5, json::array({-1}))}), "'equivalent' -1, expected a mask"));
  CHECK(contains(refused({entry(3, 0.5, 4)}), "'equivalent' 4, expected a list of masks"));
  CHECK(contains(refused({entry(3, 0.5, json::array({4})), entry(4, 0.25, json::array())}),
                 "report entry 2 gives mask 4 accuracy 0.25, an earlier entry 0.5"));
  CHECK(contains(error_of([&] { (void)additive::read_report_accuracies(json::array(), where, 8, nullptr); }),
                 "'report' has no list of 'entries'"));
}

TEST_CASE("CheckpointMetadata: every value parsed strictly, every refusal names the file and the field") {
  const std::map<std::string, std::string> meta = {
      {"n", "42"},
      {"neg", "-5"},
      {"big", "18446744073709551616"},
      {"plus", "+3"},
      {"x", "4.5"},
      {"nan", "nan"},
      {"inf", "inf"},
      {"text", "abc"},
      {"j", "[1, 2]"},
      {"deep", deep_array(1000)},
      {"huge", "[1e999]"},
      {"nl", "a\nb"},
      {"empty", ""},
  };
  const additive::CheckpointMetadata read("ck.safetensors", meta);
  CHECK(read.counter("n") == 42);
  CHECK(read.number("x", 0, 10) == 4.5);
  CHECK(read.json("j") == json::array({1, 2}));
  auto msg = [&](const std::function<void()>& f) { return error_of(f); };
  CHECK(msg([&] { (void)read.text("absent"); }) == "checkpoint 'ck.safetensors': missing metadata 'absent'");
  CHECK(msg([&] { (void)read.counter("neg"); }) ==
        "checkpoint 'ck.safetensors': metadata 'neg' is '-5', expected an unsigned integer");
  CHECK(contains(msg([&] { (void)read.counter("plus"); }), "'+3', expected an unsigned integer"));
  CHECK(contains(msg([&] { (void)read.counter("empty"); }), "metadata 'empty' is '', expected an unsigned"));
  CHECK(contains(msg([&] { (void)read.counter("big"); }),
                 "is 18446744073709551616, more than 18446744073709551615"));
  CHECK(contains(msg([&] { (void)read.counter("n", 41); }), "metadata 'n' is 42, more than 41"));
  CHECK(contains(msg([&] { (void)read.counter("text"); }), "metadata 'text' is 'abc'"));
  for (const char* key : {"nan", "inf", "text", "nl"}) {
    CAPTURE(key);
    CHECK(contains(msg([&] { (void)read.number(key, 0, 10); }), "expected a finite number in [0, 10]"));
  }
  CHECK(contains(msg([&] { (void)read.number("nl", 0, 10); }), "is 'a\\x0ab'"));
  CHECK(contains(msg([&] { (void)read.number("x", 5, 10); }), "metadata 'x' is '4.5'"));
  CHECK(msg([&] { (void)read.json("text"); }) == "checkpoint 'ck.safetensors': metadata 'text' is not JSON");
  CHECK(
      msg([&] { (void)read.json("deep"); }) ==
      "checkpoint 'ck.safetensors': metadata 'deep' nests JSON arrays and objects more than 64 levels deep");
  CHECK(msg([&] { (void)read.json("huge"); }) ==
        "checkpoint 'ck.safetensors': metadata 'huge' holds a number beyond the range of a double (1e999)");

  // A second moment must be >= 0.
  std::vector<float> m{-1.f, 2.f}, v{0.f, 1.f}, bad_v{0.f, -1e-30f};
  std::vector<std::pair<std::string, std::span<float>>> ok{{"m", m}, {"v", v}};
  additive::detail::check_optimizer_state<float>(read, ok);
  std::vector<std::pair<std::string, std::span<float>>> bad{{"m", m}, {"inner_v", bad_v}};
  CHECK(contains(msg([&] { additive::detail::check_optimizer_state<float>(read, bad); }),
                 "checkpoint 'ck.safetensors': optimizer state 'inner_v' (a second moment) is"));
}

TEST_CASE("safetensors: a deep or huge header is refused without a stack overflow and before reading data") {
  const auto path = temp_file("deep.safetensors");
  write_safetensors(
      path, "{\"a\": {\"dtype\": \"F32\", \"shape\": " + deep_array(200000) + ", \"data_offsets\": [0, 0]}}");
  CHECK(error_of([&] { SafetensorsFile f(path); }) ==
        "safetensors file '" + path.string() +
            "': the header nests JSON arrays and objects more than 64 levels deep");

  // A shape of arrays within the limit is echoed short, on one line.
  write_safetensors(
      path,
      "{\"a\": {\"dtype\": \"F32\", \"shape\": [" + deep_array(60) + ", \"\\n\"], \"data_offsets\": [0, 4]}}",
      4);
  const std::string msg = error_of([&] { SafetensorsFile f(path); });
  CHECK(contains(msg, "shape [[[[["));
  CHECK(msg.find('\n') == std::string::npos);
  CHECK(msg.size() < path.string().size() + 200);

  // A valid header and 64 GiB of zeros after its one tensor (a sparse file): refused from
  // the header and the file's size alone, without reading (or allocating) the zeros.
  write_safetensors(path, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                    std::uint64_t{1} << 36);
  CHECK(contains(error_of([&] { SafetensorsFile f(path); }),
                 "68719476732 bytes after the last tensor belong to no tensor"));
  // A header that accounts for 1 TiB: more than this machine's memory, refused before allocating.
  write_safetensors(path,
                    "{\"a\": {\"dtype\": \"U8\", \"shape\": [1099511627776], \"data_offsets\": [0, "
                    "1099511627776]}}",
                    std::uint64_t{1} << 40);
  CHECK(contains(error_of([&] { SafetensorsFile f(path); }), "more than this machine's memory"));
  fs::remove(path);
}

TEST_CASE("atomic writes: a full disk says so; temporary files of killed writers are removed") {
  CHECK(error_of([] {
          additive::detail::throw_write_error("out/ck", "", ENOSPC);
        }).starts_with("cannot write 'out/ck': the disk is full"));
  CHECK(contains(error_of([] { additive::detail::throw_write_error("out/ck", "", EROFS); }), "read-only"));
  CHECK_THROWS_AS(additive::detail::throw_write_error("out/ck", "fsync failed: ", EIO),
                  additive::RuntimeError);

  const auto dir = temp_file("atomic");
  fs::create_directories(dir);
  const auto target = dir / "run.safetensors";
  const std::string dead = "999999999";  // above any pid_max
  const std::vector<std::string> stale = {"run.safetensors.tmp." + dead + ".0",
                                          "run.safetensors.tmp." + dead + ".42"};
  const std::vector<std::string> kept = {
      "run.safetensors.tmp." + std::to_string(::getppid()) + ".0",  // a live process's
      "other.safetensors.tmp." + dead + ".0",                       // another file's
      "run.safetensors.tmp.x.0", "run.safetensors.tmp." + dead,     // not the pattern
  };
  for (const auto& name : stale) std::ofstream(dir / name) << "partial";
  for (const auto& name : kept) std::ofstream(dir / name) << "partial";
  additive::write_file_atomically(target, std::string_view("new"));
  for (const auto& name : stale) CHECK_FALSE(fs::exists(dir / name));
  for (const auto& name : kept) CHECK(fs::exists(dir / name));
  CHECK(fs::file_size(target) == 3);
  fs::remove_all(dir);
}
