// Flag validators shared by the example drivers: one clear line per bad value (CLI11's
// own range checks print the whole range of the type), and paths checked before work starts.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>

#include "additive/core/error.hpp"
#include "additive/data/dataset.hpp"
#include "additive/data/idx.hpp"
#include "additive/exp/results_file.hpp"
#include "additive/io/json.hpp"
#include "additive/nn/mlp.hpp"

namespace additive::flags {

inline constexpr std::int64_t big = std::int64_t{1} << 40;

/// A numeric flag in [lo, hi]. An integer beyond its type (a seed of 2^64) is outside,
/// never clamped to the type's largest value.
template <class T>
CLI::Validator within(T lo, T hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        T value{};
        if (!CLI::detail::lexical_cast(text, value)) return fmt::format("'{}' is not a number", text);
        if constexpr (std::is_integral_v<T>) {
          // Conversions saturate at the type's limits: a limit is taken only if it is what was written.
          if (value == std::numeric_limits<T>::max() || value == std::numeric_limits<T>::min()) {
            T exact{};
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), exact);
            if (ec == std::errc::result_out_of_range && end == text.data() + text.size())
              return fmt::format("{} is outside [{}, {}]", text, lo, hi);
          }
        }
        if (!(value >= lo && value <= hi)) return fmt::format("{} is outside [{}, {}]", text, lo, hi);
        return {};
      },
      fmt::format("in [{}, {}]", lo, hi));
}

/// A whole multiple of `n` (hidden widths must split into the shards).
inline CLI::Validator multiple_of(int n) {
  return CLI::Validator(
      [n](std::string& text) -> std::string {
        long long value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return fmt::format("'{}' is not a number", text);
        return value % n == 0 ? "" : fmt::format("{} is not a multiple of the {} shards", text, n);
      },
      fmt::format("multiple of {}", n));
}

/// A path we will read that must not be empty: `--resume ""` (an unset shell variable)
/// is an error, never a fresh start over an existing checkpoint.
inline CLI::Validator non_empty_path() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return text.empty() ? std::string("the path is empty (an unset variable?)") : std::string();
      },
      "PATH");
}

/// An output directory: it exists and is a writable directory, or it can be created (its
/// nearest existing ancestor is a writable directory). Checked before any work starts, so
/// that a run does not fail only when it writes its results; nothing is created here.
inline CLI::Validator writable_dir() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (text.empty()) return "the path is empty (an unset variable?)";
        std::error_code ec;
        const std::filesystem::path p = std::filesystem::absolute(text, ec);
        if (ec) return fmt::format("'{}': {}", text, ec.message());
        if (std::filesystem::exists(p, ec)) {
          if (!std::filesystem::is_directory(p, ec))
            return fmt::format("'{}' exists and is not a directory", text);
          if (::access(p.c_str(), W_OK | X_OK) != 0)
            return fmt::format("directory '{}' is not writable ({})", text, std::strerror(errno));
          return {};
        }
        std::filesystem::path q = p.parent_path();
        while (!std::filesystem::exists(q, ec) && q.has_parent_path() && q != q.parent_path())
          q = q.parent_path();
        if (!std::filesystem::is_directory(q, ec))
          return fmt::format("cannot create directory '{}': '{}' is not a directory", text, q.string());
        if (::access(q.c_str(), W_OK | X_OK) != 0)
          return fmt::format("cannot create directory '{}': '{}' is not writable ({})", text, q.string(),
                             std::strerror(errno));
        return {};
      },
      "DIR");
}

/// This machine's physical memory in bytes (0 when unknown).
inline std::uint64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) : 0;
}

/// Refuses, before anything is allocated, widths whose model cannot fit in this machine's
/// memory: `copies` copies of its parameters (each concurrent run keeps its parameters,
/// gradients and optimizer moments) of `scalar_bytes` bytes each.
inline void check_model_fits(const MlpConfig& model, int blocks, std::size_t scalar_bytes,
                             std::uint64_t copies) {
  const double params = static_cast<double>(mlp_layout(model, blocks).total());
  const double need = params * static_cast<double>(scalar_bytes) * static_cast<double>(copies);
  const auto have = physical_memory();
  if (have > 0 && need > static_cast<double>(have))
    throw InputError(
        fmt::format("--d {} --h {}: {:.4g} parameters, {} copies of them need {:.3g} GB, more than this "
                    "machine's {:.3g} GB",
                    model.d, model.h, params, copies, need / 1e9, static_cast<double>(have) / 1e9));
}

/// A path we will write: its directory must exist now, not only when the first write fails.
inline CLI::Validator writable_path() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const std::filesystem::path p(text);
        const auto dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec))
          return fmt::format("directory '{}' does not exist", dir.string());
        if (std::filesystem::is_directory(p, ec)) return fmt::format("'{}' is a directory", text);
        return {};
      },
      "PATH");
}

/// Prints "error: <what><tail>" as one line: control characters of the input it echoes (a
/// path or a mask with a newline in it) escaped.
inline void print_error(const char* what, const char* tail = "") {
  std::fprintf(stderr, "error: %s%s\n", additive::detail::printable(what, 4096).c_str(), tail);
}

/// Parses argv; returns -1 to go on, or the exit code (0 for --help, 2 for a bad flag).
inline int parse(CLI::App& app, int argc, char** argv) {
  // `--resume=` (`--resume=$UNSET`): an empty value, refused for every flag.
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg(argv[i]);
    if (arg.size() > 3 && arg.starts_with("--") && arg.find('=') == arg.size() - 1) {
      print_error(
          (std::string(arg.substr(0, arg.size() - 1)) + ": an empty value (an unset variable?)").c_str(),
          " (see --help)");
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ExtrasError& e) {
    // An empty word where none was expected is almost always an unset shell variable:
    // `search --resume "$RESULTS"`. Say so, naming the word before it.
    for (int i = 1; i < argc; ++i)
      if (argv[i][0] == '\0') {
        const std::string before = i > 1 ? argv[i - 1] : argv[0];
        print_error(("an empty argument after '" + before + "' (an unset variable?)").c_str(),
                    " (see --help)");
        return 2;
      }
    print_error(e.what(), " (see --help)");
    return 2;
  } catch (const CLI::ParseError& e) {
    print_error(e.what(), " (see --help)");
    return 2;
  }
  return -1;
}

/// --epochs, --lr, --batch: the training budget shared by the experiment drivers.
inline void add_budget_options(CLI::App& app, std::int64_t& epochs, double& lr, std::int64_t& batch,
                               const std::string& epochs_help = "epochs",
                               const std::string& batch_help = "batch size") {
  app.add_option("--epochs", epochs, epochs_help)
      ->capture_default_str()
      ->check(within<std::int64_t>(1, 1000000));
  app.add_option("--lr", lr, "peak learning rate")->capture_default_str()->check(within(1e-12, 1e3));
  app.add_option("--batch", batch, batch_help)
      ->capture_default_str()
      ->check(within<std::int64_t>(1, 1000000));
}

/// --seed: what it seeds is the driver's to say.
inline void add_seed_option(CLI::App& app, std::int64_t& seed, const std::string& help) {
  app.add_option("--seed", seed, help)
      ->capture_default_str()
      ->check(within<std::int64_t>(0, std::numeric_limits<std::int64_t>::max()));
}

/// --data, --val, --limit: the IDX set and the validation split carved from its training set.
inline void add_data_options(CLI::App& app, std::string& data, std::int64_t& val, std::int64_t& limit) {
  app.add_option("--data", data, "directory of IDX files")->capture_default_str();
  app.add_option("--val", val, "validation samples carved from the training set")
      ->capture_default_str()
      ->check(within<std::int64_t>(1, big));
  app.add_option("--limit", limit, "training samples used (0: all)")
      ->capture_default_str()
      ->check(within<std::int64_t>(0, big));
}

/// --comm-timeout: how long a rank waits in one collective (an all-reduce, a broadcast,
/// a barrier) for the others before the job ends with a line naming the late ranks.
inline void add_comm_timeout_option(CLI::App& app, double& seconds) {
  app.add_option("--comm-timeout", seconds,
                 "seconds a rank (MPI process or thread) waits in one collective for the others before "
                 "the job ends naming the late ranks (0: for ever)")
      ->capture_default_str()
      ->check(within(0.0, 1e6));
}

/// The --comm-timeout value as a duration: 0 (no deadline) stays 0 for MPI; thread groups
/// need a positive one and get a year.
inline std::chrono::milliseconds comm_timeout(double seconds, bool threads) {
  if (seconds <= 0) return threads ? std::chrono::hours(24 * 365) : std::chrono::milliseconds(0);
  return std::chrono::milliseconds(std::max<std::int64_t>(1, std::llround(seconds * 1000.0)));
}

/// --d, --h: the widths of a model of `shards` shards (h must split into them).
inline void add_width_options(CLI::App& app, std::int64_t& d, std::int64_t& h, int shards) {
  app.add_option("--d", d, "model width")->capture_default_str()->check(within<std::int64_t>(1, 65536));
  app.add_option("--h", h, fmt::format("hidden width, a multiple of the {} shards", shards))
      ->capture_default_str()
      ->check(within<std::int64_t>(shards, 1 << 20))
      ->check(multiple_of(shards));
}

/// A JSON file, depth-limited (io/json.hpp); InputError naming `what` and the path when it
/// is missing, not a regular file, or not JSON.
inline nlohmann::json read_json_file(const std::filesystem::path& path, const char* what) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    throw InputError(fmt::format("{} '{}' is not a regular file", what, path.string()));
  std::ifstream in(path);
  if (!in) throw InputError(fmt::format("cannot open {} '{}'", what, path.string()));
  try {
    return parse_json_limited(in, fmt::format("{} '{}'", what, path.string()));
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("{} '{}' is not valid JSON", what, path.string()));
  }
}

/// A comma-separated list of masks ("0x3f,0x12,7") of a family with `gates` gates;
/// InputError naming `flag` and the item otherwise.
inline std::vector<std::uint64_t> parse_masks(const std::string& s, int gates, const char* flag = "--masks") {
  const std::uint64_t limit = std::uint64_t{1} << gates;
  std::vector<std::uint64_t> masks;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const auto comma = std::min(s.find(',', pos), s.size());
    const std::string item = s.substr(pos, comma - pos);
    std::size_t used = 0;
    std::uint64_t m = 0;
    try {
      m = std::stoull(item, &used, 0);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || item.front() == '-')
      throw InputError(fmt::format("{}: '{}' is not a mask (e.g. 0x3f)", flag, detail::printable(item, 40)));
    if (m >= limit)
      throw InputError(fmt::format("{}: {} has bits beyond the {} gates of the family", flag, item, gates));
    masks.push_back(m);
    pos = comma + 1;
  }
  return masks;
}

/// One structure of a search's topk.json.
struct TopkEntry {
  std::uint64_t mask = 0;
  std::optional<double> val_accuracy;  ///< when the file gives one
};

/// The structures of a search's topk.json (exp/report.hpp: topk_json) for the family
/// named `family` (its describe(); `flag_family` is how the driver's flag named it), of
/// `gates` gates; InputError naming the file and the field otherwise, or when it lists none.
inline std::vector<TopkEntry> read_topk(const std::filesystem::path& path, const std::string& family,
                                        const std::string& flag_family, int gates) {
  const std::uint64_t limit = std::uint64_t{1} << gates;
  const auto j = read_json_file(path, "topk file");
  std::vector<TopkEntry> out;
  try {
    const auto there = j.at("family").get<std::string>();
    if (there != family)
      throw InputError(fmt::format("topk file '{}' is for family {}, --family {} is {}", path.string(),
                                   detail::printable(there, echo_limit), flag_family, family));
    if (!j.at("structures").is_array())
      throw InputError(fmt::format("topk file '{}': 'structures' is not a list", path.string()));
    for (std::size_t i = 0; i < j.at("structures").size(); ++i) {
      const auto& e = j.at("structures")[i];
      const auto& mask = e.at("mask");
      if (!detail::is_index(mask))
        throw InputError(fmt::format("topk file '{}': structure {} has 'mask' {}, expected an integer >= 0",
                                     path.string(), i + 1, json_echo(mask)));
      const auto m = mask.get<std::uint64_t>();
      if (m >= limit)
        throw InputError(fmt::format("topk file '{}': mask {:#x} is not of the family", path.string(), m));
      TopkEntry entry{m, std::nullopt};
      if (e.contains("val_accuracy") && e.at("val_accuracy").is_number()) {
        const double a = e.at("val_accuracy").get<double>();
        if (!(a >= 0 && a <= 1))
          throw InputError(
              fmt::format("topk file '{}': structure {} has 'val_accuracy' {}, expected a number in [0, 1]",
                          path.string(), i + 1, json_echo(e.at("val_accuracy"))));
        entry.val_accuracy = a;
      }
      out.push_back(entry);
    }
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("topk file '{}' lacks 'family' or 'structures' with masks", path.string()));
  }
  if (out.empty()) throw InputError(fmt::format("topk file '{}' lists no structures", path.string()));
  return out;
}

/// The IDX images of `split` ("train" or "test") in directory `dir`, checked to have
/// `in_dim` pixels (the models take 28x28); InputError naming `dir` otherwise.
inline ImageDataset load_images(const std::string& dir, const char* split, std::int64_t in_dim) {
  ImageDataset set = load_idx_dataset(dir, split);
  if (set.input_dim() != in_dim)
    throw InputError(fmt::format("{}: images are {}x{}, the model expects 28x28", dir, set.rows, set.cols));
  return set;
}

/// --val and --limit applied to the training images `set`: the training view (the images
/// outside the seeded validation split, the first `limit` of them, 0: all) and the
/// validation view of `val` images. `set` must outlive both views.
inline std::pair<DatasetView, DatasetView> train_val_views(const ImageDataset& set, std::int64_t val,
                                                           std::int64_t limit, std::uint64_t seed) {
  if (val < 1 || val >= set.count)
    throw InputError(fmt::format("--val {} must be in [1, {})", val, set.count));
  auto [train_idx, val_idx] = split_validation(set, val, seed);
  DatasetView train = subset(set, std::move(train_idx));
  if (limit > 0) train = additive::limit(train, limit);
  return {train, subset(set, std::move(val_idx))};
}

}  // namespace additive::flags
