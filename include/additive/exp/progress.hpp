// A terminal progress bar with rate and ETA for long runs. On a terminal it redraws one
// line at most 10 times a second; into a file or pipe it writes a plain line every 10%
// so logs stay readable.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace additive {

class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  /// total: units of work (batches); unit: what a unit is called in the rate ("samples").
  ProgressBar(std::string label, std::int64_t total, double units_per_step, std::string unit,
              std::FILE* out = stderr)
      : label_(std::move(label)),
        total_(total),
        units_per_step_(units_per_step),
        unit_(std::move(unit)),
        out_(out),
        tty_(out != nullptr && ::isatty(::fileno(out)) != 0),
        start_(Clock::now()) {}

  /// Call after each step; `info` is shown at the end of the line (e.g. the loss).
  void update(std::int64_t done, const std::string& info = {}) {
    if (out_ == nullptr) return;
    const auto now = Clock::now();
    const bool last = done >= total_;
    if (tty_) {
      if (!last && now - last_draw_ < std::chrono::milliseconds(100)) return;
    } else {
      const std::int64_t decile = total_ > 0 ? done * 10 / total_ : 10;
      if (!last && decile == last_decile_) return;
      last_decile_ = decile;
    }
    last_draw_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) * units_per_step_ / elapsed : 0.0;
    const double eta =
        done > 0 ? elapsed * static_cast<double>(total_ - done) / static_cast<double>(done) : 0.0;
    constexpr int width = 24;
    const auto filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    const std::string bar = std::string(static_cast<std::size_t>(filled), '#') +
                            std::string(static_cast<std::size_t>(width - filled), '.');
    const std::string line = fmt::format("{} [{}] {}/{} {:.0f} {}/s ETA {} {}", label_, bar, done, total_,
                                         rate, unit_, format_duration(eta), info);
    if (tty_)
      std::fprintf(out_, "\r%s\033[K%s", line.c_str(), last ? "\n" : "");
    else
      std::fprintf(out_, "%s\n", line.c_str());
    std::fflush(out_);
  }

  [[nodiscard]] double elapsed_seconds() const {
    return std::chrono::duration<double>(Clock::now() - start_).count();
  }

  static std::string format_duration(double seconds) {
    const auto s = static_cast<std::int64_t>(seconds + 0.5);
    return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                     : fmt::format("{}:{:02}", s / 60, s % 60);
  }

 private:
  std::string label_;
  std::int64_t total_;
  double units_per_step_;
  std::string unit_;
  std::FILE* out_;
  bool tty_;
  Clock::time_point start_;
  Clock::time_point last_draw_{};
  std::int64_t last_decile_ = -1;
};

}  // namespace additive
