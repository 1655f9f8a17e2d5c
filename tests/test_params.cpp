// Smoke test of the build machinery: the library target, doctest's shared main and the
// ADDITIVE_SOURCE_DIR / ADDITIVE_BINARY_DIR definitions and environment.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "additive/core/params.hpp"

TEST_CASE("ParamLayout lays two tensors end to end") {
  additive::ParamLayout layout;
  const std::size_t w = layout.add("embed.weight", {4, 3}, true);
  const std::size_t b = layout.add("embed.bias", {4}, false);

  CHECK(w == 0);
  CHECK(b == 12);
  CHECK(layout.total() == 16);
  REQUIRE(layout.tensors().size() == 2);
  CHECK(layout.find("embed.bias").offset == 12);
  CHECK(layout.find("embed.bias").size == 4);
  CHECK_FALSE(layout.find("embed.bias").decay);
  CHECK_THROWS_AS((void)layout.find("head.weight"), additive::RuntimeError);
}

TEST_CASE("tests see the source and binary directories") {
  const std::filesystem::path source{ADDITIVE_SOURCE_DIR};
  const std::filesystem::path binary{ADDITIVE_BINARY_DIR};
  CHECK(std::filesystem::exists(source / "include" / "additive" / "core" / "params.hpp"));
  CHECK(std::filesystem::exists(binary / "CMakeCache.txt"));

  const char* env_source = std::getenv("ADDITIVE_SOURCE_DIR");
  const char* env_binary = std::getenv("ADDITIVE_BINARY_DIR");
  REQUIRE(env_source != nullptr);
  REQUIRE(env_binary != nullptr);
  CHECK(std::filesystem::equivalent(env_source, source));
  CHECK(std::filesystem::equivalent(env_binary, binary));
  CHECK(std::filesystem::equivalent(std::filesystem::current_path(), binary));
}
