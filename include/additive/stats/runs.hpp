// What the statistics read from a search: for every structure and every seed, the
// validation accuracy and loss of its run, and (from now on) which validation images the
// run classified correctly, one bit per image. The structures of one seed share initial
// weights, data order and the validation images, so comparisons between them are paired
// (docs/statistics.md).
#pragma once

#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "additive/core/error.hpp"

namespace additive::stats {

/// Which of `size()` validation images a run classified correctly: bit i set means image
/// i (in the order of the validation split) was right. Stored 64 images to a word, image i
/// in bit (i % 64) of word i / 64; bits at or beyond size() are always zero.
class CorrectBits {
 public:
  CorrectBits() = default;

  /// `size` images, all wrong.
  explicit CorrectBits(std::size_t size) : size_(size), words_((size + 63) / 64, 0) {}

  /// From per-image flags (non-zero: correct).
  template <class T>
  static CorrectBits from_flags(std::span<const T> flags) {
    CorrectBits b(flags.size());
    for (std::size_t i = 0; i < flags.size(); ++i)
      if (flags[i]) b.set(i, true);
    return b;
  }

  /// From the packed words of `size` images (the layout above). InputError when the
  /// number of words is not ceil(size / 64) or a bit beyond `size` is set.
  static CorrectBits from_words(std::vector<std::uint64_t> words, std::size_t size) {
    if (words.size() != (size + 63) / 64)
      throw InputError(fmt::format("per-image correctness: {} words for {} images (expected {})",
                                   words.size(), size, (size + 63) / 64));
    if (size % 64 != 0 && (words.back() >> (size % 64)) != 0)
      throw InputError(fmt::format("per-image correctness: bits set beyond image {}", size));
    CorrectBits b;
    b.size_ = size;
    b.words_ = std::move(words);
    return b;
  }

  /// Hex text: character k holds images 4k .. 4k+3, image 4k+j in bit j (value 2^j) of the
  /// hex digit; ceil(size / 4) lower-case digits. 5,000 images are 1,250 characters.
  [[nodiscard]] std::string to_hex() const {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s((size_ + 3) / 4, '0');
    for (std::size_t k = 0; k < s.size(); ++k) s[k] = digits[(words_[k / 16] >> (4 * (k % 16))) & 15];
    return s;
  }

  /// The inverse of to_hex(); InputError on a wrong length, a character that is not a hex
  /// digit, or a bit beyond `size`.
  static CorrectBits from_hex(std::string_view hex, std::size_t size) {
    if (hex.size() != (size + 3) / 4)
      throw InputError(fmt::format("per-image correctness: {} hex digits for {} images (expected {})",
                                   hex.size(), size, (size + 3) / 4));
    CorrectBits b(size);
    for (std::size_t k = 0; k < hex.size(); ++k) {
      const char c = hex[k];
      int digit = 0;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        digit = c - 'A' + 10;
      } else {
        throw InputError(fmt::format("per-image correctness: character {} is not a hex digit", k));
      }
      const auto v = static_cast<std::uint64_t>(digit);
      if (4 * k + 4 > size && (v >> (size - 4 * k)) != 0)
        throw InputError(fmt::format("per-image correctness: bits set beyond image {}", size));
      b.words_[k / 16] |= v << (4 * (k % 16));
    }
    return b;
  }

  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] const std::vector<std::uint64_t>& words() const { return words_; }

  [[nodiscard]] bool get(std::size_t i) const { return (words_[i / 64] >> (i % 64)) & 1U; }
  void set(std::size_t i, bool correct) {
    const std::uint64_t bit = std::uint64_t{1} << (i % 64);
    words_[i / 64] = correct ? (words_[i / 64] | bit) : (words_[i / 64] & ~bit);
  }

  /// Images right.
  [[nodiscard]] std::int64_t count() const {
    std::int64_t n = 0;
    for (const auto w : words_) n += std::popcount(w);
    return n;
  }

  /// count() / size(); NaN for no images.
  [[nodiscard]] double accuracy() const {
    return size_ > 0 ? double(count()) / double(size_) : std::numeric_limits<double>::quiet_NaN();
  }

  friend bool operator==(const CorrectBits&, const CorrectBits&) = default;

 private:
  std::size_t size_ = 0;
  std::vector<std::uint64_t> words_;
};

/// Images right in `a` and wrong in `b`: one of the two discordant counts of McNemar's test.
inline std::int64_t right_only_in_first(const CorrectBits& a, const CorrectBits& b) {
  if (a.size() != b.size())
    throw InputError(
        fmt::format("per-image correctness of {} and {} images cannot be paired", a.size(), b.size()));
  std::int64_t n = 0;
  for (std::size_t w = 0; w < a.words().size(); ++w) n += std::popcount(a.words()[w] & ~b.words()[w]);
  return n;
}

/// One training run as the statistics see it.
struct Run {
  double accuracy = std::numeric_limits<double>::quiet_NaN();  ///< validation accuracy in [0, 1]
  double loss = std::numeric_limits<double>::quiet_NaN();      ///< validation loss (NaN: not recorded)
  std::optional<CorrectBits> correct;                          ///< per-image correctness, when recorded
};

/// The runs of a search: structure s (0 .. structures()-1, with its mask) trained with seed
/// r (0 .. seeds()-1). Every cell must be filled before the statistics read the table;
/// validate() says which is not.
class RunTable {
 public:
  /// `masks`: one per structure, distinct; `seeds` >= 1.
  RunTable(std::vector<std::uint64_t> masks, int seeds) : masks_(std::move(masks)), seeds_(seeds) {
    if (masks_.empty()) throw InputError("run table: no structures");
    if (seeds_ < 1) throw InputError(fmt::format("run table: seeds must be >= 1, got {}", seeds_));
    for (std::size_t i = 0; i < masks_.size(); ++i)
      for (std::size_t j = i + 1; j < masks_.size(); ++j)
        if (masks_[i] == masks_[j])
          throw InputError(fmt::format("run table: mask {:#x} appears twice", masks_[i]));
    runs_.resize(masks_.size() * std::size_t(seeds_));
  }

  [[nodiscard]] std::size_t structures() const { return masks_.size(); }
  [[nodiscard]] int seeds() const { return seeds_; }
  [[nodiscard]] const std::vector<std::uint64_t>& masks() const { return masks_; }

  /// The index of `mask`; InputError when the table has no such structure.
  [[nodiscard]] std::size_t index_of(std::uint64_t mask) const {
    for (std::size_t i = 0; i < masks_.size(); ++i)
      if (masks_[i] == mask) return i;
    throw InputError(fmt::format("run table: no structure {:#x}", mask));
  }

  [[nodiscard]] Run& at(std::size_t s, int r) { return runs_.at(cell(s, r)); }
  [[nodiscard]] const Run& at(std::size_t s, int r) const { return runs_.at(cell(s, r)); }

  /// Records a run from its accuracy (and loss).
  void set(std::size_t s, int r, double accuracy, double loss = std::numeric_limits<double>::quiet_NaN()) {
    at(s, r) = Run{accuracy, loss, std::nullopt};
  }

  /// Records a run from its per-image correctness; the accuracy is correct.accuracy().
  void set(std::size_t s, int r, CorrectBits correct,
           double loss = std::numeric_limits<double>::quiet_NaN()) {
    const double acc = correct.accuracy();
    at(s, r) = Run{acc, loss, std::move(correct)};
  }

  /// True when every run carries its per-image correctness.
  [[nodiscard]] bool has_correct() const {
    for (const auto& run : runs_)
      if (!run.correct) return false;
    return true;
  }

  /// True when every run carries its loss.
  [[nodiscard]] bool has_loss() const {
    for (const auto& run : runs_)
      if (std::isnan(run.loss)) return false;
    return true;
  }

  /// The accuracies of seed r, one per structure.
  [[nodiscard]] std::vector<double> accuracy_of_seed(int r) const {
    std::vector<double> v(structures());
    for (std::size_t s = 0; s < structures(); ++s) v[s] = at(s, r).accuracy;
    return v;
  }

  /// Each structure's mean accuracy over the seeds.
  [[nodiscard]] std::vector<double> mean_accuracy() const {
    return mean_over_seeds([](const Run& run) { return run.accuracy; });
  }

  /// Each structure's mean loss over the seeds (NaN where a loss is missing).
  [[nodiscard]] std::vector<double> mean_loss() const {
    return mean_over_seeds([](const Run& run) { return run.loss; });
  }

  /// InputError naming the first problem: a run without an accuracy, an accuracy outside
  /// [0, 1], per-image correctness on some runs but not all, runs of one seed (or, the
  /// search's case, of all seeds when `same_images_across_seeds`) that did not see the
  /// same number of images, or an accuracy that disagrees with the run's correctness bits.
  void validate(bool same_images_across_seeds = true) const {
    const bool any_bits = [&] {
      for (const auto& run : runs_)
        if (run.correct) return true;
      return false;
    }();
    for (int r = 0; r < seeds_; ++r)
      for (std::size_t s = 0; s < structures(); ++s) {
        const Run& run = at(s, r);
        const auto name = [&] { return fmt::format("run table: structure {:#x} seed {}", masks_[s], r); };
        if (!(run.accuracy >= 0 && run.accuracy <= 1))
          throw InputError(name() +
                           (std::isnan(run.accuracy) ? ": no run recorded" : ": accuracy outside [0, 1]"));
        if (any_bits && !run.correct)
          throw InputError(name() +
                           ": has no per-image correctness, other runs have (record it for all or none)");
        if (!run.correct) continue;
        const auto& ref = same_images_across_seeds ? at(0, 0) : at(0, r);
        if (run.correct->size() != ref.correct->size() || run.correct->size() == 0)
          throw InputError(name() + fmt::format(": {} validation images, structure {:#x} seed {} has {}",
                                                run.correct->size(), masks_[0],
                                                same_images_across_seeds ? 0 : r, ref.correct->size()));
        if (std::abs(run.accuracy - run.correct->accuracy()) > 1e-9)
          throw InputError(name() + fmt::format(": accuracy {} but {} of {} images right", run.accuracy,
                                                run.correct->count(), run.correct->size()));
      }
  }

 private:
  [[nodiscard]] std::size_t cell(std::size_t s, int r) const {
    if (s >= masks_.size() || r < 0 || r >= seeds_)
      throw RuntimeError(fmt::format("run table: no cell (structure {}, seed {})", s, r));
    return s * std::size_t(seeds_) + std::size_t(r);
  }

  template <class F>
  [[nodiscard]] std::vector<double> mean_over_seeds(F value) const {
    std::vector<double> v(structures(), 0.0);
    for (std::size_t s = 0; s < structures(); ++s) {
      for (int r = 0; r < seeds_; ++r) v[s] += value(at(s, r));
      v[s] /= double(seeds_);
    }
    return v;
  }

  std::vector<std::uint64_t> masks_;
  int seeds_;
  std::vector<Run> runs_;  // structure-major: (s, r) at s * seeds + r
};

}  // namespace additive::stats
