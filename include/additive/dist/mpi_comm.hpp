// MPI communicator (Open MPI): ranks are processes started by mpirun or a cluster
// launcher, on one machine or many. Only code that includes this header needs MPI
// (link MPI::MPI_CXX); the additive target does not carry it.
//
//   int main(int argc, char** argv) {
//     additive::dist::MpiEnvironment env(argc, argv);   // MPI_Init ... MPI_Finalize
//     auto comm = additive::dist::MpiComm::world();      // a dup of MPI_COMM_WORLD
//     comm.all_reduce_average(std::span<float>(grads));
//   }
//
// Every call sets MPI_ERRORS_RETURN on its communicator and turns an error status into
// CommError("MPI_Allreduce(...) failed: <MPI_Error_string>"). A rank that dies is Open
// MPI's business: mpirun then aborts the whole job (tests/cli/mpi_fault.sh checks it).
//
// A rank that stops without dying (SIGSTOP, a hung node, a livelocked thread) is ours:
// MPI's blocking collectives would wait for it forever. So every collective is the
// non-blocking one (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) polled against a deadline
// (set_timeout; default 300 s; 0 waits forever, as the blocking calls do). A rank whose
// deadline passes tells every other rank so on a second, private communicator, listens
// for the same notice from them for a short grace period, and throws CommTimeout naming
// the ranks it did not hear from: the late ones. A rank that receives such a notice while
// it waits in a collective stops waiting and does the same, so every live rank reports
// within about one grace period of the first deadline. The driver then prints the line
// and ends the job (MpiComm::abort). The communicator is unusable after a CommTimeout
// (its collective is still posted): end the job.
#pragma once

// Only MPI's C interface is used: keep the deprecated C++ bindings out (they do not
// compile warning-free).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/dist/communicator.hpp"

namespace additive::dist {

namespace detail {

inline std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<std::size_t>(length));
}

inline void mpi_check(int code, const char* expr, const char* file, int line) {
  if (code != MPI_SUCCESS)
    throw CommError(std::string(expr) + " failed: " + mpi_error_string(code) + " (" + file + ":" +
                    std::to_string(line) + ")");
}

template <CommScalar T>
MPI_Datatype mpi_type() {
  if constexpr (std::same_as<T, float>)
    return MPI_FLOAT;
  else
    return MPI_DOUBLE;
}

}  // namespace detail

/// How long an MPI collective waits for the other ranks by default: long enough for the
/// imbalance of a search round or a local-SGD period on a busy cluster, short enough
/// that a stalled job ends the same hour. Drivers set it with --comm-timeout.
inline constexpr std::chrono::milliseconds default_mpi_timeout{std::chrono::seconds(300)};

/// A collective did not complete before its deadline: some rank stopped (or is far
/// behind). what() names the collective, the deadline and the late ranks.
class CommTimeout : public CommError {
 public:
  CommTimeout(std::string message, std::vector<int> late)
      : CommError(std::move(message)), late_(std::move(late)) {}
  /// The ranks that sent no notice within the grace period (ascending).
  const std::vector<int>& late_ranks() const noexcept { return late_; }

 private:
  std::vector<int> late_;
};

/// Throws CommError naming the call, MPI's error string, file and line.
#define ADDITIVE_MPI_CHECK(expr) ::additive::dist::detail::mpi_check((expr), #expr, __FILE__, __LINE__)

/// Initialises MPI (MPI_THREAD_FUNNELED: only the thread that called it makes MPI calls)
/// unless it already is, and finalizes it on destruction if it initialised it. One per
/// program, in main, before any MpiComm and outliving them all.
class MpiEnvironment {
 public:
  MpiEnvironment(int& argc, char**& argv) { init(&argc, &argv); }
  MpiEnvironment() { init(nullptr, nullptr); }
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  ~MpiEnvironment() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owner_ && !finalized) MPI_Finalize();
  }

 private:
  void init(int* argc, char*** argv) {
    int initialized = 0;
    ADDITIVE_MPI_CHECK(MPI_Initialized(&initialized));
    if (initialized) return;
    int provided = 0;
    ADDITIVE_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    owner_ = true;
  }
  bool owner_ = false;
};

/// One rank's handle: owns a duplicate of the communicator it was made from (so our
/// traffic never matches a user's messages), freed on destruction. Move-only.
class MpiComm {
 public:
  /// A duplicate of MPI_COMM_WORLD.
  static MpiComm world() { return MpiComm(MPI_COMM_WORLD); }

  /// Duplicates `comm` (collective over it) and sets MPI_ERRORS_RETURN on the duplicate.
  explicit MpiComm(MPI_Comm comm) {
    // `comm`'s own error handler is left alone (it is the caller's): a failed dup goes
    // through it (by default: the job aborts with MPI's message).
    ADDITIVE_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
    adopt();
  }

  MpiComm(MpiComm&& o) noexcept
      : comm_(std::exchange(o.comm_, MPI_COMM_NULL)),
        watch_(std::exchange(o.watch_, MPI_COMM_NULL)),
        rank_(o.rank_),
        size_(o.size_),
        max_count_(o.max_count_),
        timeout_(o.timeout_),
        sequence_(o.sequence_) {}
  MpiComm& operator=(MpiComm&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
      watch_ = std::exchange(o.watch_, MPI_COMM_NULL);
      rank_ = o.rank_;
      size_ = o.size_;
      max_count_ = o.max_count_;
      timeout_ = o.timeout_;
      sequence_ = o.sequence_;
    }
    return *this;
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;
  ~MpiComm() { release(); }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm native() const { return comm_; }

  /// MPI counts are int: longer spans go in pieces of at most this many elements
  /// (INT_MAX; tests set it small to exercise the cutting).
  void set_max_count(std::size_t n) {
    if (n == 0 || n > static_cast<std::size_t>(INT_MAX))
      throw CommError("MpiComm::set_max_count: " + std::to_string(n) + " is not in [1, INT_MAX]");
    max_count_ = n;
  }

  /// How long one collective may wait for the other ranks before CommTimeout (0: for
  /// ever). Every rank should set the same value. Sub-groups made by split() inherit it.
  void set_timeout(std::chrono::milliseconds t) {
    if (t.count() < 0) throw CommError("MpiComm::set_timeout: the timeout is negative");
    timeout_ = t;
  }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  template <CommScalar T>
  void all_reduce_sum(std::span<T> x) {
    for_each_piece(x, [this](T* data, int count) {
      complete("all-reduce", [&](MPI_Request* request) {
        return MPI_Iallreduce(MPI_IN_PLACE, data, count, detail::mpi_type<T>(), MPI_SUM, comm_, request);
      });
    });
  }

  /// The sum divided by size(), as ThreadComm does it.
  template <CommScalar T>
  void all_reduce_average(std::span<T> x) {
    all_reduce_sum(x);
    const T p = static_cast<T>(size_);
    for (auto& v : x) v /= p;
  }

  template <CommScalar T>
  void broadcast(std::span<T> x, int root) {
    if (root < 0 || root >= size_)
      throw CommError("broadcast: root " + std::to_string(root) + " is not a rank of a group of " +
                      std::to_string(size_));
    for_each_piece(x, [this, root](T* data, int count) {
      complete("broadcast", [&](MPI_Request* request) {
        return MPI_Ibcast(data, count, detail::mpi_type<T>(), root, comm_, request);
      });
    });
  }

  void barrier() {
    complete("barrier", [&](MPI_Request* request) { return MPI_Ibarrier(comm_, request); });
  }

  /// MPI_Comm_split: same colour (>= 0), ordered by (key, rank). Blocking, without a
  /// deadline (MPI has no non-blocking split): a set-up call, made before any work.
  MpiComm split(int colour, int key) {
    if (colour < 0) throw CommError("split: colour " + std::to_string(colour) + " is negative");
    MpiComm out;
    ADDITIVE_MPI_CHECK(MPI_Comm_split(comm_, colour, key, &out.comm_));
    out.adopt();
    out.max_count_ = max_count_;
    out.timeout_ = timeout_;
    return out;
  }

  /// For drivers: ends every process of the job (MPI_Abort) with `code`, after a failure
  /// that the other ranks cannot learn of otherwise. Never returns.
  [[noreturn]] void abort(int code) const {
    MPI_Abort(comm_, code);
    std::abort();
  }

 private:
  MpiComm() = default;

  void adopt() {
    ADDITIVE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    ADDITIVE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    ADDITIVE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    // Stall notices travel here, never matching the collectives' traffic on comm_.
    ADDITIVE_MPI_CHECK(MPI_Comm_dup(comm_, &watch_));
  }

  void release() noexcept {
    int finalized = 0;
    MPI_Finalized(&finalized);
    for (MPI_Comm* c : {&watch_, &comm_}) {
      if (*c == MPI_COMM_NULL) continue;
      if (!finalized && MPI_Comm_free(c) != MPI_SUCCESS)
        std::fprintf(stderr, "additive: MPI_Comm_free failed in ~MpiComm (ignored)\n");
      *c = MPI_COMM_NULL;
    }
  }

  static constexpr int stall_tag = 1;

  /// Starts one non-blocking collective (`start` posts it and returns MPI's status) and
  /// waits for it until the deadline. Polls: spinning first (a collective whose ranks are
  /// all there completes in microseconds), then sleeping up to 1 ms between tests.
  template <class Start>
  void complete(const char* what, Start&& start) {
    ++sequence_;
    MPI_Request request = MPI_REQUEST_NULL;
    ADDITIVE_MPI_CHECK(start(&request));
    using Clock = std::chrono::steady_clock;
    const auto begin = Clock::now();
    auto next_listen = begin + std::chrono::milliseconds(10);
    std::chrono::microseconds nap{0};
    for (;;) {
      int done = 0;
      ADDITIVE_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
      if (done) return;
      if (size_ == 1) continue;
      const auto now = Clock::now();
      if (now >= next_listen) {  // another rank's deadline passed in this collective?
        int notice = 0;
        ADDITIVE_MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, stall_tag, watch_, &notice, MPI_STATUS_IGNORE));
        if (notice) stalled(what, now - begin);
        next_listen = now + std::chrono::milliseconds(10);
      }
      if (timeout_.count() > 0 && now - begin >= timeout_) stalled(what, now - begin);
      if (now - begin < hot_wait) continue;
      nap = std::min(std::chrono::microseconds(1000), nap + std::chrono::microseconds(10));
      std::this_thread::sleep_for(nap);
    }
  }

  /// This rank gives up on collective number sequence_: tells every other rank, listens
  /// for their notices for a grace period, and throws CommTimeout naming the silent ones.
  [[noreturn]] void stalled(const char* what, std::chrono::steady_clock::duration waited) {
    using Clock = std::chrono::steady_clock;
    std::vector<long long> sent(static_cast<std::size_t>(size_), sequence_);
    std::vector<MPI_Request> sends;
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      sends.push_back(MPI_REQUEST_NULL);
      // Failures here only mean that rank is gone too: it is then reported as late.
      MPI_Isend(&sent[static_cast<std::size_t>(q)], 1, MPI_LONG_LONG, q, stall_tag, watch_, &sends.back());
    }
    std::vector<long long> heard(static_cast<std::size_t>(size_), -1);
    heard[static_cast<std::size_t>(rank_)] = sequence_;
    const auto grace = Clock::now() + stall_grace;
    for (;;) {
      int notice = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, stall_tag, watch_, &notice, &status) != MPI_SUCCESS) break;
      if (notice) {
        long long their = 0;
        if (MPI_Recv(&their, 1, MPI_LONG_LONG, status.MPI_SOURCE, stall_tag, watch_, MPI_STATUS_IGNORE) !=
            MPI_SUCCESS)
          break;
        heard[static_cast<std::size_t>(status.MPI_SOURCE)] = their;
        if (std::count(heard.begin(), heard.end(), -1) == 0) break;
        continue;
      }
      if (Clock::now() >= grace) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // The sends stay posted: the job ends (MPI_Abort) and a stopped rank never takes them.
    for (auto& r : sends)
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    std::vector<int> late;
    std::string late_list, waiting_list;
    for (int q = 0; q < size_; ++q) {
      auto& list = heard[static_cast<std::size_t>(q)] < 0 ? late_list : waiting_list;
      if (heard[static_cast<std::size_t>(q)] < 0) late.push_back(q);
      list += (list.empty() ? "" : ",") + std::to_string(q);
      if (heard[static_cast<std::size_t>(q)] >= 0 && heard[static_cast<std::size_t>(q)] != sequence_)
        list += " (in collective #" + std::to_string(heard[static_cast<std::size_t>(q)]) + ")";
    }
    char times[96];
    std::snprintf(times, sizeof times, "rank %d waited %.1f s, timeout %g s", rank_,
                  std::chrono::duration<double>(waited).count(),
                  static_cast<double>(timeout_.count()) / 1000.0);
    std::string message = "MPI " + std::string(what) + " #" + std::to_string(sequence_) +
                          " did not complete: " +
                          (late.empty() ? std::string("every rank reported waiting")
                                        : "rank(s) " + late_list + " did not reach it") +
                          " (" + times + "; ranks waiting: " + waiting_list + ")";
    throw CommTimeout(std::move(message), std::move(late));
  }

  template <class T, class F>
  void for_each_piece(std::span<T> x, F&& call) {
    for (std::size_t done = 0; done < x.size();) {
      const std::size_t n = std::min(max_count_, x.size() - done);
      call(x.data() + done, static_cast<int>(n));
      done += n;
    }
  }

  /// How long a collective is polled without pause (as MPI's blocking calls spin)
  /// before the polls are spaced by naps growing to 1 ms.
  static constexpr std::chrono::milliseconds hot_wait{100};

  /// How long a rank that gave up listens for the other ranks' notices.
  static constexpr std::chrono::milliseconds stall_grace{2000};

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm watch_ = MPI_COMM_NULL;  ///< stall notices only
  int rank_ = 0;
  int size_ = 0;
  std::size_t max_count_ = static_cast<std::size_t>(INT_MAX);
  std::chrono::milliseconds timeout_ = default_mpi_timeout;
  long long sequence_ = 0;  ///< collectives started on this communicator
};

static_assert(Communicator<MpiComm>);

}  // namespace additive::dist
