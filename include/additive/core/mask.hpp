// Gate masks: an n-bit value whose bit i says whether `+` number i is active. `Mask<N>`
// is the strong type every structure is built from; it never holds bits beyond N.
#pragma once

#include <bit>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

#include "additive/core/error.hpp"

namespace additive {

/// A structure of a model with N gate sites. Bit i set means gate i is active.
template <int N>
class Mask {
  static_assert(N >= 1 && N <= 63, "Mask<N>: a model has between 1 and 63 gate sites");

 public:
  static constexpr int size = N;
  static constexpr std::uint64_t full_bits = (std::uint64_t{1} << N) - 1;
  /// Number of structures a model with N gates spans.
  static constexpr std::uint64_t count = std::uint64_t{1} << N;

  constexpr Mask() = default;

  /// Precondition: no bit at or beyond N (checked; use `parse` for user input).
  constexpr explicit Mask(std::uint64_t bits) : bits_(bits) {
    if ((bits & ~full_bits) != 0)
      throw InputError("mask has bits beyond its " + std::to_string(N) + " gates");
  }

  static constexpr Mask all() { return Mask(full_bits); }
  static constexpr Mask none() { return Mask(0); }

  [[nodiscard]] constexpr std::uint64_t bits() const noexcept { return bits_; }
  [[nodiscard]] constexpr bool operator[](int gate) const noexcept { return (bits_ >> gate) & 1U; }
  [[nodiscard]] constexpr int active() const noexcept { return std::popcount(bits_); }

  /// Bits [first, first + width) as a value, e.g. one block's gates.
  [[nodiscard]] constexpr std::uint64_t field(int first, int width) const noexcept {
    return (bits_ >> first) & ((std::uint64_t{1} << width) - 1);
  }

  friend constexpr bool operator==(Mask, Mask) = default;

  /// Parses "0x..", "0b.." or decimal. Throws InputError naming the text on any problem,
  /// including bits beyond N.
  static Mask parse(std::string_view text) {
    std::string_view digits = text;
    int base = 10;
    if (digits.starts_with("0x") || digits.starts_with("0X")) {
      base = 16;
      digits.remove_prefix(2);
    } else if (digits.starts_with("0b") || digits.starts_with("0B")) {
      base = 2;
      digits.remove_prefix(2);
    }
    std::uint64_t value = 0;
    const auto* end = digits.data() + digits.size();
    auto [ptr, ec] = std::from_chars(digits.data(), end, value, base);
    if (digits.empty() || ec != std::errc{} || ptr != end)
      throw InputError("mask '" + std::string(text) + "' is not a number (expected decimal, 0x.. or 0b..)");
    if ((value & ~full_bits) != 0)
      throw InputError("mask '" + std::string(text) + "' has bits beyond the model's " + std::to_string(N) +
                       " gates (largest valid mask is " + std::to_string(full_bits) + ")");
    return Mask(value);
  }

 private:
  std::uint64_t bits_ = 0;
};

/// Hex text of a mask, e.g. "0x6d".
template <int N>
std::string to_hex(Mask<N> m) {
  char buf[24];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, m.bits(), 16);
  (void)ec;
  return "0x" + std::string(buf, ptr);
}

}  // namespace additive
