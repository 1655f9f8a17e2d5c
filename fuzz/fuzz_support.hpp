// What the fuzz targets share: the contract they check (a reader returns a value or throws
// InputError; any other exception is a finding and aborts), a scratch directory for the
// readers that take a path, and the count of accepted inputs that the corpus replay
// (replay_main.cpp) checks against the seeds' names.
#pragma once

#include <cxxabi.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <typeinfo>
#include <utility>

#include "additive/core/error.hpp"

namespace additive::fuzz {

/// Reads by a target's main readers (`reads`) that accepted their input, since the replay
/// last reset it: a seed named `ok-*` must be accepted by one of them, a seed named
/// `bad-*` refused by all.
inline std::size_t accepted = 0;

/// A finding: says what on stderr and aborts, so that libFuzzer saves the input as a crash
/// (and the replay test fails).
[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

/// ADDITIVE_FUZZ_VERBOSE=1 in the environment: print each refusal's message to stderr
/// (to see why a seed is refused; far too slow for fuzzing).
inline bool verbose() {
  static const bool on = [] {
    const char* v = std::getenv("ADDITIVE_FUZZ_VERBOSE");
    return v != nullptr && std::string(v) == "1";
  }();
  return on;
}

/// The type of exception `e`, demangled where the ABI allows ("std::out_of_range").
inline std::string type_name(const std::exception& e) {
  struct Free {
    void operator()(char* p) const noexcept { std::free(p); }
  };
  int status = 0;
  const std::unique_ptr<char, Free> name(abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status));
  return status == 0 && name ? std::string(name.get()) : std::string(typeid(e).name());
}

/// Checks a property of a value a reader returned.
inline void require(bool ok, const char* what) {
  if (!ok) finding(std::string("a reader returned an inconsistent value: ") + what);
}

/// Runs `read` (a reader, perhaps with checks of what it returned). True when it returned
/// (the input was accepted), false when it threw InputError (refused). Any other exception
/// is a finding: `what` names the reader in the message. Calls on a value a reader
/// accepted belong outside: there, any exception at all is a finding (uncaught, it aborts).
template <class F>
bool accepts(const std::string& what, F&& read) {
  try {
    read();
  } catch (const InputError& e) {
    if (verbose()) std::fprintf(stderr, "  %s: %s\n", what.c_str(), e.what());
    return false;
  } catch (const std::exception& e) {
    finding(what + " threw " + type_name(e) + ", not additive::InputError: " + e.what());
  } catch (...) {
    finding(what + " threw something that is not a std::exception");
  }
  return true;
}

/// `accepts` for the target's main readers, whose acceptance the replay checks: counted
/// in `accepted`.
template <class F>
bool reads(const std::string& what, F&& read) {
  const bool ok = accepts(what, std::forward<F>(read));
  if (ok) ++accepted;
  return ok;
}

/// Runs `read`, which must throw InputError (a request the reader must refuse, such as a
/// tensor that is not there); returning or throwing anything else is a finding.
template <class F>
void refuses(const std::string& what, F&& read) {
  try {
    read();
  } catch (const InputError&) {
    return;
  } catch (const std::exception& e) {
    finding(what + " threw " + type_name(e) + ", not additive::InputError: " + e.what());
  } catch (...) {
    finding(what + " threw something that is not a std::exception");
  }
  finding(what + " returned, it should have thrown additive::InputError");
}

/// A directory of this process for the files handed to path-taking readers: under
/// /dev/shm when it exists (no disk I/O), else the system's temporary directory. Removed
/// when the process exits normally.
class ScratchDir {
 public:
  ScratchDir() {
    std::error_code ec;
    const std::filesystem::path shm = "/dev/shm";
    const auto base = std::filesystem::is_directory(shm, ec) ? shm : std::filesystem::temp_directory_path();
    dir_ = base / ("additive-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_, ec);
    if (ec) finding("cannot create the scratch directory " + dir_.string() + ": " + ec.message());
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  /// Writes `bytes` to the file `name` of the directory (replacing it); returns its path.
  [[nodiscard]] std::filesystem::path write(const std::string& name,
                                            std::span<const std::uint8_t> bytes) const {
    const auto path = dir_ / name;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) finding("cannot create the scratch file " + path.string());
    const bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    if (std::fclose(f) != 0 || !ok) finding("cannot write the scratch file " + path.string());
    return path;
  }

 private:
  std::filesystem::path dir_;
};

}  // namespace additive::fuzz
