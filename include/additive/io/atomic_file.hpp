// Whole-file writes that never leave a partial target: the bytes go to a temporary file
// in the same directory, which is flushed, fsynced and renamed over the target. Readers
// see the old file or the new one, never a mix. POSIX only.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"

namespace additive {

class FileSink;

namespace detail {

/// The error of a failed write, fsync or close of `target`: the environment's failures
/// that are not the program's (a full disk, a quota, a read-only file system) say so as
/// an InputError; anything else is a RuntimeError.
[[noreturn]] inline void throw_write_error(const std::filesystem::path& target, const std::string& what,
                                           int err) {
  const std::string head = "cannot write '" + target.string() + "': ";
  if (err == ENOSPC) throw InputError(head + "the disk is full (" + std::strerror(err) + ")");
#ifdef EDQUOT
  if (err == EDQUOT) throw InputError(head + "the disk quota is exhausted (" + std::strerror(err) + ")");
#endif
  if (err == EROFS) throw InputError(head + "the file system is read-only (" + std::strerror(err) + ")");
  throw RuntimeError(head + what + std::strerror(err));
}

}  // namespace detail

inline void write_file_atomically(const std::filesystem::path& path,
                                  const std::function<void(FileSink&)>& writer);

/// The sink handed to a writer callback of `write_file_atomically`. Buffered; the
/// bytes reach the disk when the callback returns.
class FileSink {
 public:
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;

  void write(std::span<const std::byte> bytes) {
    if (buffer_.size() + bytes.size() > buffer_capacity) flush();
    if (bytes.size() >= buffer_capacity) {
      write_all(bytes.data(), bytes.size());
    } else {
      buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
    }
  }
  void write(std::string_view text) { write(std::as_bytes(std::span(text.data(), text.size()))); }

  /// Number of bytes written so far.
  [[nodiscard]] std::uint64_t size() const noexcept { return written_ + buffer_.size(); }

  /// Writes out the buffer (`write_file_atomically` calls it before fsync).
  void flush() {
    if (buffer_.empty()) return;
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

 private:
  friend void write_file_atomically(const std::filesystem::path& path,
                                    const std::function<void(FileSink&)>& writer);
  static constexpr std::size_t buffer_capacity = std::size_t{1} << 20;

  FileSink(int fd, std::filesystem::path target) : fd_(fd), target_(std::move(target)) {
    buffer_.reserve(buffer_capacity);
  }

  void write_all(const std::byte* p, std::size_t n) {
    while (n > 0) {
      const ::ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        detail::throw_write_error(target_, "", errno);
      }
      p += w;
      n -= static_cast<std::size_t>(w);
      written_ += static_cast<std::uint64_t>(w);
    }
  }

  int fd_;
  std::filesystem::path target_;
  std::vector<std::byte> buffer_;
  std::uint64_t written_ = 0;
};

namespace detail {

/// Removes the temporary files `<target>.tmp.<pid>.<n>` that processes of this machine
/// left when they were killed during a write (their pid no longer runs); a live
/// process's are kept. Best effort: nothing is reported.
inline void remove_stale_temporaries(const std::filesystem::path& target) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  const std::string prefix = target.filename().string() + ".tmp.";
  std::error_code ec;
  std::vector<std::filesystem::path> stale;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    const std::string_view rest = std::string_view(name).substr(prefix.size());  // "<pid>.<n>"
    const std::size_t dot = rest.find('.');
    if (dot == 0 || dot == std::string_view::npos || dot + 1 == rest.size() ||
        rest.find_first_not_of("0123456789.") != std::string_view::npos ||
        rest.find('.', dot + 1) != std::string_view::npos || dot > 9)
      continue;
    const long pid = std::stol(std::string(rest.substr(0, dot)));
    if (pid <= 0 || pid == static_cast<long>(::getpid())) continue;
    if (::kill(static_cast<::pid_t>(pid), 0) == 0 || errno != ESRCH)
      continue;  // alive (or not ours to judge)
    std::error_code type_ec;
    if (it->is_regular_file(type_ec)) stale.push_back(it->path());
  }
  for (const auto& p : stale) std::filesystem::remove(p, ec);
}

/// Owns the temporary file until it is renamed: closes it and removes it on any failure.
class AtomicTempFile {
 public:
  explicit AtomicTempFile(const std::filesystem::path& target) {
    static std::atomic<std::uint64_t> counter{0};
    for (int attempt = 0; attempt < 100; ++attempt) {
      path_ = target;
      path_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) return;
      if (errno != EEXIST) break;  // a stale temp of a dead process with our pid: next name
    }
    const std::string why = std::strerror(errno);
    std::filesystem::path dir = target.parent_path();
    if (dir.empty()) dir = ".";
    throw InputError("cannot write '" + target.string() + "': cannot create a file in '" + dir.string() +
                     "': " + why);
  }
  AtomicTempFile(const AtomicTempFile&) = delete;
  AtomicTempFile& operator=(const AtomicTempFile&) = delete;
  ~AtomicTempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) {
      std::error_code ec;
      std::filesystem::remove(path_, ec);  // best effort; nothing to report from a destructor
    }
  }

  [[nodiscard]] int fd() const noexcept { return fd_; }

  /// fsync, close and rename over `target`; throws `RuntimeError` naming `target`.
  void commit(const std::filesystem::path& target) {
    auto fail = [&](const std::string& what) {
      throw RuntimeError("cannot write '" + target.string() + "': " + what);
    };
    while (::fsync(fd_) != 0) {
      if (errno != EINTR) throw_write_error(target, "fsync failed: ", errno);
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_write_error(target, "close failed: ", errno);
    std::error_code ec;
    std::filesystem::rename(path_, target, ec);
    if (ec) fail("cannot rename the temporary file over it: " + ec.message());
    committed_ = true;
    sync_directory(target.parent_path());
  }

 private:
  // Makes the rename itself durable. Best effort: the data is already safe on disk.
  static void sync_directory(std::filesystem::path dir) {
    if (dir.empty()) dir = ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;
    (void)::fsync(dfd);
    ::close(dfd);
  }

  std::filesystem::path path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace detail

/// Replaces the file at `path` with what `writer` writes to the sink, atomically: on any
/// failure (including an exception from `writer`, which propagates unchanged) the
/// previous file is intact and no temporary file is left. Temporary files of `path` that
/// processes killed during a write left behind are removed first. Throws `InputError`
/// when the file cannot be created (missing directory, no permission, `path` is a
/// directory) or the disk is full, and `RuntimeError` when a write, fsync or rename fails
/// otherwise.
inline void write_file_atomically(const std::filesystem::path& path,
                                  const std::function<void(FileSink&)>& writer) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw InputError("cannot write '" + path.string() + "': it is a directory");
  detail::remove_stale_temporaries(path);
  detail::AtomicTempFile tmp(path);
  FileSink sink(tmp.fd(), path);
  writer(sink);
  sink.flush();
  tmp.commit(path);
}

/// Replaces the file at `path` with `bytes`, atomically (see above).
inline void write_file_atomically(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  write_file_atomically(path, [bytes](FileSink& sink) { sink.write(bytes); });
}

/// Replaces the file at `path` with `text`, atomically (see above).
inline void write_file_atomically(const std::filesystem::path& path, std::string_view text) {
  write_file_atomically(path, [text](FileSink& sink) { sink.write(text); });
}

}  // namespace additive
