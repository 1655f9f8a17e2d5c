// A column-major strided matrix view over memory that someone else owns (host or
// device). Blocks and shards are views into the flat parameter and activation
// buffers, so no slice of a model is ever copied.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace additive {

using Index = std::ptrdiff_t;

/// (rows, cols), column j at data + j * ld. T may be const.
template <class T>
struct MatView {
  T* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index ld = 0;

  constexpr MatView() = default;
  constexpr MatView(T* p, Index r, Index c, Index lead) : data(p), rows(r), cols(c), ld(lead) {
    assert(r >= 0 && c >= 0 && (c <= 1 || lead >= r));
  }
  constexpr MatView(T* p, Index r, Index c) : MatView(p, r, c, r) {}

  /// A view of const elements converts from a view of mutable ones.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>) constexpr MatView(MatView<U> other)
      : MatView(other.data, other.rows, other.cols, other.ld) {}

  [[nodiscard]] constexpr T& operator()(Index r, Index c) const noexcept { return data[r + c * ld]; }
  [[nodiscard]] constexpr MatView block(Index r0, Index c0, Index nr, Index nc) const noexcept {
    assert(r0 >= 0 && c0 >= 0 && r0 + nr <= rows && c0 + nc <= cols);
    return MatView(data + r0 + c0 * ld, nr, nc, ld);
  }
  [[nodiscard]] constexpr MatView rows_range(Index r0, Index nr) const noexcept {
    return block(r0, 0, nr, cols);
  }
  [[nodiscard]] constexpr MatView cols_range(Index c0, Index nc) const noexcept {
    return block(0, c0, rows, nc);
  }
  [[nodiscard]] constexpr bool contiguous() const noexcept { return ld == rows || cols <= 1; }
};

}  // namespace additive
