// IDX reader and writer: round trips (gzip and raw) and every way a file can be wrong,
// each reported as one-line `InputError` that names the file.
#include <doctest/doctest.h>
#include <zlib.h>

#ifdef __unix__
#include <sys/stat.h>
#endif

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "additive/data/idx.hpp"

namespace fs = std::filesystem;
using additive::IdxImages;
using additive::InputError;

namespace {

/// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("additive-test-idx-" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] fs::path operator/(const std::string& name) const { return path_ / name; }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// Images whose bytes are varied (a fixed LCG), so gzip cannot shrink them to nothing.
IdxImages make_images(std::int64_t count, std::int64_t rows, std::int64_t cols, std::uint32_t seed = 1) {
  IdxImages im{count, rows, cols, std::vector<std::uint8_t>(static_cast<std::size_t>(count * rows * cols))};
  std::uint32_t s = seed;
  for (auto& p : im.pixels) {
    s = s * 1664525U + 1013904223U;
    p = static_cast<std::uint8_t>(s >> 24);
  }
  return im;
}

std::vector<std::uint8_t> be32(std::initializer_list<std::uint32_t> words) {
  std::vector<std::uint8_t> out;
  for (std::uint32_t w : words)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(w >> shift));
  return out;
}

/// Writes arbitrary bytes, gzip-compressed or raw (for files the writer refuses to make).
void write_bytes(const fs::path& path, const std::vector<std::uint8_t>& bytes, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.string().c_str(), "wb");
    REQUIRE(f != nullptr);
    if (!bytes.empty()) REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) > 0);
    REQUIRE(gzclose(f) == Z_OK);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
  }
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Runs `f`, expects an `InputError`, checks it is one line naming `path`, returns it.
std::string input_error(const std::function<void()>& f, const fs::path& path) {
  std::string msg;
  try {
    f();
  } catch (const InputError& e) {
    msg = e.what();
  }
  INFO("message: " << msg);
  REQUIRE_MESSAGE(!msg.empty(), "expected an additive::InputError for " << path);
  CHECK(msg.find(path.string()) == 0);
  CHECK(msg.find('\n') == std::string::npos);
  return msg;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("IDX images and labels round trip, gzip and raw") {
  TempDir dir;
  const IdxImages images = make_images(7, 5, 3);
  std::vector<std::uint8_t> labels{0, 9, 3, 3, 255, 1, 7};
  for (bool gzip : {true, false}) {
    CAPTURE(gzip);
    const auto ipath = dir / (gzip ? "images.gz" : "images");
    const auto lpath = dir / (gzip ? "labels.gz" : "labels");
    additive::write_idx_images(ipath, images, gzip);
    additive::write_idx_labels(lpath, labels, gzip);

    const auto raw = read_bytes(ipath);
    REQUIRE(raw.size() >= 4);
    if (gzip) {
      CHECK((raw[0] == 0x1f && raw[1] == 0x8b));
    } else {
      CHECK(raw.size() == 16 + images.pixels.size());
      CHECK(std::vector<std::uint8_t>(raw.begin(), raw.begin() + 16) == be32({0x803, 7, 5, 3}));
      CHECK(read_bytes(lpath).size() == 8 + labels.size());
    }

    const IdxImages back = additive::read_idx_images(ipath);
    CHECK(back.count == 7);
    CHECK(back.rows == 5);
    CHECK(back.cols == 3);
    CHECK(back.pixels == images.pixels);
    CHECK(additive::read_idx_labels(lpath) == labels);
  }
  // The writer leaves no temporary files behind and overwrites in place.
  additive::write_idx_labels(dir / "labels", std::vector<std::uint8_t>{4}, false);
  CHECK(additive::read_idx_labels(dir / "labels") == std::vector<std::uint8_t>{4});
  CHECK(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()) == 4);
}

TEST_CASE("IDX reader: a large image file spans several read chunks") {
  TempDir dir;
  const IdxImages images = make_images(3000, 28, 28, 7);  // 2.35 MB: > 2 chunks of 1 MiB
  additive::write_idx_images(dir / "big.gz", images, true);
  CHECK(additive::read_idx_images(dir / "big.gz").pixels == images.pixels);
}

TEST_CASE("IDX reader: missing file or a directory") {
  TempDir dir;
  const auto missing = dir / "t10k-labels-idx1-ubyte.gz";
  CHECK(contains(input_error([&] { (void)additive::read_idx_labels(missing); }, missing), "file not found"));
  CHECK(contains(input_error([&] { (void)additive::read_idx_images(dir.path()); }, dir.path()), "directory"));
}

TEST_CASE("IDX reader: wrong magic") {
  TempDir dir;
  const auto images = dir / "t10k-images-idx3-ubyte.gz";
  const auto labels = dir / "t10k-labels-idx1-ubyte.gz";
  additive::write_idx_images(images, make_images(2, 2, 2), true);
  additive::write_idx_labels(labels, std::vector<std::uint8_t>{1, 2}, true);

  const std::string m1 = input_error([&] { (void)additive::read_idx_labels(images); }, images);
  CHECK(m1 ==
        images.string() + ": wrong magic 0x00000803, expected 0x00000801 (IDX labels of unsigned bytes)");
  const std::string m2 = input_error([&] { (void)additive::read_idx_images(labels); }, labels);
  CHECK(m2 ==
        labels.string() + ": wrong magic 0x00000801, expected 0x00000803 (IDX images of unsigned bytes)");

  // Right rank, wrong data type (0x0D: float).
  const auto floats = dir / "floats";
  write_bytes(floats, be32({0x00000D03, 1, 1, 1, 0}), false);
  CHECK(contains(input_error([&] { (void)additive::read_idx_images(floats); }, floats),
                 "wrong magic 0x00000D03"));
}

TEST_CASE("IDX reader: truncated gzip is reported") {
  TempDir dir;
  const auto path = dir / "train-images-idx3-ubyte.gz";
  additive::write_idx_images(path, make_images(50, 28, 28), true);
  const auto full = fs::file_size(path);
  REQUIRE(full > 1000);

  SUBCASE("cut in the middle of the data") {
    fs::resize_file(path, full / 2);
    const std::string msg = input_error([&] { (void)additive::read_idx_images(path); }, path);
    CHECK(contains(msg, "truncated gzip stream"));
    CHECK(contains(msg, "pixel data"));
  }
  SUBCASE("cut inside the gzip trailer: every pixel decompresses, the stream is incomplete") {
    fs::resize_file(path, full - 3);
    CHECK(
        contains(input_error([&] { (void)additive::read_idx_images(path); }, path), "truncated gzip stream"));
  }
  SUBCASE("corrupt compressed bytes") {
    auto bytes = read_bytes(path);
    for (std::size_t i = bytes.size() / 3; i < bytes.size() / 3 + 16; ++i) bytes[i] ^= 0xA5;
    write_bytes(path, bytes, false);
    (void)input_error([&] { (void)additive::read_idx_images(path); }, path);
  }
}

TEST_CASE("IDX reader: truncated raw files and headers") {
  TempDir dir;
  const auto path = dir / "images";
  additive::write_idx_images(path, make_images(4, 3, 3), false);

  SUBCASE("data") {
    fs::resize_file(path, 16 + 30);
    const std::string msg = input_error([&] { (void)additive::read_idx_images(path); }, path);
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, "30 of 36 bytes"));
  }
  SUBCASE("header") {
    fs::resize_file(path, 10);
    CHECK(contains(input_error([&] { (void)additive::read_idx_images(path); }, path),
                   "header (10 of 16 bytes)"));
  }
  SUBCASE("empty file, raw and gzip") {
    write_bytes(path, {}, false);
    CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path), "truncated"));
    write_bytes(path, {}, true);
    CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path), "truncated"));
  }
  SUBCASE("a header that claims far more data than the file holds") {
    auto bytes = be32({0x803, 0xFFFFFFFFU, 28, 28});
    bytes.resize(bytes.size() + 100, 7);
    write_bytes(path, bytes, true);
    CHECK(contains(input_error([&] { (void)additive::read_idx_images(path); }, path), "truncated"));
  }
}

TEST_CASE("IDX reader: zero and implausible dimensions") {
  TempDir dir;
  const auto path = dir / "dims.gz";
  for (auto header : {be32({0x803, 0, 28, 28}), be32({0x803, 5, 0, 28}), be32({0x803, 5, 28, 0})}) {
    write_bytes(path, header, true);
    CHECK(contains(input_error([&] { (void)additive::read_idx_images(path); }, path), "zero dimension"));
  }
  write_bytes(path, be32({0x801, 0}), true);
  CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path), "zero dimension"));
  write_bytes(path, be32({0x803, 1, 2048, 1024}), true);
  CHECK(
      contains(input_error([&] { (void)additive::read_idx_images(path); }, path), "implausible image size"));
}

TEST_CASE("IDX reader: trailing bytes are an error") {
  TempDir dir;
  for (bool gzip : {true, false}) {
    CAPTURE(gzip);
    const auto ipath = dir / (gzip ? "images.gz" : "images");
    const auto lpath = dir / (gzip ? "labels.gz" : "labels");
    auto ibytes = be32({0x803, 2, 2, 2});
    ibytes.resize(16 + 8 + 5, 1);
    write_bytes(ipath, ibytes, gzip);
    CHECK(contains(input_error([&] { (void)additive::read_idx_images(ipath); }, ipath), "5 trailing bytes"));
    auto lbytes = be32({0x801, 3});
    lbytes.resize(8 + 3 + 1, 2);
    write_bytes(lpath, lbytes, gzip);
    CHECK(contains(input_error([&] { (void)additive::read_idx_labels(lpath); }, lpath), "1 trailing bytes"));
  }
}

TEST_CASE("IDX writer refuses what the reader would refuse, and reports unwritable paths") {
  TempDir dir;
  IdxImages bad = make_images(2, 2, 2);
  bad.pixels.pop_back();
  CHECK_THROWS_AS(additive::write_idx_images(dir / "x", bad, false), additive::RuntimeError);
  CHECK_THROWS_AS(additive::write_idx_images(dir / "x", make_images(0, 2, 2), false), additive::RuntimeError);
  CHECK_THROWS_AS(additive::write_idx_labels(dir / "x", std::vector<std::uint8_t>{}, false),
                  additive::RuntimeError);
  // Unwritable paths are reported by write_file_atomically (io/atomic_file.hpp).
  const auto nowhere = dir / "no-such-dir" / "labels.gz";
  CHECK_THROWS_WITH_AS(additive::write_idx_labels(nowhere, std::vector<std::uint8_t>{1}, true),
                       doctest::Contains(nowhere.string().c_str()), InputError);
  CHECK(fs::is_empty(dir.path()));
}

// ---------------------------------------------------------------------------------------
// Hostile headers and streams (issue 18): no signed overflow, no allocation a header's
// claim cannot justify, nothing accepted after the gzip stream.
// ---------------------------------------------------------------------------------------

namespace {

/// Gzip-compresses `bytes` into one member (as gzip(1) does).
std::vector<std::uint8_t> gzip_bytes(const std::vector<std::uint8_t>& bytes) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<std::uint8_t> out(deflateBound(&zs, static_cast<uLong>(bytes.size())) + 64);
  zs.next_in = const_cast<Bytef*>(bytes.data());
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(out.size() - zs.avail_out);
  deflateEnd(&zs);
  return out;
}

std::vector<std::uint8_t> concat(std::vector<std::uint8_t> a, const std::vector<std::uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("IDX reader: dimensions whose product overflows 64-bit signed arithmetic are refused") {
  TempDir dir;
  const auto path = dir / "huge";
  for (bool gzip : {true, false}) {
    CAPTURE(gzip);
    // 0xffffffff x 0xffffffff pixels per image: the product needs 64 unsigned bits.
    write_bytes(path, be32({0x803, 1, 0xFFFFFFFFU, 0xFFFFFFFFU}), gzip);
    CHECK(contains(input_error([&] { (void)additive::read_idx_images(path); }, path),
                   "implausible image size 4294967295 x 4294967295"));
    write_bytes(path, be32({0x803, 0xFFFFFFFFU, 0xFFFFFFFFU, 0xFFFFFFFFU}), gzip);
    CHECK(contains(input_error([&] { (void)additive::read_idx_images(path); }, path),
                   "implausible image size"));
  }
  // The writer checks the same product without overflow.
  IdxImages wide{1, 0xFFFFFFFFLL, 0xFFFFFFFFLL, {}};
  CHECK_THROWS_AS(additive::write_idx_images(dir / "w", wide, false), additive::RuntimeError);
}

TEST_CASE("IDX reader: a header's claim is checked before anything is allocated") {
  TempDir dir;
  const auto path = dir / "claim";
  SUBCASE("raw: more than the rest of the file") {
    auto bytes = be32({0x803, 0x100000U, 1024, 1024});  // 2^40 bytes claimed
    bytes.resize(bytes.size() + 10, 1);
    write_bytes(path, bytes, false);
    const std::string msg = input_error([&] { (void)additive::read_idx_images(path); }, path);
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, "10 of 1099511627776 bytes"));
  }
  SUBCASE("gzip: more than a file of this size can inflate to") {
    write_bytes(path, be32({0x801, 0xFFFFFFFFU}), true);
    const std::string msg = input_error([&] { (void)additive::read_idx_labels(path); }, path);
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, "4294967295 bytes of label data"));
  }
  SUBCASE("more than the limit, even when the file could hold it") {
    auto bytes = be32({0x803, 100, 28, 28});
    bytes.resize(bytes.size() + 100 * 28 * 28, 0);  // all zeros: a 200-byte gzip file
    for (bool gzip : {true, false}) {
      CAPTURE(gzip);
      write_bytes(path, bytes, gzip);
      CHECK(additive::read_idx_images(path).count == 100);
      const std::string msg = input_error([&] { (void)additive::read_idx_images(path, 50000); }, path);
      CHECK(contains(msg, "78400 bytes of pixel data of 100 images, more than the limit of 50000 bytes"));
    }
  }
}

TEST_CASE("IDX reader: nothing but further gzip members may follow the gzip stream") {
  TempDir dir;
  const auto path = dir / "labels.gz";
  const std::vector<std::uint8_t> labels = {0x00, 0x00, 0x08, 0x01, 0, 0, 0, 3, 1, 2, 3};
  const auto gz = gzip_bytes(labels);

  SUBCASE("garbage after the stream") {
    write_bytes(path, concat(gz, {'g', 'a', 'r', 'b', 'a', 'g', 'e'}), false);
    CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path),
                   "7 bytes after the end of the gzip stream are not gzip data"));
    write_bytes(path, concat(gz, {0}), false);  // a single byte
    CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path),
                   "1 bytes after the end of the gzip stream are not gzip data"));
  }
  SUBCASE("garbage after a stream that ends inside the data") {
    const auto short_gz = gzip_bytes({0x00, 0x00, 0x08, 0x01, 0, 0, 0, 3, 1});
    write_bytes(path, concat(short_gz, {'x', 'y'}), false);
    const std::string msg = input_error([&] { (void)additive::read_idx_labels(path); }, path);
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, "followed by 2 bytes that are not gzip data"));
  }
  SUBCASE("concatenated members read as one stream, as gzip -d does") {
    const std::vector<std::uint8_t> head(labels.begin(), labels.begin() + 9),
        tail(labels.begin() + 9, labels.end());
    write_bytes(path, concat(gzip_bytes(head), gzip_bytes(tail)), false);
    CHECK(additive::read_idx_labels(path) == std::vector<std::uint8_t>{1, 2, 3});
    // A second member with more data than the header counts: trailing bytes.
    write_bytes(path, concat(gz, gzip_bytes({9, 9})), false);
    CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path), "2 trailing bytes"));
  }
}

TEST_CASE("IDX reader: a gzip bomb behind a valid file is refused without inflating it") {
  TempDir dir;
  const auto path = dir / "bomb.gz";
  // 3 labels, then 16 MiB of zeros: about 16 KiB compressed.
  std::vector<std::uint8_t> data = {0x00, 0x00, 0x08, 0x01, 0, 0, 0, 3, 1, 2, 3};
  data.resize(data.size() + (std::size_t{1} << 24), 0);
  const auto gz = gzip_bytes(data);
  data.clear();
  data.shrink_to_fit();
  write_bytes(path, gz, false);
  CHECK(fs::file_size(path) < (std::size_t{1} << 20));
  CHECK(contains(input_error([&] { (void)additive::read_idx_labels(path); }, path),
                 "more than 1048576 trailing bytes after 3 labels"));
}

TEST_CASE("IDX reader: only regular files") {
#ifdef __unix__
  TempDir dir;
  const auto fifo = dir / "fifo";
  REQUIRE(mkfifo(fifo.string().c_str(), 0600) == 0);
  CHECK(contains(input_error([&] { (void)additive::read_idx_labels(fifo); }, fifo), "not a regular file"));
#endif
}
