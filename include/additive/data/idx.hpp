// IDX files (the MNIST / Fashion-MNIST format): strict readers for images and labels of
// unsigned bytes, gzip-compressed or not, and atomic writers for tests and fixtures.
// Every problem with a file is an `InputError` of one line that starts with the path.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <memory>
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
/// Most data bytes (pixels, labels) a file may claim by default: 4 GiB. A header that
/// claims more is refused before anything is allocated (the readers take another limit).
inline constexpr std::uint64_t kIdxMaxDataBytes = std::uint64_t{1} << 32;

namespace detail {

inline std::string hex32(std::uint32_t v) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string s = "0x00000000";
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(9 - i)] = digits[(v >> (4 * i)) & 0xF];
  return s;
}

/// A regular file opened for reading, gzip-compressed (it starts with the gzip magic
/// 1f 8b) or raw. Gzip streams are inflated here rather than through gzread, which
/// silently ignores what follows the end of the stream: a gzip stream may be followed
/// only by further gzip members (concatenated streams, as gzip -c a b writes), anything
/// else is refused. Nothing is allocated beyond fixed buffers; what a read returns
/// is the caller's.
class IdxReader {
 public:
  explicit IdxReader(const std::filesystem::path& path) : name_(path.string()) {
    std::error_code ec;
    const auto st = std::filesystem::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) fail("cannot access: " + ec.message());
    if (!std::filesystem::exists(st)) fail("file not found");
    if (std::filesystem::is_directory(st)) fail("is a directory, expected an IDX file");
    if (!std::filesystem::is_regular_file(st))
      fail("is not a regular file (a pipe or a device), expected an IDX file");
    file_size_ = std::filesystem::file_size(path, ec);
    if (ec) fail("cannot determine its size: " + ec.message());
    errno = 0;
    file_.reset(std::fopen(name_.c_str(), "rb"));
    if (file_ == nullptr)
      fail(std::string("cannot open: ") + (errno != 0 ? std::strerror(errno) : "unknown error"));
    in_.resize(std::size_t{1} << 17);
    gzip_ = ensure(2) && in_[in_pos_] == 0x1f && in_[in_pos_ + 1] == 0x8b;
    if (gzip_) {
      if (inflateInit2(&zs_, 15 + 16 /* gzip only */) != Z_OK)
        throw RuntimeError(name_ + ": cannot start gzip decompression");
      inflating_ = true;
    }
  }
  IdxReader(const IdxReader&) = delete;
  IdxReader& operator=(const IdxReader&) = delete;
  ~IdxReader() {
    if (inflating_) inflateEnd(&zs_);
  }

  [[noreturn]] void fail(const std::string& what) const { throw InputError(name_ + ": " + what); }

  /// Refuses a header's claim of `n` data bytes (`what`: "pixel data of 5 images") before
  /// anything is allocated for them: more than the rest of a raw file holds, or than a
  /// gzip file of this size can inflate to (deflate gives at most 1032 bytes per input
  /// byte), is a truncated file; more than `max_bytes` is refused as too large.
  void check_claim(std::uint64_t n, std::uint64_t header_bytes, const std::string& what,
                   std::uint64_t max_bytes) const {
    if (!gzip_) {
      const std::uint64_t rest = file_size_ > header_bytes ? file_size_ - header_bytes : 0;
      if (n > rest)
        fail("truncated: the file ends inside the " + what + " (" + std::to_string(rest) + " of " +
             std::to_string(n) + " bytes)");
    } else {
      constexpr std::uint64_t ratio = 1032;
      const std::uint64_t most = file_size_ > (std::numeric_limits<std::uint64_t>::max() - 4096) / ratio
                                     ? std::numeric_limits<std::uint64_t>::max()
                                     : file_size_ * ratio + 4096;
      if (n + header_bytes > most)
        fail("truncated: the header claims " + std::to_string(n) + " bytes of " + what + ", more than a " +
             std::to_string(file_size_) + "-byte gzip file can hold");
    }
    if (n > max_bytes)
      fail("the header claims " + std::to_string(n) + " bytes of " + what + ", more than the limit of " +
           std::to_string(max_bytes) + " bytes");
  }

  /// Reads `n` bytes without trusting `n` with one huge allocation: the vector grows only
  /// as the data arrives, so a header that claims more than the file holds fails as
  /// truncated instead of exhausting memory.
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

  /// After the last expected byte: no trailing bytes, a complete gzip stream and nothing
  /// after it. Trailing inflated bytes are counted up to 1 MiB only: a gzip bomb behind a
  /// valid file is refused without inflating it.
  void finish(const std::string& after_what) {
    constexpr std::uint64_t kCountCap = std::uint64_t{1} << 20;
    std::uint64_t extra = 0;
    if (!gzip_) {
      extra = buffered() + (file_size_ > file_read_ ? file_size_ - file_read_ : 0);
    } else {
      std::array<std::uint8_t, 4096> scratch{};
      for (;;) {
        const std::size_t got = read(scratch.data(), scratch.size());
        extra += got;
        if (got < scratch.size()) break;
        if (extra >= kCountCap) {
          fail("more than " + std::to_string(kCountCap) + " trailing bytes after " + after_what);
        }
      }
    }
    if (extra > 0) fail(std::to_string(extra) + " trailing bytes after " + after_what);
    switch (end_) {
      case End::truncated:
        fail("truncated gzip stream (it ends before its trailer) after " + after_what);
      case End::corrupt:
        fail("corrupt gzip data after " + after_what + ": " + zlib_message_);
      case End::garbage:
        fail(std::to_string(garbage_) + " bytes after the end of the gzip stream are not gzip data (after " +
             after_what + ")");
      default:
        break;
    }
    if (std::fclose(file_.release()) != 0) fail("error closing the file");
  }

 private:
  /// Why a read stopped short: the end of the data, a gzip stream cut off, corrupt gzip
  /// data, or bytes that are not gzip data after the end of the stream.
  enum class End : std::uint8_t { none, clean, truncated, corrupt, garbage };

  [[nodiscard]] std::uint64_t buffered() const noexcept { return in_len_ - in_pos_; }

  /// At least `k` unread bytes in the buffer, unless the file ends first (false).
  bool ensure(std::size_t k) {
    if (buffered() >= k) return true;
    std::memmove(in_.data(), in_.data() + in_pos_, buffered());
    in_len_ -= in_pos_;
    in_pos_ = 0;
    while (in_len_ < k) {
      errno = 0;
      const std::size_t got = std::fread(in_.data() + in_len_, 1, in_.size() - in_len_, file_.get());
      if (got == 0) {
        if (std::ferror(file_.get()) != 0)
          fail(std::string("read error: ") + (errno != 0 ? std::strerror(errno) : "unknown error"));
        return false;
      }
      in_len_ += got;
      file_read_ += got;
    }
    return true;
  }

  /// Reads up to `n` bytes into `out`; fewer only when the data ends (end_ says why).
  std::size_t read(std::uint8_t* out, std::size_t n) {
    std::size_t produced = 0;
    if (!gzip_) {
      while (produced < n) {
        if (!ensure(1)) {
          end_ = End::clean;
          break;
        }
        const std::size_t take = std::min<std::size_t>(n - produced, buffered());
        std::memcpy(out + produced, in_.data() + in_pos_, take);
        in_pos_ += take;
        produced += take;
      }
      return produced;
    }
    while (produced < n && end_ == End::none) {
      if (member_done_) {  // what follows a gzip member: nothing, another member, or garbage
        if (!ensure(1)) {
          end_ = End::clean;
          break;
        }
        if (ensure(2) && in_[in_pos_] == 0x1f && in_[in_pos_ + 1] == 0x8b) {
          inflateReset(&zs_);
          member_done_ = false;
          continue;
        }
        garbage_ = buffered() + (file_size_ > file_read_ ? file_size_ - file_read_ : 0);
        end_ = End::garbage;
        break;
      }
      if (!ensure(1)) {
        end_ = End::truncated;
        break;
      }
      zs_.next_in = in_.data() + in_pos_;
      zs_.avail_in = static_cast<uInt>(buffered());
      zs_.next_out = out + produced;
      const std::size_t want = std::min<std::size_t>(n - produced, std::size_t{1} << 30);
      zs_.avail_out = static_cast<uInt>(want);
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      in_pos_ = static_cast<std::size_t>(zs_.next_in - in_.data());
      produced += want - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        member_done_ = true;
      } else if (rc != Z_OK && !(rc == Z_BUF_ERROR && zs_.avail_in == 0)) {
        zlib_message_ = zs_.msg != nullptr ? zs_.msg : "zlib error " + std::to_string(rc);
        end_ = End::corrupt;
      }
    }
    return produced;
  }

  /// Reads bytes `[offset, offset + n)` of a part of `total` bytes into `out`.
  void read_part(std::uint8_t* out, std::uint64_t offset, std::uint64_t n, std::uint64_t total,
                 const std::string& what) {
    const std::size_t got = read(out, static_cast<std::size_t>(n));
    if (got < n) fail_stream(what, offset + got, total);
  }

  [[noreturn]] void fail_stream(const std::string& what, std::uint64_t got, std::uint64_t want) const {
    const std::string counts = what + " (" + std::to_string(got) + " of " + std::to_string(want) + " bytes)";
    switch (end_) {
      case End::truncated:
        fail("truncated gzip stream: it ends inside the " + counts);
      case End::corrupt:
        fail("corrupt gzip data in the " + counts + ": " + zlib_message_);
      case End::garbage:
        fail("truncated: the gzip stream ends inside the " + counts + ", followed by " +
             std::to_string(garbage_) + " bytes that are not gzip data");
      default:
        fail("truncated: the file ends inside the " + counts);
    }
  }

  struct Close {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
  };

  std::string name_;
  std::unique_ptr<std::FILE, Close> file_;
  std::uint64_t file_size_ = 0;
  std::uint64_t file_read_ = 0;  // bytes read from the file into in_ so far
  std::vector<std::uint8_t> in_;
  std::size_t in_pos_ = 0, in_len_ = 0;
  bool gzip_ = false;
  z_stream zs_{};
  bool inflating_ = false;  // zs_ holds inflate state (inflateEnd it)
  bool member_done_ = false;
  End end_ = End::none;
  std::uint64_t garbage_ = 0;
  std::string zlib_message_;
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
/// (count, rows, cols > 0, rows * cols <= 2^20, count * rows * cols <= `max_bytes` and
/// no more than the file can hold) and the file must hold exactly `count * rows * cols`
/// pixel bytes, no fewer (truncation) and no more (trailing bytes, or anything after the
/// gzip stream).
inline IdxImages read_idx_images(const std::filesystem::path& path,
                                 std::uint64_t max_bytes = kIdxMaxDataBytes) {
  detail::IdxReader in(path);
  detail::check_magic(in, kIdxImagesMagic, 16, "images");
  const std::uint32_t count = in.read_header_word(4, 16);
  const std::uint32_t rows = in.read_header_word(8, 16);
  const std::uint32_t cols = in.read_header_word(12, 16);
  if (count == 0 || rows == 0 || cols == 0)
    in.fail("zero dimension in the header: " + std::to_string(count) + " images of " + std::to_string(rows) +
            " x " + std::to_string(cols) + " pixels");
  // Each factor is below 2^32: the products below fit in 64 bits, unsigned.
  const std::uint64_t pixels = std::uint64_t{rows} * cols;
  if (pixels > static_cast<std::uint64_t>(kIdxMaxImagePixels))
    in.fail("implausible image size " + std::to_string(rows) + " x " + std::to_string(cols) +
            " in the header (more than 2^20 pixels)");
  const std::uint64_t bytes = std::uint64_t{count} * pixels;  // < 2^52
  const std::string what = "pixel data of " + std::to_string(count) + " images";
  in.check_claim(bytes, 16, what, max_bytes);
  IdxImages out;
  out.count = count;
  out.rows = rows;
  out.cols = cols;
  out.pixels = in.read_vector(bytes, what);
  in.finish(std::to_string(count) + " images");
  return out;
}

/// Reads an IDX file of labels (magic 0x00000801): exactly `count > 0` bytes, at most
/// `max_bytes`.
inline std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& path,
                                                 std::uint64_t max_bytes = kIdxMaxDataBytes) {
  detail::IdxReader in(path);
  detail::check_magic(in, kIdxLabelsMagic, 8, "labels");
  const std::uint32_t count = in.read_header_word(4, 8);
  if (count == 0) in.fail("zero dimension in the header: 0 labels");
  const std::string what = "label data of " + std::to_string(count) + " labels";
  in.check_claim(count, 8, what, max_bytes);
  auto labels = in.read_vector(count, what);
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
  if (std::uint64_t{rows} * cols > static_cast<std::uint64_t>(kIdxMaxImagePixels))
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
