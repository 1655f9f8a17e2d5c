// JSON from files we do not trust (safetensors headers, checkpoint metadata, search
// results, top-K lists): parsed with a depth limit, so that no input can make a later
// recursive walk (comparison, dump, destruction) overflow the stack, and echoed into
// error messages short, on one line, without recursion: never `dump()` a value read from
// a file into a message.
#pragma once

#include <cstddef>
#include <istream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"

namespace additive {

/// Deepest nesting of arrays and objects accepted in a file's JSON. Every file this
/// library writes nests at most 4 levels.
inline constexpr int json_max_depth = 64;

/// Longest echo of untrusted text or JSON in an error message, in bytes.
inline constexpr std::size_t echo_limit = 60;

namespace detail {

/// Text from a file made safe for a one-line message: control bytes as \xNN, and at most
/// `limit` bytes of it ("..." when cut; a cut never splits a UTF-8 sequence).
inline std::string printable(std::string_view s, std::size_t limit = 200) {
  bool cut = false;
  if (s.size() > limit) {
    std::size_t n = limit;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // a continuation byte
    s = s.substr(0, n);
    cut = true;
  }
  std::string out;
  out.reserve(s.size() + 3);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  if (cut) out += "...";
  return out;
}

inline void json_echo_into(const nlohmann::json& v, std::string& out, std::size_t limit) {
  // Each level writes at least one character before it descends, so the recursion is
  // never deeper than `limit`, whatever the nesting of `v`.
  if (out.size() > limit) return;
  switch (v.type()) {
    case nlohmann::json::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end() && out.size() <= limit; ++it) {
        if (!first) out += ", ";
        first = false;
        out += '"' + printable(it.key(), limit) + "\": ";
        json_echo_into(it.value(), out, limit);
      }
      out += '}';
      return;
    }
    case nlohmann::json::value_t::array: {
      out += '[';
      bool first = true;
      for (auto it = v.begin(); it != v.end() && out.size() <= limit; ++it) {
        if (!first) out += ", ";
        first = false;
        json_echo_into(*it, out, limit);
      }
      out += ']';
      return;
    }
    case nlohmann::json::value_t::string:
      out += '"' + printable(v.get_ref<const std::string&>(), limit) + '"';
      return;
    case nlohmann::json::value_t::binary:
      out += "<binary>";
      return;
    default:  // null, boolean, numbers: dump() does not recurse
      out += v.dump();
      return;
  }
}

}  // namespace detail

/// `v` as compact JSON for an error message: at most about `limit` characters ("..."
/// when cut), control characters escaped, so it stays on one line and short whatever `v`
/// holds; it never recurses deeper than `limit`.
inline std::string json_echo(const nlohmann::json& v, std::size_t limit = echo_limit) {
  std::string out;
  detail::json_echo_into(v, out, limit);
  if (out.size() > limit) {
    std::size_t n = limit;
    while (n > 0 && (static_cast<unsigned char>(out[n]) & 0xC0) == 0x80) --n;
    out.resize(n);
    out += "...";
  }
  return out;
}

namespace detail {

/// The callback that refuses nesting deeper than `max_depth`, then defers to `also`.
inline nlohmann::json::parser_callback_t depth_guard(const std::string& where, int max_depth,
                                                     const nlohmann::json::parser_callback_t& also) {
  return [where, max_depth, also](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    // `depth` counts the containers around this one.
    if ((event == Event::object_start || event == Event::array_start) && depth >= max_depth)
      throw InputError(where + " nests JSON arrays and objects more than " + std::to_string(max_depth) +
                       " levels deep");
    return also ? also(depth, event, parsed) : true;
  };
}

/// Runs `parse` (an nlohmann::json::parse), turning its out_of_range (a number literal
/// beyond the range of a double, such as 1e999: nlohmann throws out_of_range.406, not
/// parse_error) into an InputError naming `where`. Found by fuzz/fuzz_results.cpp.
template <class Parse>
nlohmann::json parse_json_numbers_in_range(const std::string& where, Parse&& parse) {
  try {
    return parse();
  } catch (const nlohmann::json::out_of_range& e) {
    std::string_view what = e.what();  // "... number overflow parsing '<token>'"
    const auto open = what.find('\'');
    what = open == std::string_view::npos ? what : what.substr(open + 1);
    if (!what.empty() && what.back() == '\'') what.remove_suffix(1);
    throw InputError(where + " holds a number beyond the range of a double (" + printable(what, echo_limit) +
                     ")");
  }
}

}  // namespace detail

/// Parses `text` as JSON nested at most `max_depth` levels. Deeper nesting is an
/// InputError "<where> nests JSON arrays and objects more than 64 levels deep" (`where`
/// names the input: "results file 'r.json'"), and so is a number beyond the range of a
/// double, "<where> holds a number beyond the range of a double (1e999)"; malformed JSON
/// throws nlohmann::json::parse_error as nlohmann::json::parse does, for the caller to
/// word. `also`, if set, is called for every parse event as nlohmann's parser callback.
inline nlohmann::json parse_json_limited(std::string_view text, const std::string& where,
                                         const nlohmann::json::parser_callback_t& also = nullptr,
                                         int max_depth = json_max_depth) {
  return detail::parse_json_numbers_in_range(where, [&] {
    return nlohmann::json::parse(text.begin(), text.end(), detail::depth_guard(where, max_depth, also));
  });
}

/// The same, reading a stream to its end.
inline nlohmann::json parse_json_limited(std::istream& in, const std::string& where,
                                         const nlohmann::json::parser_callback_t& also = nullptr,
                                         int max_depth = json_max_depth) {
  return detail::parse_json_numbers_in_range(
      where, [&] { return nlohmann::json::parse(in, detail::depth_guard(where, max_depth, also)); });
}

}  // namespace additive
