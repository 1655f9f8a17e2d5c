// Flag validators shared by the example drivers: one clear line per bad value (CLI11's
// own range checks print the whole range of the type), and paths checked before work starts.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include <CLI/CLI.hpp>

namespace additive::flags {

inline constexpr std::int64_t big = std::int64_t{1} << 40;

/// A numeric flag in [lo, hi].
template <class T>
CLI::Validator within(T lo, T hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        T value{};
        if (!CLI::detail::lexical_cast(text, value)) return fmt::format("'{}' is not a number", text);
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

/// Parses argv; returns -1 to go on, or the exit code (0 for --help, 2 for a bad flag).
inline int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s (see --help)\n", e.what());
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

/// --d, --h: the widths of a model of `shards` shards (h must split into them).
inline void add_width_options(CLI::App& app, std::int64_t& d, std::int64_t& h, int shards) {
  app.add_option("--d", d, "model width")->capture_default_str()->check(within<std::int64_t>(1, 65536));
  app.add_option("--h", h, fmt::format("hidden width, a multiple of the {} shards", shards))
      ->capture_default_str()
      ->check(within<std::int64_t>(shards, 1 << 20))
      ->check(multiple_of(shards));
}

}  // namespace additive::flags
