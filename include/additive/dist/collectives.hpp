// Collectives built from the Communicator concept alone, for engines that split work
// between ranks: gather every rank's values, broadcast a text (a results file rank 0
// read), and agree on a failure so that every rank stops with the same error instead of
// some waiting in a collective the others never enter.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/dist/communicator.hpp"

namespace additive::dist {

/// Collective: every rank's `mine` (lengths may differ), in rank order, on every rank.
/// Exact on any communicator: each rank writes its values into its own slots of a zero
/// table and the table is summed, so every value is only ever added to zeros (-0.0
/// arrives as +0.0; everything else bit for bit).
template <Communicator C>
std::vector<std::vector<double>> all_gather(C& comm, std::span<const double> mine) {
  const auto p = static_cast<std::size_t>(comm.size());
  const auto r = static_cast<std::size_t>(comm.rank());
  std::vector<double> counts(p, 0.0);
  counts[r] = static_cast<double>(mine.size());
  comm.all_reduce_sum(std::span<double>(counts));
  std::vector<std::size_t> offset(p + 1, 0);
  for (std::size_t q = 0; q < p; ++q) offset[q + 1] = offset[q] + static_cast<std::size_t>(counts[q]);
  std::vector<double> table(offset[p], 0.0);
  std::copy(mine.begin(), mine.end(), table.begin() + static_cast<std::ptrdiff_t>(offset[r]));
  comm.all_reduce_sum(std::span<double>(table));
  std::vector<std::vector<double>> out(p);
  for (std::size_t q = 0; q < p; ++q)
    out[q].assign(table.begin() + static_cast<std::ptrdiff_t>(offset[q]),
                  table.begin() + static_cast<std::ptrdiff_t>(offset[q + 1]));
  return out;
}

/// Collective: rank `root`'s `text` on every rank (the other ranks' arguments are
/// ignored); "no text" (a file rank `root` could not read) travels too. Four bytes per
/// double, each an integer below 2^32, so the broadcast is exact.
template <Communicator C>
std::optional<std::string> broadcast_text(C& comm, const std::optional<std::string>& text, int root) {
  double length = comm.rank() == root ? (text ? static_cast<double>(text->size()) : -1.0) : 0.0;
  comm.broadcast(std::span<double>(&length, 1), root);
  if (length < 0) return std::nullopt;
  const auto n = static_cast<std::size_t>(length);
  std::vector<double> words((n + 3) / 4, 0.0);
  if (comm.rank() == root)
    for (std::size_t i = 0; i < n; ++i)
      words[i / 4] += static_cast<double>(static_cast<std::uint32_t>(static_cast<unsigned char>((*text)[i]))
                                          << (8 * (i % 4)));
  comm.broadcast(std::span<double>(words), root);
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<char>((static_cast<std::uint32_t>(words[i / 4]) >> (8 * (i % 4))) & 0xffu);
  return out;
}

/// Collective, after a step that may have failed on some ranks (`failure`: this rank's
/// exception, or null): returns on every rank when none failed; otherwise throws on
/// every rank. The lowest failed rank's error wins: that rank rethrows its own exception,
/// the others throw one of the same kind (InputError, CommError, else RuntimeError) with
/// the same message, prefixed "rank r: " unless it is an InputError (the user's input is
/// the same for every rank). Messages travel up to `max_message` characters.
template <Communicator C>
void raise_together(C& comm, std::exception_ptr failure, std::size_t max_message = 400) {
  enum Kind : int { none = 0, input = 1, comm_error = 2, other = 3 };
  Kind kind = none;
  std::string message;
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const InputError& e) {
      kind = input;
      message = e.what();
    } catch (const CommError& e) {
      kind = comm_error;
      message = e.what();
    } catch (const std::exception& e) {
      kind = other;
      message = e.what();
    } catch (...) {
      kind = other;
      message = "unknown exception";
    }
  }
  // Every rank: its kind; then the failed ranks' messages, gathered exactly.
  std::vector<double> mine;
  mine.push_back(static_cast<double>(kind));
  if (kind != none)
    for (std::size_t i = 0; i < std::min(message.size(), max_message); ++i)
      mine.push_back(static_cast<double>(static_cast<unsigned char>(message[i])));
  const auto all = all_gather(comm, std::span<const double>(mine));
  for (std::size_t q = 0; q < all.size(); ++q) {
    const auto k = static_cast<Kind>(static_cast<int>(all[q].front()));
    if (k == none) continue;
    if (static_cast<int>(q) == comm.rank()) std::rethrow_exception(failure);
    std::string text;
    for (std::size_t i = 1; i < all[q].size(); ++i) text += static_cast<char>(static_cast<int>(all[q][i]));
    if (k == input) throw InputError(text);
    text = "rank " + std::to_string(q) + ": " + text;
    if (k == comm_error) throw CommError(text);
    throw RuntimeError(text);
  }
}

}  // namespace additive::dist
