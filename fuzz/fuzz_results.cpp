// Fuzz target: the readers of a structure search's results file (results.json).
// load_search_accuracies (exp/stochastic.hpp, what `stochastic --search-results` and
// `cotrain` read) takes the file; then the same text goes, as the search's --resume
// reads it, through parse_json_limited (io/json.hpp: malformed JSON is
// nlohmann::json::parse_error, too deep is InputError) and read_run_records (with and
// without the per-image bits "correct"), and through read_report_accuracies
// (exp/results_file.hpp). Each returns or throws InputError.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "additive/exp/results_file.hpp"
#include "additive/exp/stochastic.hpp"
#include "additive/io/json.hpp"

#include "fuzz_support.hpp"

namespace {

using additive::fuzz::require;

/// The family of the seed files (fuzz/make_corpus.py): the default family, 64 structures.
constexpr std::string_view family = "mlp S=4 L=2 merge_only";
constexpr std::uint64_t structures = 64;
/// Validation images of the seed files' per-image bits ("correct": 4 hex digits).
constexpr std::size_t val_images = 16;

void check_accuracies(const std::map<std::uint64_t, double>& acc, const std::vector<std::uint64_t>& reps) {
  for (const auto& [m, a] : acc)
    require(m < structures && a >= 0 && a <= 1, "an accuracy or mask out of range");
  for (const auto m : reps) require(acc.contains(m), "a representative without an accuracy");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const additive::fuzz::ScratchDir scratch;
  const auto path = scratch.write("results.json", std::span<const std::uint8_t>(data, size));
  additive::fuzz::reads("load_search_accuracies", [&] {
    std::vector<std::uint64_t> reps;
    check_accuracies(additive::load_search_accuracies(path, std::string(family), structures, &reps), reps);
  });

  const std::string where = "results file '" + path.string() + "'";
  nlohmann::json j;
  try {
    j = additive::parse_json_limited(std::string_view(reinterpret_cast<const char*>(data), size),
                                     where);  // NOLINT: bytes as text
  } catch (const nlohmann::json::parse_error&) {
    return 0;  // the documented refusal of malformed JSON, for the caller to word
  } catch (const additive::InputError&) {
    return 0;  // nested too deep
  }
  if (!j.is_object()) return 0;
  if (j.contains("runs")) {
    // As the search reads them (its seed count; the per-image bits of its validation
    // images, here 16) and as load_search_accuracies does (any seed count, no bits).
    for (const auto& c : {std::pair<int, std::optional<std::size_t>>{2, val_images},
                          {1, std::nullopt},
                          {std::numeric_limits<int>::max(), std::nullopt}}) {
      const int seeds = c.first;  // (clang 14 cannot capture structured bindings)
      const std::optional<std::size_t> val_samples = c.second;
      additive::fuzz::accepts("read_run_records", [&] {
        for (const auto& r :
             additive::read_run_records(j.at("runs"), where, structures, seeds, val_samples)) {
          require(r.phase == "short" || r.phase == "long", "a run record of another phase");
          require(r.mask < structures && r.seed >= 0 && r.seed < seeds, "a mask or seed out of range");
          require(r.val_accuracy >= 0 && r.val_accuracy <= 1 && r.val_loss >= 0 && r.train_loss >= 0 &&
                      r.seconds >= 0,
                  "a number out of range");
          require(r.correct.size() == 0 || (val_samples && r.correct.size() == *val_samples),
                  "per-image bits of another size than the validation set");
          require(r.correct.size() == 0 || static_cast<long long>(r.correct.count()) ==
                                               std::llround(r.val_accuracy * double(*val_samples)),
                  "per-image bits that disagree with the accuracy");
        }
      });
    }
  }
  if (j.contains("report")) {
    additive::fuzz::accepts("read_report_accuracies", [&] {
      std::vector<std::uint64_t> reps;
      check_accuracies(additive::read_report_accuracies(j.at("report"), where, structures, &reps), reps);
    });
  }
  return 0;
}
