// Text formatting shared by the reports (terminal tables, CSV, JSON, SVG): display
// width and truncation of UTF-8 text, masks in hex, and human-readable counts and byte
// sizes. Everything is deterministic: the same value always gives the same text.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>

namespace additive::report {

/// Display width of UTF-8 text, in code points (the reports hold no double-width text).
inline std::size_t text_width(std::string_view s) {
  return static_cast<std::size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

/// At most `n` code points of `s`: when longer, its start (without trailing spaces and
/// dots) and an ellipsis.
inline std::string truncate(std::string_view s, std::size_t n) {
  if (text_width(s) <= n || n < 2) return std::string(s);
  std::size_t points = 0, i = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 && points++ == n - 1) break;
  }
  std::string head(s.substr(0, i));
  head.erase(head.find_last_not_of(" .") + 1);
  return head + "\u2026";
}

/// A structure mask as the reports print it: 0x2d (0 is "0x0").
inline std::string mask_hex(std::uint64_t m) { return fmt::format("{:#x}", m); }

/// Three significant digits for 1 <= |v| < 1000: 1.26, 12.6, 126.
inline std::string three_digits(double v) {
  const double a = std::abs(v);
  return a < 9.995   ? fmt::format("{:.2f}", v)
         : a < 99.95 ? fmt::format("{:.1f}", v)
                     : fmt::format("{:.0f}", v);
}

/// 950, 12.3k, 1.26M, 4.10G.
inline std::string human_count(double n) {
  static constexpr const char* units[] = {"", "k", "M", "G", "T", "P"};
  std::size_t u = 0;
  while (std::abs(n) >= 999.5 && u + 1 < std::size(units)) {
    n /= 1000;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f}", n) : three_digits(n) + units[u];
}

/// Bytes in binary units: 0 B, 512 B, 1.50 KiB, 12.0 MiB.
inline std::string human_bytes(double b) {
  static constexpr const char* units[] = {" B", " KiB", " MiB", " GiB", " TiB"};
  std::size_t u = 0;
  while (std::abs(b) >= 1023.5 && u + 1 < std::size(units)) {
    b /= 1024;
    ++u;
  }
  return (u == 0 ? fmt::format("{:.0f}", b) : three_digits(b)) + units[u];
}

}  // namespace additive::report
