// Tests of io/safetensors.hpp and io/atomic_file.hpp: round trips, the exact byte layout,
// every kind of corrupt file, atomic replacement, and files exchanged with the Python
// safetensors package (tests/python/test_safetensors_interop.py drives those two cases).
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/io/atomic_file.hpp"
#include "additive/io/safetensors.hpp"

namespace fs = std::filesystem;
using additive::Dtype;
using additive::InputError;
using additive::SafetensorsFile;
using additive::SafetensorsWriter;

namespace {

/// A fresh directory, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("additive_test_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
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

std::vector<std::byte> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  for (std::size_t i = 0; i < chars.size(); ++i) out[i] = static_cast<std::byte>(chars[i]);
  return out;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

std::uint64_t le64(const std::vector<std::byte>& b, std::size_t at) {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < 8; ++i) n |= std::to_integer<std::uint64_t>(b[at + i]) << (8 * i);
  return n;
}

std::string le64_string(std::uint64_t n) {
  std::string s(8, '\0');
  for (std::size_t i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

/// A file of the length prefix (the header's size unless overridden), header and data.
void write_raw(const fs::path& p, const std::string& header, std::size_t data_bytes,
               std::optional<std::uint64_t> length = std::nullopt) {
  write_text(p, le64_string(length.value_or(header.size())) + header + std::string(data_bytes, '\x01'));
}

/// The message of the `InputError` that `f` throws, or a marker when it throws none.
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

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

fs::path interop_dir() {
  if (const char* env = std::getenv("ADDITIVE_BINARY_DIR")) return env;
#ifdef ADDITIVE_BINARY_DIR
  return ADDITIVE_BINARY_DIR;
#else
  return fs::temp_directory_path();
#endif
}

}  // namespace

static_assert(additive::TensorScalar<float> && additive::TensorScalar<double> &&
              additive::TensorScalar<std::int64_t> && additive::TensorScalar<std::uint8_t>);
static_assert(!additive::TensorScalar<long double>, "no dtype holds a long double");
static_assert(!additive::TensorScalar<bool>, "BOOL is read as raw bytes, not as bool");
static_assert(additive::dtype_of<float> == Dtype::f32 && additive::dtype_of<std::int32_t> == Dtype::i32);

// The writer keeps views, so it takes lvalues and views but refuses temporaries.
template <class R>
concept WriterAccepts = requires(SafetensorsWriter w, R&& r) {
  w.add("x", {1}, std::forward<R>(r));
};
static_assert(WriterAccepts<std::vector<float>&> && WriterAccepts<const std::vector<double>&>);
static_assert(WriterAccepts<std::span<const float>> && WriterAccepts<std::span<std::int64_t>>);
static_assert(!WriterAccepts<std::vector<float>>, "a temporary vector would dangle");
static_assert(!WriterAccepts<std::vector<long double>&>, "no dtype holds a long double");

TEST_CASE("safetensors: dtype names and sizes round-trip through parse_dtype") {
  for (const auto& info : additive::detail::dtype_table) {
    CAPTURE(info.name);
    CHECK(additive::parse_dtype(info.name) == info.dtype);
    CHECK(additive::dtype_name(info.dtype) == info.name);
    CHECK(additive::dtype_size(info.dtype) == info.size);
  }
  CHECK_FALSE(additive::parse_dtype("F33").has_value());
  CHECK_FALSE(additive::parse_dtype("f32").has_value());
}

TEST_CASE("safetensors: round trip of F32, F64, I64, U8 and I32 tensors with metadata") {
  TempDir dir;
  const std::vector<float> a = {0.f, -1.5f, 3.25f, 1e-30f, -0.f, 7.f};
  const std::vector<double> b = {0.1, -2.0, 1e300, 4.9e-324};
  const std::vector<std::int64_t> c = {std::numeric_limits<std::int64_t>::min(), -1, 0, 1LL << 40};
  const std::vector<std::uint8_t> d = {0, 1, 128, 255, 7};
  const std::vector<std::int32_t> e = {-2147483647 - 1, 2147483647, 5};
  const std::array<double, 1> scalar = {2.5};
  const std::vector<float> empty;
  REQUIRE(a.size() == 6);

  SafetensorsWriter w;
  w.add("a", {2, 3}, a)
      .add("b", {4}, b)
      .add("c", {2, 1, 2}, c)
      .add("d", {5}, d)
      .add("e", {3}, e)
      .add("scalar", {}, scalar)
      .add("empty", {0, 4}, empty)
      .set_metadata("hello", "world")
      .set_metadata("config", R"({"lr": 0.1})");
  w.write(dir / "t.safetensors");
  CHECK(files_in(dir.path) == std::vector<std::string>{"t.safetensors"});

  const SafetensorsFile f(dir / "t.safetensors");
  CHECK(f.names() == std::vector<std::string>{"a", "b", "c", "d", "e", "empty", "scalar"});
  CHECK(f.metadata() == std::map<std::string, std::string>{{"config", R"({"lr": 0.1})"}, {"hello", "world"}});
  CHECK(f.metadata("hello") == "world");
  CHECK_FALSE(f.metadata("nope").has_value());

  CHECK(f.dtype("a") == Dtype::f32);
  CHECK(f.shape("a") == std::vector<std::int64_t>{2, 3});
  CHECK(f.read<float>("a") == a);
  CHECK(f.dtype("b") == Dtype::f64);
  CHECK(f.read<double>("b") == b);
  CHECK(f.shape("c") == std::vector<std::int64_t>{2, 1, 2});
  CHECK(f.read<std::int64_t>("c") == c);
  CHECK(f.read<std::uint8_t>("d") == d);
  CHECK(f.dtype("e") == Dtype::i32);
  CHECK(f.read<std::int32_t>("e") == e);
  CHECK(f.shape("scalar").empty());
  CHECK(f.read<double>("scalar") == std::vector<double>{2.5});
  CHECK(f.shape("empty") == std::vector<std::int64_t>{0, 4});
  CHECK(f.read<float>("empty").empty());
  CHECK(f.bytes("d").size() == 5);

  // Bit-exact, including -0.0 and a denormal.
  const auto a_bytes = f.bytes("a");
  CHECK(std::memcmp(a_bytes.data(), a.data(), a_bytes.size()) == 0);
}

TEST_CASE("safetensors: byte layout of a small file") {
  TempDir dir;
  const std::vector<float> a = {1.0f, 2.0f};
  SafetensorsWriter().add("a", {2}, a).set_metadata("k", "v").write(dir / "small.safetensors");
  const auto bytes = read_bytes(dir / "small.safetensors");

  // The header the format prescribes (key order aside), padded with spaces to 8 bytes.
  const auto expected_header = nlohmann::json::parse(
      R"({"__metadata__": {"k": "v"}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})");
  const std::string compact = expected_header.dump();
  const std::uint64_t n = le64(bytes, 0);
  CHECK(n == (compact.size() + 7) / 8 * 8);
  CHECK(n % 8 == 0);
  REQUIRE(bytes.size() == 8 + n + 8);
  const std::string header(reinterpret_cast<const char*>(bytes.data()) + 8, n);
  CHECK(nlohmann::json::parse(header) == expected_header);
  const std::size_t json_end = header.find_last_of('}') + 1;
  CHECK(header.substr(json_end) == std::string(n - json_end, ' '));

  // 1.0f and 2.0f, little-endian.
  const std::vector<std::byte> data(bytes.begin() + static_cast<std::ptrdiff_t>(8 + n), bytes.end());
  const std::vector<std::byte> expected_data = {std::byte{0x00}, std::byte{0x00}, std::byte{0x80},
                                                std::byte{0x3f}, std::byte{0x00}, std::byte{0x00},
                                                std::byte{0x00}, std::byte{0x40}};
  CHECK(data == expected_data);
}

TEST_CASE("safetensors: tensors are laid out by decreasing element size, each aligned") {
  TempDir dir;
  const std::vector<std::uint8_t> u = {1, 2, 3};
  const std::vector<float> f = {1.f, 2.f, 3.f};
  const std::vector<double> d = {1.0, 2.0};
  const std::vector<std::int32_t> i = {4};
  SafetensorsWriter().add("u", {3}, u).add("f", {3}, f).add("d", {2}, d).add("i", {1}, i).write(dir / "x");
  const auto bytes = read_bytes(dir / "x");
  const std::uint64_t n = le64(bytes, 0);
  const auto header = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(bytes.data()) + 8, n));
  CHECK(header.size() == 4);  // no __metadata__ when there is none
  CHECK(header["d"]["data_offsets"] == nlohmann::json::array({0, 16}));
  CHECK(header["f"]["data_offsets"] == nlohmann::json::array({16, 28}));
  CHECK(header["i"]["data_offsets"] == nlohmann::json::array({28, 32}));
  CHECK(header["u"]["data_offsets"] == nlohmann::json::array({32, 35}));
  CHECK(bytes.size() == 8 + n + 35);
  CHECK((8 + n) % 8 == 0);
}

TEST_CASE("safetensors: read_into converts only when exact") {
  TempDir dir;
  const std::vector<float> f = {0.1f, -3.f};
  const std::vector<double> d = {0.1, -3.0};
  const std::vector<std::int64_t> i = {1, 2};
  SafetensorsWriter().add("f", {2}, f).add("d", {2}, d).add("i", {2}, i).write(dir / "c.safetensors");
  const SafetensorsFile file(dir / "c.safetensors");

  std::vector<double> wide(2);
  file.read_into(std::string("f"), std::span<double>(wide));
  CHECK(wide == std::vector<double>{static_cast<double>(0.1f), -3.0});

  std::vector<float> narrow(2);
  auto msg = input_error_of([&] { file.read_into<float>("d", narrow); });
  CHECK(contains(msg, "c.safetensors"));
  CHECK(contains(msg, "tensor 'd' is F64, it cannot be read exactly as F32"));
  msg = input_error_of([&] { file.read_into<double>("i", wide); });
  CHECK(contains(msg, "tensor 'i' is I64"));
  msg = input_error_of([&] { (void)file.read<std::int32_t>("i"); });
  CHECK(contains(msg, "tensor 'i' is I64, it cannot be read exactly as I32"));

  std::vector<float> too_small(1);
  msg = input_error_of([&] { file.read_into<float>("f", too_small); });
  CHECK(contains(msg, "tensor 'f' has 2 elements (shape [2]), the destination holds 1"));

  msg = input_error_of([&] { (void)file.info("missing"); });
  CHECK(contains(msg, "c.safetensors"));
  CHECK(contains(msg, "no tensor named 'missing'"));
  CHECK_FALSE(file.contains("missing"));
}

TEST_CASE("safetensors: the writer refuses inconsistent tensors") {
  const std::vector<float> x = {1.f, 2.f, 3.f};
  SafetensorsWriter w;
  w.add("x", {3}, x);
  CHECK(contains(input_error_of([&] { w.add("x", {3}, x); }), "tensor 'x': added twice"));
  CHECK(contains(input_error_of([&] {
                   w.add("y", {2, 2}, x);
                 }),
                 "shape [2, 2] of F32 needs 16 bytes, the data has 12"));
  CHECK(contains(input_error_of([&] { w.add("z", {-3}, x); }), "invalid shape [-3]"));
  CHECK(contains(input_error_of([&] { w.add("__metadata__", {3}, x); }), "reserved"));

  TempDir dir;
  w.set_metadata("bad", std::string("\xff\xfe"));
  const auto msg = input_error_of([&] { w.write(dir / "bad.safetensors"); });
  CHECK(contains(msg, "not valid UTF-8"));
  CHECK(files_in(dir.path).empty());
}

TEST_CASE("safetensors: every corrupt file is an InputError naming the file and the problem") {
  TempDir dir;
  const std::string good_a = R"("a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  struct Case {
    const char* what;
    std::string header;
    std::size_t data_bytes;
    std::optional<std::uint64_t> length;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"absurd header length", "{}", 0, std::uint64_t{1} << 40, "header length 1099511627776 is absurd"},
      {"header past the end", "{}", 0, 1000,
       "header length 1000 runs past the end of the file (2 bytes follow"},
      {"truncated JSON", R"({"a": )", 0, {}, "the header is not valid JSON"},
      {"invalid UTF-8", "{\"\xff\": 1}", 0, {}, "the header is not valid JSON"},
      {"empty header", "", 0, {}, "the header is not valid JSON"},
      {"header not an object", "[1, 2]", 0, {}, "the header is not a JSON object"},
      {"entry not an object", R"({"a": 5})", 0, {}, "tensor 'a': the entry is not a JSON object"},
      {"missing dtype",
       R"({"a": {"shape": [2], "data_offsets": [0, 8]}})",
       8,
       {},
       "tensor 'a': missing dtype"},
      {"dtype not a string",
       R"({"a": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})",
       8,
       {},
       "tensor 'a': dtype is not a string"},
      {"unknown dtype",
       R"({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}})",
       8,
       {},
       "tensor 'a': unknown dtype 'F33'"},
      {"missing shape",
       R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})",
       8,
       {},
       "tensor 'a': missing shape"},
      {"shape not an array",
       R"({"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})",
       8,
       {},
       "tensor 'a': shape is not an array"},
      {"negative dimension",
       R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})",
       8,
       {},
       "not a non-negative integer"},
      {"fractional dimension",
       R"({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})",
       8,
       {},
       "not a non-negative integer"},
      {"missing data_offsets",
       R"({"a": {"dtype": "F32", "shape": [2]}})",
       8,
       {},
       "tensor 'a': missing data_offsets"},
      {"one offset",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})",
       8,
       {},
       "is not a pair of non-negative integers"},
      {"negative offset",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 8]}})",
       8,
       {},
       "is not a pair of non-negative integers"},
      {"reversed offsets",
       R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})",
       8,
       {},
       "data_offsets [8, 0] end before they begin"},
      {"shape/offset mismatch",
       R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
       8,
       {},
       "data_offsets [0, 8] hold 8 bytes, but F32 shape [3] needs 12"},
      {"overflowing shape",
       R"({"a": {"dtype": "F64", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}})",
       8,
       {},
       "needs more than 2^64"},
      {"offsets past the buffer",
       R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
       8,
       {},
       "data_offsets [0, 16] run past the end of the data buffer (8 bytes)"},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12,
       {},
       "tensors 'a' and 'b' overlap"},
      {"gap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12,
       {},
       "gap of 4 bytes before tensor 'a'"},
      {"trailing bytes", "{" + good_a + "}", 12, {}, "4 bytes after the last tensor belong to no tensor"},
      {"data but no tensors", "{}", 3, {}, "3 bytes after the last tensor belong to no tensor"},
      {"unknown field",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "foo": 1}})",
       8,
       {},
       "tensor 'a': unknown field 'foo'"},
      {"duplicate tensor", "{" + good_a + ", " + good_a + "}", 8, {}, "the header has the key 'a' twice"},
      {"non-string metadata",
       R"({"__metadata__": {"k": 1}})",
       0,
       {},
       "metadata 'k' is not a string (found number)"},
      {"metadata not an object", R"({"__metadata__": ["k"]})", 0, {}, "__metadata__ is not a JSON object"},
      {"duplicate metadata key", R"({"__metadata__": {"k": "1", "k": "2"}})", 0, {}, "the key 'k' twice"},
      {"control byte in a name", R"({"a\nb": 5})", 0, {}, "tensor 'a\\x0ab': the entry is not a JSON object"},
  };
  int index = 0;
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const std::string name = "corrupt_" + std::to_string(index++) + ".safetensors";
    write_raw(dir / name, c.header, c.data_bytes, c.length);
    const std::string msg = input_error_of([&] { SafetensorsFile f(dir / name); });
    CAPTURE(msg);
    CHECK(contains(msg, "safetensors file '" + (dir / name).string() + "': "));
    CHECK(contains(msg, c.expected));
    CHECK_FALSE(contains(msg, "\n"));
  }

  // Files too short for the length prefix, a missing file, a directory.
  write_text(dir / "empty.safetensors", "");
  CHECK(contains(input_error_of([&] { SafetensorsFile f(dir / "empty.safetensors"); }),
                 "empty.safetensors': file is too short (0 bytes)"));
  write_text(dir / "seven.safetensors", "1234567");
  CHECK(contains(input_error_of([&] { SafetensorsFile f(dir / "seven.safetensors"); }),
                 "seven.safetensors': file is too short (7 bytes)"));
  CHECK(contains(input_error_of([&] { SafetensorsFile f(dir / "absent.safetensors"); }),
                 "absent.safetensors': no such file"));
  CHECK(contains(input_error_of([&] { SafetensorsFile f(dir.path); }), "not a regular file"));

  // The control: the good entry alone loads, and a null metadata map is accepted.
  write_raw(dir / "good.safetensors", R"({"__metadata__": null, )" + good_a + "}", 8);
  const SafetensorsFile good(dir / "good.safetensors");
  CHECK(good.names() == std::vector<std::string>{"a"});
  CHECK(good.metadata().empty());
}

TEST_CASE("atomic_file: writes a new file and replaces an old one, leaving no temporary") {
  TempDir dir;
  const fs::path target = dir / "out.txt";
  additive::write_file_atomically(target, std::string_view("first"));
  CHECK(read_text(target) == "first");
  const std::vector<std::byte> bytes = {std::byte{'a'}, std::byte{0}, std::byte{'b'}};
  additive::write_file_atomically(target, std::span<const std::byte>(bytes));
  CHECK(read_bytes(target) == bytes);

  // A writer larger than the sink's buffer, in uneven pieces.
  std::string expected;
  additive::write_file_atomically(target, [&](additive::FileSink& sink) {
    for (int i = 0; i < 5000; ++i) {
      const std::string piece(static_cast<std::size_t>(i % 997), static_cast<char>('a' + i % 26));
      sink.write(piece);
      expected += piece;
    }
    CHECK(sink.size() == expected.size());
  });
  CHECK(expected.size() > (std::size_t{1} << 20));
  CHECK(read_text(target) == expected);
  CHECK(files_in(dir.path) == std::vector<std::string>{"out.txt"});
}

TEST_CASE("atomic_file: a writer that throws midway leaves the previous file intact") {
  TempDir dir;
  const fs::path target = dir / "keep.txt";
  additive::write_file_atomically(target, std::string_view("previous contents"));
  struct Boom : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  CHECK_THROWS_AS(additive::write_file_atomically(target,
                                                  [](additive::FileSink& sink) {
                                                    sink.write(std::string(3 << 20, 'x'));  // flushed to disk
                                                    sink.write(std::string_view("partial"));
                                                    throw Boom("writer failed");
                                                  }),
                  Boom);
  CHECK(read_text(target) == "previous contents");
  CHECK(files_in(dir.path) == std::vector<std::string>{"keep.txt"});
}

TEST_CASE("atomic_file: an unwritable target is an InputError naming it; nothing is left behind") {
  TempDir dir;
  const fs::path missing = dir / "no_such_dir" / "file.safetensors";
  auto msg = input_error_of([&] { additive::write_file_atomically(missing, std::string_view("x")); });
  CHECK(contains(msg, missing.string()));
  CHECK(contains(msg, "cannot create a file in"));
  CHECK(files_in(dir.path).empty());

  const std::vector<float> x = {1.f};
  msg = input_error_of([&] { SafetensorsWriter().add("x", {1}, x).write(missing); });
  CHECK(contains(msg, missing.string()));

  fs::create_directories(dir / "sub");
  write_text(dir / "sub" / "inner", "keep");
  msg = input_error_of([&] { additive::write_file_atomically(dir / "sub", std::string_view("x")); });
  CHECK(contains(msg, "it is a directory"));
  CHECK(read_text(dir / "sub" / "inner") == "keep");
  CHECK(files_in(dir.path) == std::vector<std::string>{"sub"});

  // A safetensors file that fails halfway (a bad name) keeps the previous file.
  SafetensorsWriter().add("x", {1}, x).write(dir / "model.safetensors");
  SafetensorsWriter bad;
  bad.add("x", {1}, x).set_metadata("\xc3", "v");
  CHECK_THROWS_AS(bad.write(dir / "model.safetensors"), InputError);
  CHECK(SafetensorsFile(dir / "model.safetensors").read<float>("x") == x);
  CHECK(files_in(dir.path) == std::vector<std::string>{"model.safetensors", "sub"});
}

// Writes the file that tests/python/test_safetensors_interop.py reads with the Python package.
TEST_CASE("safetensors interop: write a file for python") {
  std::vector<float> a(6);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  std::vector<double> b(4);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = 0.5 * static_cast<double>(i);
  const std::array<std::int64_t, 1> c = {-42};
  const std::vector<std::uint8_t> d = {1, 2, 255};
  const std::vector<std::int32_t> e = {-2, -1, 0, 1};
  const std::vector<float> z;
  const fs::path out = interop_dir() / "interop_cpp.safetensors";
  SafetensorsWriter()
      .add("a", {2, 3}, a)
      .add("b", {4}, b)
      .add("c", {}, c)
      .add("d", {3}, d)
      .add("e", {2, 2}, e)
      .add("z", {0}, z)
      .set_metadata("hello", "world")
      .set_metadata("unicode",
                    "gr\xc3\xbc\xc3\x9f"
                    "e")
      .write(out);
  MESSAGE("wrote " << out.string());
  CHECK(SafetensorsFile(out).read<float>("a") == a);
}

// Reads the file the Python script writes with safetensors.numpy.save_file.
TEST_CASE("safetensors: reads python-written file") {
  const char* env = std::getenv("ADDITIVE_INTEROP_FILE");
  if (env == nullptr) {
    MESSAGE("skipped: ADDITIVE_INTEROP_FILE is not set (tests/python/test_safetensors_interop.py sets it)");
    return;
  }
  const SafetensorsFile f(env);
  CHECK(f.names() == std::vector<std::string>{"empty", "i32", "idx", "mask", "scalar", "x", "y"});
  CHECK(f.metadata() == std::map<std::string, std::string>{{"note",
                                                            "gr\xc3\xbc\xc3\x9f"
                                                            "e"},
                                                           {"source", "numpy"}});

  CHECK(f.dtype("x") == Dtype::f32);
  CHECK(f.shape("x") == std::vector<std::int64_t>{3, 2});
  CHECK(f.read<float>("x") == std::vector<float>{-2.f, -0.5f, 1.f, 2.5f, 4.f, 5.5f});
  CHECK(f.dtype("y") == Dtype::f64);
  CHECK(f.shape("y") == std::vector<std::int64_t>{2, 1, 2});
  CHECK(f.read<double>("y") == std::vector<double>{0.1, -2.5, 1e-300, 1e300});
  CHECK(f.dtype("idx") == Dtype::i64);
  CHECK(f.read<std::int64_t>("idx") ==
        std::vector<std::int64_t>{-7, 3, std::int64_t{1} << 40, 0, -(std::int64_t{1} << 62)});
  CHECK(f.dtype("mask") == Dtype::u8);
  CHECK(f.shape("mask") == std::vector<std::int64_t>{2, 2});
  CHECK(f.read<std::uint8_t>("mask") == std::vector<std::uint8_t>{0, 1, 255, 7});
  CHECK(f.read<std::int32_t>("i32") == std::vector<std::int32_t>{-2147483647 - 1, 0, 2147483647});
  CHECK(f.shape("scalar").empty());
  CHECK(f.read<float>("scalar") == std::vector<float>{3.25f});
  CHECK(f.shape("empty") == std::vector<std::int64_t>{0, 3});
  CHECK(f.read<double>("empty").empty());
  CHECK(f.read<double>("x") == std::vector<double>{-2.0, -0.5, 1.0, 2.5, 4.0, 5.5});
}
