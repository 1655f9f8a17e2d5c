// What every communicator provides (in-process threads, MPI, later NCCL), and the start-up
// check that all ranks agree on what they are about to do. See docs/communicators.md.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "additive/core/error.hpp"

namespace additive {

/// The element types of a collective: gradients and parameters are float or double. The
/// set is closed so that every communicator maps each type to its native type
/// (MPI_FLOAT / MPI_DOUBLE, ncclFloat32 / ncclFloat64) and reduces it in that type.
template <class T>
concept CommScalar = std::same_as<T, float> || std::same_as<T, double>;

// clang-format off
/// One rank's handle on a group of `size()` ranks. Every member function except rank()
/// and size() is a collective: all ranks of the group call it, in the same order, with
/// the same element type, count and root. A collective that cannot complete (a rank
/// failed, left or timed out) throws `CommError` on every rank that waits in it.
template <class C>
concept Communicator =
    // A handle is a resource (a shared group, an MPI_Comm): it moves, and split() hands
    // a new one back by value. It need not copy (two copies would be the same rank).
    std::movable<C> &&
    requires(C& c, const C& cc, std::span<float> f, std::span<double> d, int colour, int key, int root) {
      // Which rank this is, in [0, size()), and how many ranks the group has. Local:
      // no communication, so they may be called at any time.
      { cc.rank() } -> std::same_as<int>;
      { cc.size() } -> std::same_as<int>;
      // In place: every rank ends with the elementwise sum over the ranks, bit-identical
      // on every rank (replicas that must stay identical rely on it). Spans may be empty.
      c.all_reduce_sum(f);
      c.all_reduce_sum(d);
      // The sum divided by size(): the gradient average of data-parallel co-training.
      c.all_reduce_average(f);
      c.all_reduce_average(d);
      // In place: every rank ends with rank `root`'s values (initial weights, a seed).
      c.broadcast(f, root);
      c.broadcast(d, root);
      // Returns once every rank has entered it (checkpoints, timings).
      c.barrier();
      // Collective: ranks with the same colour (>= 0) form a new group, ordered by
      // (key, rank in this group). The segments of a structure map to sub-groups
      // (DESIGN section 5). The result is a communicator of the same kind, by value.
      { c.split(colour, key) } -> std::same_as<C>;
    };
// clang-format on

namespace dist {

namespace detail {

/// FNV-1a over the bytes and then the length: cheap, stable across builds and machines.
inline std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 14695981039346656037ull;
  const auto mix = [&h](unsigned char byte) {
    h ^= byte;
    h *= 1099511628211ull;
  };
  for (const char ch : s) mix(static_cast<unsigned char>(ch));
  for (std::size_t n = s.size(), i = 0; i < 8; ++i, n >>= 8) mix(static_cast<unsigned char>(n & 0xff));
  return h;
}

/// Half-open element range [begin, end) of chunk `i` of `n` elements cut into `parts`
/// balanced chunks (the first n % parts chunks one element longer).
struct Chunk {
  std::size_t begin = 0;
  std::size_t end = 0;
};
inline Chunk chunk(std::size_t n, std::size_t parts, std::size_t i) {
  const std::size_t base = n / parts, extra = n % parts;
  const std::size_t begin = i * base + (i < extra ? i : extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

}  // namespace detail

/// Start-up check: every rank passes a description of what it is about to run (the
/// structure, the parameter layout and shapes, the settings: whatever must agree); the
/// ranks exchange a 64-bit hash of it and, when they differ, every rank throws the same
/// CommError naming the ranks of each group, so none goes on to a collective with the
/// wrong count. `what` names the thing checked ("parameter layout").
///
/// Built from the concept alone: each rank writes its hash, as two 32-bit halves (exact
/// in a double), into its own slots of a zero table; the sum over ranks adds zeros to
/// each value, so it is exact on every communicator and every reduction order.
/// Whether one rank's handle may be used by a thread other than the one that made it (one
/// thread at a time): the co-training engine then runs the gradient all-reduces on a helper
/// thread, overlapped with the backward pass. False unless the communicator opts in.
template <class C>
inline constexpr bool hands_over_threads = false;

template <Communicator C>
void check_consistent(C& comm, std::string_view what, std::string_view description) {
  const int p = comm.size(), r = comm.rank();
  const std::uint64_t h = detail::fnv1a(description);
  std::vector<double> table(2 * static_cast<std::size_t>(p), 0.0);
  table[2 * static_cast<std::size_t>(r)] = static_cast<double>(h >> 32);
  table[2 * static_cast<std::size_t>(r) + 1] = static_cast<double>(h & 0xffffffffu);
  comm.all_reduce_sum(std::span<double>(table));

  std::map<std::uint64_t, std::vector<int>> ranks_of;  // hash -> ranks, in rank order
  std::vector<std::uint64_t> order;                    // hashes by first rank
  for (int q = 0; q < p; ++q) {
    const auto hi = static_cast<std::uint64_t>(table[2 * static_cast<std::size_t>(q)]);
    const auto lo = static_cast<std::uint64_t>(table[2 * static_cast<std::size_t>(q) + 1]);
    const std::uint64_t hq = (hi << 32) | lo;
    if (!ranks_of.contains(hq)) order.push_back(hq);
    ranks_of[hq].push_back(q);
  }
  if (order.size() == 1) return;

  std::string msg = std::string(what) + " differs between ranks:";
  for (std::size_t g = 0; g < order.size(); ++g) {
    msg += g == 0 ? " ranks {" : "; ranks {";
    const auto& ranks = ranks_of[order[g]];
    for (std::size_t i = 0; i < ranks.size(); ++i) msg += (i ? "," : "") + std::to_string(ranks[i]);
    msg += "} agree";
  }
  constexpr std::size_t shown = 120;
  msg += " (rank " + std::to_string(r) + " has \"" + std::string(description.substr(0, shown)) +
         (description.size() > shown ? "...\")" : "\")");
  throw CommError(msg);
}

}  // namespace dist
}  // namespace additive
