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
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <utility>

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
        rank_(o.rank_),
        size_(o.size_),
        max_count_(o.max_count_) {}
  MpiComm& operator=(MpiComm&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
      rank_ = o.rank_;
      size_ = o.size_;
      max_count_ = o.max_count_;
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

  template <CommScalar T>
  void all_reduce_sum(std::span<T> x) {
    for_each_piece(x, [this](T* data, int count) {
      ADDITIVE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data, count, detail::mpi_type<T>(), MPI_SUM, comm_));
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
      ADDITIVE_MPI_CHECK(MPI_Bcast(data, count, detail::mpi_type<T>(), root, comm_));
    });
  }

  void barrier() { ADDITIVE_MPI_CHECK(MPI_Barrier(comm_)); }

  /// MPI_Comm_split: same colour (>= 0), ordered by (key, rank).
  MpiComm split(int colour, int key) {
    if (colour < 0) throw CommError("split: colour " + std::to_string(colour) + " is negative");
    MpiComm out;
    ADDITIVE_MPI_CHECK(MPI_Comm_split(comm_, colour, key, &out.comm_));
    out.adopt();
    out.max_count_ = max_count_;
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
  }

  void release() noexcept {
    if (comm_ == MPI_COMM_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && MPI_Comm_free(&comm_) != MPI_SUCCESS)
      std::fprintf(stderr, "additive: MPI_Comm_free failed in ~MpiComm (ignored)\n");
    comm_ = MPI_COMM_NULL;
  }

  template <class T, class F>
  void for_each_piece(std::span<T> x, F&& call) {
    for (std::size_t done = 0; done < x.size();) {
      const std::size_t n = std::min(max_count_, x.size() - done);
      call(x.data() + done, static_cast<int>(n));
      done += n;
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 0;
  std::size_t max_count_ = static_cast<std::size_t>(INT_MAX);
};

static_assert(Communicator<MpiComm>);

}  // namespace additive::dist
