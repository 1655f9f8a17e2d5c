// Tabular text of the reports: aligned terminal tables and RFC 4180 CSV fields.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "additive/report/format.hpp"

namespace additive::report {

/// A field of RFC 4180 CSV, always quoted (embedded quotes doubled).
inline std::string csv_quoted(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + '"';
}

/// A field of RFC 4180 CSV, quoted only when it holds a comma, quote or line break.
inline std::string csv_field(std::string_view s) {
  return s.find_first_of(",\"\r\n") == std::string_view::npos ? std::string(s) : csv_quoted(s);
}

/// A number of CSV: the shortest text that reads back exactly; empty when not finite
/// (a missing value, as spreadsheet and data-frame readers take it).
inline std::string csv_number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : std::string(); }

/// A column of render_table.
struct TableColumn {
  std::string header;
  bool right = false;  ///< right-aligned (numbers) or left-aligned (text)
};

/// The header and `rows` (each one cell per column) as aligned lines: columns two spaces
/// apart, each as wide as its widest cell (in code points), no trailing spaces, "\n" ends.
inline std::string render_table(const std::vector<TableColumn>& columns,
                                const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(columns.size());
  for (std::size_t c = 0; c < columns.size(); ++c) {
    widths[c] = text_width(columns[c].header);
    for (const auto& row : rows) widths[c] = std::max(widths[c], text_width(row[c]));
  }
  auto line = [&](auto&& cell) {
    std::string s;
    for (std::size_t c = 0; c < columns.size(); ++c) {
      const std::string& text = cell(c);
      const std::string pad(widths[c] - text_width(text), ' ');
      if (c > 0) s += "  ";
      s += columns[c].right ? pad + text : text + pad;
    }
    s.erase(s.find_last_not_of(' ') + 1);
    return s + '\n';
  };
  std::string out = line([&](std::size_t c) -> const std::string& { return columns[c].header; });
  for (const auto& row : rows) out += line([&](std::size_t c) -> const std::string& { return row[c]; });
  return out;
}

}  // namespace additive::report
