// IDX files (the MNIST / Fashion-MNIST format): strict readers for images and labels of
// unsigned bytes, gzip-compressed or not, and atomic writers for tests and fixtures.
// Every problem with a file is an `InputError` of one line that starts with the path.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/io/atomic_file.hpp"

namespace additive {

/// Images of an IDX file: `count` images of `rows x cols` bytes, row by row, image after
/// image (`pixels.size() == count * rows * cols`).
struct IdxImages {
  std::int64_t count = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<std::uint8_t> pixels;  // (count, rows * cols) row-major
};

/// IDX magic numbers: two zero bytes, the data type (0x08: unsigned byte), the rank.
inline constexpr std::uint32_t kIdxImagesMagic = 0x00000803;
inline constexpr std::uint32_t kIdxLabelsMagic = 0x00000801;
/// Largest image accepted (pixels per image). Anything bigger is a corrupt header.
inline constexpr std::int64_t kIdxMaxImagePixels = std::int64_t{1} << 20;

namespace detail {

inline std::string hex32(std::uint32_t v) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string s = "0x00000000";
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(9 - i)] = digits[(v >> (4 * i)) & 0xF];
  return s;
}

/// An open gzFile for reading; `gzread` also reads uncompressed files transparently.
class IdxReader {
 public:
  explicit IdxReader(const std::filesystem::path& path) : name_(path.string()) {
    std::error_code ec;
    const auto st = std::filesystem::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) fail("cannot access: " + ec.message());
    if (!std::filesystem::exists(st)) fail("file not found");
    if (std::filesystem::is_directory(st)) fail("is a directory, expected an IDX file");
    errno = 0;
    file_ = gzopen(name_.c_str(), "rb");
    if (file_ == nullptr)
      fail(std::string("cannot open: ") + (errno != 0 ? std::strerror(errno) : "out of memory"));
    gzbuffer(file_, 1U << 17);
  }
  IdxReader(const IdxReader&) = delete;
  IdxReader& operator=(const IdxReader&) = delete;
  ~IdxReader() {
    if (file_ != nullptr) gzclose(file_);
  }

  [[noreturn]] void fail(const std::string& what) const { throw InputError(name_ + ": " + what); }

  /// Reads `n` bytes without trusting `n` with one huge allocation: a header that claims
  /// more data than the file holds fails as truncated instead of exhausting memory.
  std::vector<std::uint8_t> read_vector(std::uint64_t n, const std::string& what) {
    constexpr std::uint64_t kReserveCap = std::uint64_t{1} << 28;
    constexpr std::uint64_t kStep = std::uint64_t{1} << 24;
    std::vector<std::uint8_t> out;
    out.reserve(static_cast<std::size_t>(std::min(n, kReserveCap)));
    for (std::uint64_t done = 0; done < n;) {
      const std::uint64_t step = std::min(n - done, kStep);
      out.resize(static_cast<std::size_t>(done + step));
      read_part(out.data() + done, done, step, n, what);
      done += step;
    }
    return out;
  }

  /// Reads the big-endian word at byte `offset` of a header of `header_bytes` bytes.
  std::uint32_t read_header_word(std::uint64_t offset, std::uint64_t header_bytes) {
    std::array<std::uint8_t, 4> b{};
    read_part(b.data(), offset, 4, header_bytes, "header");
    return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) |
           std::uint32_t{b[3]};
  }

  /// After the last expected byte: no trailing bytes, a complete gzip stream, a clean close.
  void finish(const std::string& after_what) {
    std::array<std::uint8_t, 4096> scratch{};
    std::uint64_t extra = 0;
    for (;;) {
      const int got = gzread(file_, scratch.data(), static_cast<unsigned>(scratch.size()));
      if (got < 0) fail_gz("after " + after_what);
      if (got == 0) break;
      extra += static_cast<std::uint64_t>(got);
    }
    if (extra > 0) fail(std::to_string(extra) + " trailing bytes after " + after_what);
    int errnum = Z_OK;
    gzerror(file_, &errnum);
    if (errnum == Z_BUF_ERROR) fail("truncated gzip stream (it ends before its trailer) after " + after_what);
    if (errnum != Z_OK) fail_gz("after " + after_what);
    const int rc = gzclose(file_);
    file_ = nullptr;
    if (rc == Z_BUF_ERROR) fail("truncated gzip stream (it ends before its trailer) after " + after_what);
    if (rc != Z_OK) fail("error closing the file (zlib code " + std::to_string(rc) + ")");
  }

 private:
  /// Reads bytes `[offset, offset + n)` of a part of `total` bytes into `out`.
  void read_part(std::uint8_t* out, std::uint64_t offset, std::uint64_t n, std::uint64_t total,
                 const std::string& what) {
    constexpr std::uint64_t kChunk = std::uint64_t{1} << 20;
    for (std::uint64_t done = 0; done < n;) {
      const auto want = static_cast<unsigned>(std::min(n - done, kChunk));
      const int got = gzread(file_, out + done, want);
      if (got > 0) done += static_cast<std::uint64_t>(got);
      if (got < 0 || static_cast<unsigned>(got) < want) fail_stream(what, offset + done, total);
    }
  }

  [[noreturn]] void fail_gz(const std::string& where) const {
    int errnum = Z_OK;
    const char* msg = gzerror(file_, &errnum);
    if (errnum == Z_ERRNO) fail("read error " + where + ": " + std::strerror(errno));
    fail("corrupt gzip data " + where + ": " + (msg != nullptr ? msg : "unknown zlib error"));
  }

  [[noreturn]] void fail_stream(const std::string& what, std::uint64_t got, std::uint64_t want) const {
    int errnum = Z_OK;
    const char* msg = gzerror(file_, &errnum);
    const std::string counts = what + " (" + std::to_string(got) + " of " + std::to_string(want) + " bytes)";
    if (errnum == Z_BUF_ERROR) fail("truncated gzip stream: it ends inside the " + counts);
    if (errnum == Z_ERRNO) fail("read error in the " + counts + ": " + std::strerror(errno));
    if (errnum != Z_OK)
      fail("corrupt gzip data in the " + counts + ": " + (msg != nullptr ? msg : "unknown"));
    fail("truncated: the file ends inside the " + counts);
  }

  std::string name_;
  gzFile file_ = nullptr;
};

inline void check_magic(IdxReader& in, std::uint32_t expected, std::uint64_t header_bytes, const char* kind) {
  const std::uint32_t magic = in.read_header_word(0, header_bytes);
  if (magic != expected)
    in.fail("wrong magic " + hex32(magic) + ", expected " + hex32(expected) + " (IDX " + kind +
            " of unsigned bytes)");
}

/// Deflates `parts` in order into one gzip member written to `sink`.
inline void gzip_to_sink(FileSink& sink, std::initializer_list<std::span<const std::uint8_t>> parts,
                         const std::string& name) {
  z_stream zs{};
  if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16 /* gzip wrapper */, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw RuntimeError(name + ": cannot start gzip compression");
  struct End {
    z_stream* z;
    ~End() { deflateEnd(z); }
  } end{&zs};
  std::vector<std::uint8_t> out(std::size_t{1} << 18);
  auto pump = [&](int flush) {
    int rc = Z_OK;
    do {
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(out.size());
      rc = deflate(&zs, flush);
      if (rc == Z_STREAM_ERROR) throw RuntimeError(name + ": gzip compression failed");
      sink.write(std::as_bytes(std::span(out.data(), out.size() - zs.avail_out)));
    } while (zs.avail_out == 0 || (flush == Z_FINISH && rc != Z_STREAM_END));
  };
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  for (const auto part : parts) {
    for (std::size_t done = 0; done < part.size(); done += kChunk) {
      const std::size_t n = std::min(kChunk, part.size() - done);
      zs.next_in = const_cast<Bytef*>(part.data() + done);  // zlib does not write through next_in
      zs.avail_in = static_cast<uInt>(n);
      pump(Z_NO_FLUSH);
    }
  }
  zs.next_in = nullptr;
  zs.avail_in = 0;
  pump(Z_FINISH);
}

/// Writes the big-endian `header` words then `payload` to `path`, gzip-compressed or
/// raw, through `write_file_atomically` (temporary file, fsync, rename).
inline void write_idx_file(const std::filesystem::path& path, std::span<const std::uint32_t> header,
                           std::span<const std::uint8_t> payload, bool gzip) {
  std::vector<std::uint8_t> head;
  for (std::uint32_t v : header)
    for (int shift = 24; shift >= 0; shift -= 8) head.push_back(static_cast<std::uint8_t>(v >> shift));
  write_file_atomically(path, [&](FileSink& sink) {
    if (gzip) {
      gzip_to_sink(sink, {std::span<const std::uint8_t>(head), payload}, path.string());
    } else {
      sink.write(std::as_bytes(std::span<const std::uint8_t>(head)));
      sink.write(std::as_bytes(payload));
    }
  });
}

inline std::uint32_t idx_dim(std::int64_t v, const std::string& path, const char* what) {
  if (v <= 0 || v > std::int64_t{0xFFFFFFFF})
    throw RuntimeError(path + ": cannot write " + what + " " + std::to_string(v) + " (must be in 1..2^32-1)");
  return static_cast<std::uint32_t>(v);
}

}  // namespace detail

/// Reads an IDX file of images (magic 0x00000803). Strict: the header must be sane
/// (count, rows, cols > 0 and rows * cols <= 2^20) and the file must hold exactly
/// `count * rows * cols` pixel bytes, no fewer (truncation) and no more (trailing bytes).
inline IdxImages read_idx_images(const std::filesystem::path& path) {
  detail::IdxReader in(path);
  detail::check_magic(in, kIdxImagesMagic, 16, "images");
  IdxImages out;
  out.count = in.read_header_word(4, 16);
  out.rows = in.read_header_word(8, 16);
  out.cols = in.read_header_word(12, 16);
  if (out.count == 0 || out.rows == 0 || out.cols == 0)
    in.fail("zero dimension in the header: " + std::to_string(out.count) + " images of " +
            std::to_string(out.rows) + " x " + std::to_string(out.cols) + " pixels");
  if (out.rows * out.cols > kIdxMaxImagePixels)
    in.fail("implausible image size " + std::to_string(out.rows) + " x " + std::to_string(out.cols) +
            " in the header (more than 2^20 pixels)");
  const auto bytes = static_cast<std::uint64_t>(out.count * out.rows * out.cols);
  out.pixels = in.read_vector(bytes, "pixel data of " + std::to_string(out.count) + " images");
  in.finish(std::to_string(out.count) + " images");
  return out;
}

/// Reads an IDX file of labels (magic 0x00000801): exactly `count > 0` bytes.
inline std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& path) {
  detail::IdxReader in(path);
  detail::check_magic(in, kIdxLabelsMagic, 8, "labels");
  const std::uint32_t count = in.read_header_word(4, 8);
  if (count == 0) in.fail("zero dimension in the header: 0 labels");
  auto labels = in.read_vector(count, "label data of " + std::to_string(count) + " labels");
  in.finish(std::to_string(count) + " labels");
  return labels;
}

/// Writes an IDX images file (gzip-compressed or raw) atomically: a temporary file in
/// the same directory, renamed into place. Throws `RuntimeError` for inconsistent
/// images (the reader would reject them), `InputError` if the file cannot be created
/// (missing directory, no permission), `RuntimeError` if a write fails.
inline void write_idx_images(const std::filesystem::path& path, const IdxImages& images, bool gzip) {
  const std::string name = path.string();
  const std::uint32_t count = detail::idx_dim(images.count, name, "image count");
  const std::uint32_t rows = detail::idx_dim(images.rows, name, "rows");
  const std::uint32_t cols = detail::idx_dim(images.cols, name, "cols");
  if (images.rows * images.cols > kIdxMaxImagePixels)
    throw RuntimeError(name + ": cannot write images of more than 2^20 pixels");
  if (images.pixels.size() != static_cast<std::size_t>(images.count * images.rows * images.cols))
    throw RuntimeError(name + ": cannot write " + std::to_string(images.pixels.size()) + " pixels as " +
                       std::to_string(images.count) + " images of " + std::to_string(images.rows) + " x " +
                       std::to_string(images.cols));
  const std::array<std::uint32_t, 4> header{kIdxImagesMagic, count, rows, cols};
  detail::write_idx_file(path, header, images.pixels, gzip);
}

/// Writes an IDX labels file (gzip-compressed or raw) atomically; at least one label.
inline void write_idx_labels(const std::filesystem::path& path, std::span<const std::uint8_t> labels,
                             bool gzip) {
  const std::string name = path.string();
  const std::uint32_t count = detail::idx_dim(static_cast<std::int64_t>(labels.size()), name, "label count");
  const std::array<std::uint32_t, 2> header{kIdxLabelsMagic, count};
  detail::write_idx_file(path, header, labels, gzip);
}

}  // namespace additive
