// Reading a structure search's results file (results.json, written by exp/search.hpp)
// back: its run records and its report's accuracies, every field checked against what
// the search could have written (types, ranges, masks within the family, finite
// numbers, one record per run), so that a resumed search or a comparison never carries
// on with garbage. Each refusal is an InputError of one line naming the file, the record
// and the field.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/core/error.hpp"
#include "additive/exp/search_types.hpp"
#include "additive/io/json.hpp"

namespace additive {

namespace detail {

/// A JSON integer >= 0 (parsed from text it is unsigned; built in code it may be signed).
inline bool is_index(const nlohmann::json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0);
}

/// Field `key` of JSON object `obj` (record `what` of file `where`): present, or InputError.
inline const nlohmann::json& results_field(const nlohmann::json& obj, const char* key,
                                           const std::string& where, const std::string& what) {
  const auto it = obj.find(key);
  if (it == obj.end()) throw InputError(fmt::format("{}: {} has no '{}'", where, what, key));
  return *it;
}

/// A mask: a JSON integer >= 0 below `structures`.
inline std::uint64_t results_mask(const nlohmann::json& v, const char* key, std::uint64_t structures,
                                  const std::string& where, const std::string& what) {
  if (!is_index(v))
    throw InputError(
        fmt::format("{}: {} has '{}' {}, expected a mask (an integer >= 0)", where, what, key, json_echo(v)));
  const auto m = v.get<std::uint64_t>();
  if (m >= structures)
    throw InputError(fmt::format("{}: {} has '{}' {}, beyond the {} structures of the family", where, what,
                                 key, m, structures));
  return m;
}

/// A finite number in [lo, hi] (NaN and Inf are written as null: refused too).
inline double results_number(const nlohmann::json& v, const char* key, double lo, double hi,
                             const std::string& where, const std::string& what) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo || v.get<double>() > hi) {
    const std::string range = hi == std::numeric_limits<double>::max() ? fmt::format(">= {}", lo)
                                                                       : fmt::format("in [{}, {}]", lo, hi);
    throw InputError(fmt::format("{}: {} has '{}' {}, expected a finite number {}", where, what, key,
                                 json_echo(v), range));
  }
  return v.get<double>();
}

}  // namespace detail

/// The run records of a results file: `runs` is its "runs" array, `where` names the file
/// in messages ("results file 'out/results.json'"), `structures` the family's 2^n and
/// `seeds` the search's seed count R. Every record is an object with phase "short" or
/// "long", a mask below `structures`, a seed index in [0, R) (0 for "long"), "epochs"
/// (optional: absent from files of earlier versions, read as 0) in [1, 10^6], validation
/// accuracy finite in [0, 1], losses finite and >= 0, seconds (optional) finite and >= 0,
/// "correct" (optional) the hex of `val_samples` per-image bits that count exactly
/// val_accuracy * val_samples right images (without `val_samples`, a string, not kept); the
/// same run twice is refused unless both records are equal. InputError otherwise.
inline std::vector<RunRecord> read_run_records(const nlohmann::json& runs, const std::string& where,
                                               std::uint64_t structures, int seeds,
                                               std::optional<std::size_t> val_samples) {
  if (!runs.is_array()) throw InputError(fmt::format("{}: 'runs' is not a list of run records", where));
  constexpr double any = std::numeric_limits<double>::max();
  std::vector<RunRecord> out;
  std::map<std::tuple<std::string, std::uint64_t, int, std::int64_t>, std::size_t> seen;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    const std::string what = fmt::format("run record {}", i + 1);
    if (!r.is_object()) throw InputError(fmt::format("{}: {} is not a JSON object", where, what));
    auto field = [&](const char* key) -> const nlohmann::json& {
      return detail::results_field(r, key, where, what);
    };
    RunRecord rec;
    const auto& phase = field("phase");
    if (!phase.is_string() || (phase != "short" && phase != "long"))
      throw InputError(fmt::format("{}: {} has 'phase' {}, expected \"short\" or \"long\"", where, what,
                                   json_echo(phase)));
    rec.phase = phase.get<std::string>();
    rec.mask = detail::results_mask(field("mask"), "mask", structures, where, what);
    const auto& seed = field("seed");
    const int limit = rec.phase == "long" ? 1 : seeds;
    if (!detail::is_index(seed) || seed.get<std::uint64_t>() >= static_cast<std::uint64_t>(limit))
      throw InputError(fmt::format("{}: {} has 'seed' {}, expected a seed index in [0, {})", where, what,
                                   json_echo(seed), limit));
    rec.seed = static_cast<int>(seed.get<std::uint64_t>());
    if (r.contains("epochs")) {  // absent in files of earlier versions: 0, not known
      const auto& e = r.at("epochs");
      if (!detail::is_index(e) || e.get<std::uint64_t>() < 1 || e.get<std::uint64_t>() > 1000000)
        throw InputError(fmt::format("{}: {} has 'epochs' {}, expected an integer in [1, 1000000]", where,
                                     what, json_echo(e)));
      rec.epochs = static_cast<std::int64_t>(e.get<std::uint64_t>());
    }
    rec.val_accuracy = detail::results_number(field("val_accuracy"), "val_accuracy", 0, 1, where, what);
    rec.val_loss = detail::results_number(field("val_loss"), "val_loss", 0, any, where, what);
    rec.train_loss = detail::results_number(field("train_loss"), "train_loss", 0, any, where, what);
    rec.seconds =
        r.contains("seconds") ? detail::results_number(r.at("seconds"), "seconds", 0, any, where, what) : 0.0;
    if (r.contains("correct")) {
      const auto& hex = r.at("correct");
      if (!hex.is_string())
        throw InputError(
            fmt::format("{}: {} has 'correct' {}, expected a hex string", where, what, json_echo(hex)));
      if (val_samples) {
        const std::size_t n = *val_samples;
        try {
          rec.correct = stats::CorrectBits::from_hex(hex.get_ref<const std::string&>(), n);
        } catch (const InputError& e) {
          throw InputError(fmt::format("{}: {} has a 'correct' that does not fit {} validation images ({})",
                                       where, what, n, e.what()));
        }
        if (rec.correct.count() != std::llround(rec.val_accuracy * double(n)))
          throw InputError(
              fmt::format("{}: {} has 'correct' bits for {} right images, but val_accuracy {} of {}", where,
                          what, rec.correct.count(), rec.val_accuracy, n));
      }
    }
    const auto [it, fresh] = seen.emplace(std::tuple{rec.phase, rec.mask, rec.seed, rec.epochs}, out.size());
    if (!fresh) {
      const RunRecord& first = out[it->second];
      if (std::tie(first.val_accuracy, first.val_loss, first.train_loss, first.seconds) !=
              std::tie(rec.val_accuracy, rec.val_loss, rec.train_loss, rec.seconds) ||
          first.correct.words() != rec.correct.words())
        throw InputError(
            fmt::format("{}: run records {} and {} are both {} mask {} seed {}{}, with different values",
                        where, it->second + 1, i + 1, rec.phase, rec.mask, rec.seed,
                        rec.epochs > 0 ? fmt::format(" epochs {}", rec.epochs) : std::string()));
      continue;
    }
    out.push_back(rec);
  }
  return out;
}

/// The accuracies of a results file's report: each entry's "mask" and its "equivalent"
/// masks (below `structures`) mapped to its "acc_mean" (finite, in [0, 1]); a mask given
/// two different accuracies is refused. `representatives` receives the entries' masks.
inline std::map<std::uint64_t, double> read_report_accuracies(const nlohmann::json& report,
                                                              const std::string& where,
                                                              std::uint64_t structures,
                                                              std::vector<std::uint64_t>* representatives) {
  if (!report.is_object() || !report.contains("entries") || !report.at("entries").is_array())
    throw InputError(fmt::format("{}: 'report' has no list of 'entries'", where));
  const auto& entries = report.at("entries");
  std::map<std::uint64_t, double> acc;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    const std::string what = fmt::format("report entry {}", i + 1);
    if (!e.is_object()) throw InputError(fmt::format("{}: {} is not a JSON object", where, what));
    const auto mask =
        detail::results_mask(detail::results_field(e, "mask", where, what), "mask", structures, where, what);
    const double a = detail::results_number(detail::results_field(e, "acc_mean", where, what), "acc_mean", 0,
                                            1, where, what);
    auto put = [&](std::uint64_t m) {
      const auto [it, fresh] = acc.emplace(m, a);
      if (!fresh && it->second != a)
        throw InputError(fmt::format("{}: {} gives mask {} accuracy {}, an earlier entry {}", where, what, m,
                                     a, it->second));
    };
    put(mask);
    const auto& equivalent = detail::results_field(e, "equivalent", where, what);
    if (!equivalent.is_array())
      throw InputError(fmt::format("{}: {} has 'equivalent' {}, expected a list of masks", where, what,
                                   json_echo(equivalent)));
    for (const auto& q : equivalent) put(detail::results_mask(q, "equivalent", structures, where, what));
    if (representatives != nullptr) representatives->push_back(mask);
  }
  return acc;
}

}  // namespace additive
