// The families the drivers ship, by the name a user types (`--family NAME`), in one list:
// every driver and the CUDA runner pick the family through with_family, so a new family
// is added here once and every driver offers it.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <type_traits>

#include "additive/core/error.hpp"
#include "additive/nn/mlp.hpp"

namespace additive {

/// One shipped family: its flag name, the family type (through a tag) and a line of help.
template <class F>
struct FamilyTag {
  using type = F;
};

/// The shipped families, the first being the default.
namespace shipped {
/// S = 4, L = 2, merge gates only: 64 structures, all distinct (the main job's family).
using DefaultMlp = MlpFamily<4, 2, GateLayout::merge_only>;
/// S = 4, L = 2, merge and residual branch gates: 256 masks, 81 distinct functions.
using BranchMlp = MlpFamily<4, 2>;
/// The degenerate family without the final norm, whose last merge gates cancel out.
using NoFinalNormMlp = MlpFamily<4, 2, GateLayout::merge_only, FinalNorm::none>;
}  // namespace shipped

struct ShippedFamily {
  std::string_view name;
  std::string_view help;
};

inline constexpr std::array<ShippedFamily, 3> shipped_families{{
    {"default", "S=4 L=2 merge gates (64 structures)"},
    {"branch", "merge and residual gates (256 masks, 81 functions)"},
    {"no-final-norm", "the degenerate family whose last merge gates cancel out"},
}};

/// The names of shipped_families, in order (for a flag's list of choices).
inline std::vector<std::string> shipped_family_names() {
  std::vector<std::string> names;
  for (const auto& f : shipped_families) names.emplace_back(f.name);
  return names;
}

/// "default: ...; branch: ...; ...": the help text of a --family flag.
inline std::string shipped_family_help() {
  std::string out;
  for (const auto& f : shipped_families) {
    if (!out.empty()) out += "; ";
    out += std::string(f.name) + ": " + std::string(f.help);
  }
  return out;
}

/// Calls fn(FamilyTag<F>{}) with the family named `name` and returns what it returns;
/// every branch must return the same type. An unknown name is an InputError.
template <class Fn>
decltype(auto) with_family(std::string_view name, Fn&& fn) {
  if (name == "default") return fn(FamilyTag<shipped::DefaultMlp>{});
  if (name == "branch") return fn(FamilyTag<shipped::BranchMlp>{});
  if (name == "no-final-norm") return fn(FamilyTag<shipped::NoFinalNormMlp>{});
  throw InputError("unknown family '" + std::string(name) + "' (expected " + [] {
    std::string list;
    for (const auto& f : shipped_families) list += (list.empty() ? "" : ", ") + std::string(f.name);
    return list;
  }() + ")");
}

}  // namespace additive
