// In-process ranks as threads: the default communicator on one machine. A ThreadGroup is
// shared by N threads, each holding one rank's ThreadComm; all-reduce is a ring
// reduce-scatter + all-gather over the ranks' own buffers in shared memory.
//
// Synchronisation is one mutex + condition variable per group (a generation barrier),
// not std::barrier: std::barrier cannot time out or be woken, so a rank that died would
// leave the others waiting forever. Here every wait has a deadline (default 60 s), and a
// rank that fails (abort()) or leaves (its handle is destroyed) wakes all waiters, who
// throw CommError. Sub-groups made by split() are aborted with their parent.
//
// Reduction order (deterministic, independent of timing): the buffer is cut into p
// balanced chunks; chunk c is summed along the ring starting at rank c,
//   ((x_c + x_{c+1}) + x_{c+2}) + ... + x_{c-1}        (ranks mod p)
// so chunk 0 is the sequential left-to-right sum x_0 + x_1 + ... + x_{p-1} and the other
// chunks are rotations of it (equal to it to rounding, bit-identical when the sum is
// exact). Every rank ends with the same bits: the all-gather copies the reduced chunks.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/dist/communicator.hpp"

namespace additive::dist {

/// How long a rank waits in one collective for the others before the group is aborted.
inline constexpr std::chrono::milliseconds default_comm_timeout{std::chrono::seconds(60)};

namespace detail {

enum class ThreadOp : int { barrier, all_reduce_sum, all_reduce_average, broadcast, split };

inline const char* op_name(ThreadOp op) {
  switch (op) {
    case ThreadOp::barrier:
      return "barrier";
    case ThreadOp::all_reduce_sum:
      return "all_reduce_sum";
    case ThreadOp::all_reduce_average:
      return "all_reduce_average";
    case ThreadOp::broadcast:
      return "broadcast";
    case ThreadOp::split:
      return "split";
  }
  return "?";
}

/// What one rank asked for in its current collective; every rank checks that all agree.
struct OpDesc {
  ThreadOp op = ThreadOp::barrier;
  int type = 0;  // 0 none, 4 float, 8 double (the element size)
  std::size_t count = 0;
  int root = -1;
  int colour = 0;
  int key = 0;
  void* data = nullptr;

  bool same_call(const OpDesc& o) const {
    return op == o.op && type == o.type && count == o.count && root == o.root;
  }
  std::string describe() const {
    std::string s = op_name(op);
    if (op == ThreadOp::barrier || op == ThreadOp::split) return s;
    s += " of " + std::to_string(count) + (type == 4 ? " float" : " double");
    if (op == ThreadOp::broadcast) s += " from root " + std::to_string(root);
    return s;
  }
};

struct ThreadGroupState {
  ThreadGroupState(int n, std::chrono::milliseconds t)
      : size(n),
        timeout(t),
        entered(static_cast<std::size_t>(n), 0),
        joined(static_cast<std::size_t>(n), 0),
        left(static_cast<std::size_t>(n), 0) {
    for (auto& s : slots) s.resize(static_cast<std::size_t>(n));
    for (auto& s : split_groups) s.resize(static_cast<std::size_t>(n));
  }

  const int size;
  const std::chrono::milliseconds timeout;

  std::mutex mutex;
  std::condition_variable cv;
  // Generation barrier: `arrived` ranks wait until `generation` moves on.
  std::uint64_t generation = 0;
  int arrived = 0;
  std::vector<std::uint64_t> entered;  // barriers entered, per rank (names the missing)
  std::vector<char> joined, left;
  int left_count = 0;
  bool unwinding = false;  // some rank left while an exception propagated
  bool aborted = false;
  std::string abort_reason;
  std::vector<std::weak_ptr<ThreadGroupState>> children;  // aborted with this group

  // Collective k uses slots[k % 2]: a rank can start collective k + 2 only after every
  // rank has passed the first barrier of k + 1, hence finished reading slot k % 2.
  std::vector<OpDesc> slots[2];
  std::vector<std::shared_ptr<ThreadGroupState>> split_groups[2];

  /// Marks the group failed and wakes every waiter (and every sub-group). Caller holds
  /// `mutex`. The first reason wins: it names the cause, later ones are consequences.
  void abort_locked(const std::string& reason) {
    if (!aborted) {
      aborted = true;
      abort_reason = reason;
    }
    cv.notify_all();
    for (auto& weak : children)
      if (auto child = weak.lock()) child->abort(reason);
  }
  void abort(const std::string& reason) {
    std::lock_guard lock(mutex);
    abort_locked(reason);
  }

  [[noreturn]] void fail_locked(int rank, const char* op, const std::string& why) {
    abort_locked(why);
    throw CommError(std::string(op) + " on rank " + std::to_string(rank) + " of " + std::to_string(size) +
                    ": " + abort_reason);
  }

  /// Returns once all `size` ranks have entered; throws CommError when the group is
  /// aborted, a rank has left, or the deadline passes first.
  void wait_all(int rank, const char* op) {
    std::unique_lock lock(mutex);
    if (aborted) fail_locked(rank, op, abort_reason);
    ++entered[static_cast<std::size_t>(rank)];
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    const std::uint64_t gen = generation;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (generation == gen) {
      if (aborted) fail_locked(rank, op, abort_reason);
      if (left_count > 0) {
        std::string who;
        for (int q = 0; q < size; ++q)
          if (left[static_cast<std::size_t>(q)]) who += (who.empty() ? "" : ",") + std::to_string(q);
        fail_locked(rank, op,
                    "rank " + who + " left the group (handle destroyed" +
                        (unwinding ? " by an exception: it failed" : "") + ") while others waited in " + op);
      }
      if (cv.wait_until(lock, deadline) == std::cv_status::timeout && generation == gen) {
        std::string who;
        for (int q = 0; q < size; ++q)
          if (entered[static_cast<std::size_t>(q)] < entered[static_cast<std::size_t>(rank)])
            who += (who.empty() ? "" : ",") + std::to_string(q);
        fail_locked(rank, op,
                    "timed out after " + std::to_string(timeout.count()) + " ms waiting for rank(s) " + who +
                        " in " + op);
      }
    }
  }
};

}  // namespace detail

/// One rank's handle on a ThreadGroup. Move-only; used by one thread at a time. Destroying
/// it leaves the group: ranks still waiting for this one in a collective get CommError.
class ThreadComm {
 public:
  ThreadComm(ThreadComm&& o) noexcept : state_(std::move(o.state_)), rank_(o.rank_), seq_(o.seq_) {}
  ThreadComm& operator=(ThreadComm&& o) noexcept {
    if (this != &o) {
      leave();
      state_ = std::move(o.state_);
      rank_ = o.rank_;
      seq_ = o.seq_;
    }
    return *this;
  }
  ThreadComm(const ThreadComm&) = delete;
  ThreadComm& operator=(const ThreadComm&) = delete;
  ~ThreadComm() { leave(); }

  int rank() const { return rank_; }
  int size() const { return state_->size; }

  template <CommScalar T>
  void all_reduce_sum(std::span<T> x) {
    ring_all_reduce(x, detail::ThreadOp::all_reduce_sum);
  }

  /// The sum divided by size() (a division, as MPI-based code would do it).
  template <CommScalar T>
  void all_reduce_average(std::span<T> x) {
    ring_all_reduce(x, detail::ThreadOp::all_reduce_average);
    const T p = static_cast<T>(size());
    for (auto& v : x) v /= p;
  }

  template <CommScalar T>
  void broadcast(std::span<T> x, int root) {
    if (root < 0 || root >= size())
      throw CommError("broadcast: root " + std::to_string(root) + " is not a rank of a group of " +
                      std::to_string(size()));
    const auto& all = begin({.op = detail::ThreadOp::broadcast,
                             .type = sizeof(T),
                             .count = x.size(),
                             .root = root,
                             .data = x.data()});
    if (rank_ != root && !x.empty()) {
      const T* src = static_cast<const T*>(all[static_cast<std::size_t>(root)].data);
      std::copy(src, src + x.size(), x.data());
    }
    state_->wait_all(rank_, "broadcast");  // the root's buffer stays untouched until all copied
  }

  void barrier() { begin({.op = detail::ThreadOp::barrier}); }

  /// Ranks with the same colour (>= 0) form a sub-group, ordered by (key, rank). The
  /// sub-group has this group's timeout and is aborted when this group is.
  ThreadComm split(int colour, int key) {
    if (colour < 0) throw CommError("split: colour " + std::to_string(colour) + " is negative");
    const int slot = static_cast<int>(seq_ & 1);
    const auto& all = begin({.op = detail::ThreadOp::split, .colour = colour, .key = key});
    std::vector<int> members;
    for (int q = 0; q < size(); ++q)
      if (all[static_cast<std::size_t>(q)].colour == colour) members.push_back(q);
    std::stable_sort(members.begin(), members.end(), [&all](int a, int b) {
      return all[static_cast<std::size_t>(a)].key < all[static_cast<std::size_t>(b)].key;
    });
    const int leader = members.front();
    if (rank_ == leader) {
      auto child =
          std::make_shared<detail::ThreadGroupState>(static_cast<int>(members.size()), state_->timeout);
      std::lock_guard lock(state_->mutex);
      std::erase_if(state_->children, [](const auto& w) { return w.expired(); });
      state_->children.push_back(child);
      if (state_->aborted) child->abort(state_->abort_reason);
      state_->split_groups[slot][static_cast<std::size_t>(rank_)] = std::move(child);
    }
    state_->wait_all(rank_, "split");
    auto group = state_->split_groups[slot][static_cast<std::size_t>(leader)];
    const auto new_rank = std::find(members.begin(), members.end(), rank_) - members.begin();
    return ThreadComm(std::move(group), static_cast<int>(new_rank));
  }

  /// Fails the group: every rank waiting in (or later entering) a collective of it or of
  /// its sub-groups gets CommError carrying `reason`.
  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  friend class ThreadGroup;
  ThreadComm(std::shared_ptr<detail::ThreadGroupState> state, int rank)
      : state_(std::move(state)), rank_(rank) {
    std::lock_guard lock(state_->mutex);
    state_->joined[static_cast<std::size_t>(rank_)] = 1;
  }

  void leave() noexcept {
    if (!state_) return;
    {
      std::lock_guard lock(state_->mutex);
      state_->left[static_cast<std::size_t>(rank_)] = 1;
      ++state_->left_count;
      if (std::uncaught_exceptions() > 0) state_->unwinding = true;
      state_->cv.notify_all();
    }
    state_.reset();
  }

  /// Publishes this rank's call, waits for all, and checks that all ranks made the same
  /// call; returns every rank's descriptor.
  const std::vector<detail::OpDesc>& begin(detail::OpDesc desc) {
    auto& all = state_->slots[seq_++ & 1];
    all[static_cast<std::size_t>(rank_)] = desc;
    const char* name = detail::op_name(desc.op);
    state_->wait_all(rank_, name);
    for (int q = 1; q < size(); ++q) {
      if (!all[static_cast<std::size_t>(q)].same_call(all[0])) {
        std::lock_guard lock(state_->mutex);
        state_->fail_locked(rank_, name,
                            "ranks disagree: rank 0 calls " + all[0].describe() + ", rank " +
                                std::to_string(q) + " calls " + all[static_cast<std::size_t>(q)].describe());
      }
    }
    return all;
  }

  template <CommScalar T>
  void ring_all_reduce(std::span<T> x, detail::ThreadOp op) {
    const char* name = detail::op_name(op);
    const auto& all = begin({.op = op, .type = sizeof(T), .count = x.size(), .data = x.data()});
    const int p = size();
    if (p == 1) return;
    const std::size_t n = x.size(), up = static_cast<std::size_t>(p);
    T* own = x.data();
    const T* left = static_cast<const T*>(all[static_cast<std::size_t>((rank_ + p - 1) % p)].data);
    // Reduce-scatter: at step s this rank adds its left neighbour's partial sum of chunk
    // (rank - 1 - s) into its own; after p - 1 steps it holds the full sum of chunk
    // (rank + 1). The chunk read was written by the neighbour one step earlier and is not
    // written in this step, so one barrier per step orders the reads and writes.
    for (int s = 0; s < p - 1; ++s) {
      const auto c = detail::chunk(n, up, static_cast<std::size_t>((rank_ - 1 - s + 2 * p) % p));
      for (std::size_t i = c.begin; i < c.end; ++i) own[i] = left[i] + own[i];
      state_->wait_all(rank_, name);
    }
    // All-gather: at step s this rank copies the finished chunk (rank - s) from its left
    // neighbour. The last barrier also keeps every buffer alive until its readers are done.
    for (int s = 0; s < p - 1; ++s) {
      const auto c = detail::chunk(n, up, static_cast<std::size_t>((rank_ - s + p) % p));
      std::copy(left + c.begin, left + c.end, own + c.begin);
      state_->wait_all(rank_, name);
    }
  }

  std::shared_ptr<detail::ThreadGroupState> state_;
  int rank_ = 0;
  std::uint64_t seq_ = 0;  // collectives started; picks the descriptor slot
};

/// A rank's handle is used by one thread at a time, whichever thread that is.
template <>
inline constexpr bool hands_over_threads<ThreadComm> = true;

/// A group of `size` in-process ranks. Each rank's thread takes its handle with join();
/// the group object itself may go away before the handles (they share the state).
class ThreadGroup {
 public:
  explicit ThreadGroup(int size, std::chrono::milliseconds timeout = default_comm_timeout) {
    if (size < 1) throw CommError("ThreadGroup: size " + std::to_string(size) + " is not positive");
    if (timeout.count() <= 0) throw CommError("ThreadGroup: the timeout must be positive");
    state_ = std::make_shared<detail::ThreadGroupState>(size, timeout);
  }

  int size() const { return state_->size; }

  /// Rank `rank`'s handle; each rank may be joined once.
  ThreadComm join(int rank) {
    if (rank < 0 || rank >= size())
      throw CommError("ThreadGroup::join: rank " + std::to_string(rank) + " is not in [0, " +
                      std::to_string(size()) + ")");
    {
      std::lock_guard lock(state_->mutex);
      if (state_->joined[static_cast<std::size_t>(rank)])
        throw CommError("ThreadGroup::join: rank " + std::to_string(rank) + " was already joined");
    }
    return ThreadComm(state_, rank);
  }

  void abort(const std::string& reason) { state_->abort(reason); }

 private:
  std::shared_ptr<detail::ThreadGroupState> state_;
};

/// Runs fn(ThreadComm&) on `size` new threads, rank r on thread r, and joins them. When a
/// rank throws, the group is aborted ("rank r failed: ...") so the others stop with
/// CommError instead of waiting; afterwards the first exception (the cause) is rethrown.
template <class F>
void run_threads(int size, F&& fn, std::chrono::milliseconds timeout = default_comm_timeout) {
  ThreadGroup group(size, timeout);
  std::vector<ThreadComm> comms;
  comms.reserve(static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) comms.push_back(group.join(r));
  std::mutex mutex;
  std::exception_ptr first;
  {
    std::vector<std::jthread> threads;
    threads.reserve(static_cast<std::size_t>(size));
    for (int r = 0; r < size; ++r) {
      threads.emplace_back([&, r] {
        ThreadComm& comm = comms[static_cast<std::size_t>(r)];
        try {
          fn(comm);
        } catch (const std::exception& e) {
          {
            std::lock_guard lock(mutex);
            if (!first) first = std::current_exception();
          }
          comm.abort("rank " + std::to_string(r) + " failed: " + e.what());
        } catch (...) {
          {
            std::lock_guard lock(mutex);
            if (!first) first = std::current_exception();
          }
          comm.abort("rank " + std::to_string(r) + " failed");
        }
      });
    }
  }  // jthreads join here
  if (first) std::rethrow_exception(first);
}

static_assert(Communicator<ThreadComm>);

}  // namespace additive::dist
