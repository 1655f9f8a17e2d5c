// NCCL communicator: one rank per GPU, collectives over DEVICE memory, issued on the
// communicator's own stream and ordered against the caller's stream by events. See
// docs/communicators.md ("NCCL").
//
//   // (a) one process per GPU, the unique id sent over MPI: dist/nccl_mpi.cuh
//   auto comm = additive::dist::nccl_from_mpi(additive::dist::MpiComm::world());
//   comm.all_reduce_average(grads.span(), stream);       // device span, caller's stream
//
//   // (b) one process (one thread) driving every local GPU
//   auto group = additive::dist::NcclLocalGroup::create();  // one NcclComm per device
//   group.all_reduce_sum(std::span<const std::span<float>>(buffers), streams);
//
// Every communicator is NCCL "non-blocking" (ncclConfig_t::blocking = 0): no NCCL call
// blocks the host waiting for another rank, so every wait is ours, polled with a deadline
// (default 60 s). A wait that runs past it, or an asynchronous NCCL error
// (ncclCommGetAsyncError), aborts the communicator (ncclCommAbort, which also stops its
// kernels) and throws CommError: a dead peer never hangs the caller.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/cuda/buffer.cuh"
#include "additive/cuda/error.cuh"
#include "additive/cuda/stream.cuh"
#include "additive/dist/communicator.hpp"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "additive/dist/nccl_comm.cuh needs NCCL 2.18 or later (ncclCommSplit, non-blocking communicators)"
#endif

namespace additive::dist {

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

namespace detail {
inline const char* nccl_status_name(ncclResult_t status) noexcept {
  switch (status) {
    case ncclSuccess:
      return "ncclSuccess";
    case ncclUnhandledCudaError:
      return "ncclUnhandledCudaError";
    case ncclSystemError:
      return "ncclSystemError";
    case ncclInternalError:
      return "ncclInternalError";
    case ncclInvalidArgument:
      return "ncclInvalidArgument";
    case ncclInvalidUsage:
      return "ncclInvalidUsage";
    case ncclRemoteError:
      return "ncclRemoteError";
    case ncclInProgress:
      return "ncclInProgress";
    default:
      return "ncclResult_t(?)";
  }
}
}  // namespace detail

/// An NCCL call failed (now, or asynchronously on the device): a CommError (a collective
/// that cannot complete) carrying the status, its name and string, the expression, the
/// file and the line, and NCCL's last error message when it has one.
class NcclError : public CommError {
 public:
  NcclError(ncclResult_t status, const char* expr, const char* file, int line,
            const char* last_error = nullptr)
      : CommError(
            std::string("NCCL error ") + detail::nccl_status_name(status) + " (" +
            ncclGetErrorString(status) + ") in " + expr + " at " + file + ":" + std::to_string(line) +
            (last_error != nullptr && *last_error != '\0' ? std::string(": ") + last_error : std::string())),
        status_(status) {}
  [[nodiscard]] ncclResult_t status() const noexcept { return status_; }

 private:
  ncclResult_t status_;
};

namespace detail {
inline void check_nccl(ncclResult_t status, const char* expr, const char* file, int line) {
  if (status != ncclSuccess) throw NcclError(status, expr, file, line, ncclGetLastError(nullptr));
}
inline void log_nccl(ncclResult_t status, const char* expr, const char* file, int line) noexcept {
  if (status == ncclSuccess || status == ncclInProgress) return;
  std::fprintf(stderr, "additive: ignoring NCCL error %s (%s) in %s at %s:%d\n", nccl_status_name(status),
               ncclGetErrorString(status), expr, file, line);
}
}  // namespace detail

}  // namespace additive::dist

/// Throws additive::dist::NcclError unless the NCCL call `expr` returns ncclSuccess (for
/// calls that do not belong to a non-blocking communicator: ncclGetUniqueId, ...).
#define ADDITIVE_NCCL_CHECK(expr) ::additive::dist::detail::check_nccl((expr), #expr, __FILE__, __LINE__)
/// Logs (never throws) a failed NCCL call: for destructors.
#define ADDITIVE_NCCL_LOG(expr) ::additive::dist::detail::log_nccl((expr), #expr, __FILE__, __LINE__)

namespace additive::dist {

// ---------------------------------------------------------------------------------------
// Element types and the device-side concept
// ---------------------------------------------------------------------------------------

/// The element types of an NCCL collective: CommScalar's float and double, and bf16
/// (reduced by NCCL in bf16: for gradients that are already bf16, not for exactness).
template <class T>
concept NcclScalar = CommScalar<T> || std::same_as<T, __nv_bfloat16>;

namespace detail {
template <NcclScalar T>
constexpr ncclDataType_t nccl_type() {
  if constexpr (std::same_as<T, float>)
    return ncclFloat32;
  else if constexpr (std::same_as<T, double>)
    return ncclFloat64;
  else
    return ncclBfloat16;
}
}  // namespace detail

// clang-format off
/// The device counterpart of Communicator (communicator.hpp). Every collective takes a
/// span of DEVICE memory on the communicator's device and the caller's stream on that
/// device: it is ordered after the work already on that stream and the work the caller
/// puts on the stream afterwards is ordered after it; the host does not wait.
/// synchronize() and barrier() are the host waits, bounded by the communicator's timeout.
///
/// Why not Communicator itself: its spans are host memory, and code written against it
/// (check_consistent, the co-training engine) reads and writes them on the host right
/// after the call. A device communicator can satisfy neither (a host pointer given to NCCL
/// is an invalid access on the device; a device pointer read on the host is a crash), so
/// the stream argument is required and Communicator<NcclComm> is false on purpose.
/// NcclHostComm adapts an NcclComm to Communicator by staging through device memory.
template <class C>
concept DeviceCommunicator =
    std::movable<C> &&
    requires(C& c, const C& cc, std::span<float> f, std::span<double> d, cudaStream_t s, int colour, int key,
             int root) {
      { cc.rank() } -> std::same_as<int>;
      { cc.size() } -> std::same_as<int>;
      { cc.device() } -> std::same_as<int>;
      c.all_reduce_sum(f, s);
      c.all_reduce_sum(d, s);
      c.all_reduce_average(f, s);
      c.all_reduce_average(d, s);
      c.broadcast(f, root, s);
      c.broadcast(d, root, s);
      c.barrier();
      c.synchronize();
      { c.split(colour, key) } -> std::same_as<C>;
    };
// clang-format on

/// How long one host wait on an NCCL communicator (initialisation, split, synchronize,
/// barrier, finalize) may take before the communicator is aborted.
inline constexpr std::chrono::milliseconds default_nccl_timeout{std::chrono::seconds(60)};

namespace detail {

/// Makes `device` current for a scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    ADDITIVE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) ADDITIVE_CUDA_CHECK(cudaSetDevice(device));
    changed_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (changed_) ADDITIVE_CUDA_LOG(cudaSetDevice(previous_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

/// Calls `ready()` until it returns true or `deadline` passes (then returns false):
/// spinning with yields for the first millisecond (collectives are short), then sleeping
/// 50 us between polls.
template <class Ready>
bool poll_until(std::chrono::steady_clock::time_point deadline, Ready&& ready) {
  const auto start = std::chrono::steady_clock::now();
  while (!ready()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    if (now - start < std::chrono::milliseconds(1))
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  return true;
}

/// x[i] /= p on `stream` (the average after the sum): a correctly rounded division, as the
/// host communicators do it; bf16 is divided in float and rounded to nearest.
template <NcclScalar T>
__global__ void divide_by(T* x, std::size_t n, int p) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if constexpr (std::same_as<T, float>)
      x[i] = __fdiv_rn(x[i], static_cast<float>(p));
    else if constexpr (std::same_as<T, double>)
      x[i] = __ddiv_rn(x[i], static_cast<double>(p));
    else
      x[i] = __float2bfloat16_rn(__fdiv_rn(__bfloat162float(x[i]), static_cast<float>(p)));
  }
}

inline ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

}  // namespace detail

class NcclComm;
template <NcclScalar T>
void all_reduce_group(std::span<NcclComm> comms, std::span<const std::span<T>> buffers,
                      std::span<const cudaStream_t> streams, bool average = false);
template <NcclScalar T>
void broadcast_group(std::span<NcclComm> comms, std::span<const std::span<T>> buffers, int root,
                     std::span<const cudaStream_t> streams);
inline void barrier_group(std::span<NcclComm> comms);
inline void synchronize_group(std::span<NcclComm> comms);
inline void finalize_group(std::span<NcclComm> comms) noexcept;
inline std::vector<NcclComm> split_group(std::span<NcclComm> comms, std::span<const int> colours,
                                         std::span<const int> keys);

// ---------------------------------------------------------------------------------------
// NcclComm
// ---------------------------------------------------------------------------------------

/// One rank's handle: an NCCL communicator on one device, with its own non-blocking
/// stream and events. Move-only; the destructor finalizes (bounded: it aborts past the
/// timeout) and never throws. Not thread-safe: one thread uses one handle at a time.
///
/// One rank per process or thread: call the members directly. One thread driving
/// several ranks (NcclLocalGroup): their collectives must be issued together, through the
/// *_group functions (ncclGroupStart/End); a direct call on one of them waits for the
/// others and times out.
class NcclComm {
 public:
  /// Rank `rank` of `nranks` on `device`, all ranks passing the same `id` (from
  /// ncclGetUniqueId on one rank, sent to the others by any means: MPI in
  /// dist/nccl_mpi.cuh, shared memory for threads). Collective over the ranks; returns
  /// once they have all joined, or throws CommError after `timeout`.
  static NcclComm init_rank(const ncclUniqueId& id, int nranks, int rank, int device,
                            std::chrono::milliseconds timeout = default_nccl_timeout) {
    check_args(nranks, rank, device, timeout);
    NcclComm comm(device, timeout);
    {
      detail::DeviceGuard guard(device);
      ncclConfig_t config = detail::nonblocking_config();
      comm.enter(ncclCommInitRankConfig(&comm.comm_, nranks, id, rank, &config), "ncclCommInitRankConfig");
    }
    comm.wait_ready("ncclCommInitRankConfig");
    comm.adopt();
    return comm;
  }

  NcclComm(NcclComm&& o) noexcept
      : comm_(std::exchange(o.comm_, nullptr)),
        device_(o.device_),
        rank_(o.rank_),
        size_(o.size_),
        timeout_(o.timeout_),
        aborted_(std::move(o.aborted_)),
        res_(std::move(o.res_)) {}
  NcclComm& operator=(NcclComm&& o) noexcept {
    if (this != &o) {
      release();
      comm_ = std::exchange(o.comm_, nullptr);
      device_ = o.device_;
      rank_ = o.rank_;
      size_ = o.size_;
      timeout_ = o.timeout_;
      aborted_ = std::move(o.aborted_);
      res_ = std::move(o.res_);
    }
    return *this;
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;
  ~NcclComm() { release(); }

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  /// The CUDA device of this rank: buffers and the caller's streams live on it.
  [[nodiscard]] int device() const { return device_; }
  /// The communicator's own stream (collectives run on it; callers rarely need it).
  [[nodiscard]] cudaStream_t stream() const { return res_ ? res_->stream.get() : nullptr; }
  [[nodiscard]] ncclComm_t native() const { return comm_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const { return timeout_; }
  [[nodiscard]] bool aborted() const { return !aborted_.empty(); }

  /// In place, device memory on device(): every rank ends with the elementwise sum
  /// (NCCL's order; the same bits on every rank). Ordered after the work on `stream`,
  /// and the work put on `stream` afterwards is ordered after it.
  template <NcclScalar T>
  void all_reduce_sum(std::span<T> x, cudaStream_t stream) {
    NcclComm* self = this;
    all_reduce_group<T>(std::span<NcclComm>(self, 1), std::span<const std::span<T>>(&x, 1),
                        std::span<const cudaStream_t>(&stream, 1), false);
  }
  /// The sum divided by size() (a correctly rounded division on the device, as the host
  /// communicators divide; not ncclAvg, which pre-multiplies by 1/size for floats).
  template <NcclScalar T>
  void all_reduce_average(std::span<T> x, cudaStream_t stream) {
    NcclComm* self = this;
    all_reduce_group<T>(std::span<NcclComm>(self, 1), std::span<const std::span<T>>(&x, 1),
                        std::span<const cudaStream_t>(&stream, 1), true);
  }
  /// In place: every rank ends with rank `root`'s values.
  template <NcclScalar T>
  void broadcast(std::span<T> x, int root, cudaStream_t stream) {
    NcclComm* self = this;
    broadcast_group<T>(std::span<NcclComm>(self, 1), std::span<const std::span<T>>(&x, 1), root,
                       std::span<const cudaStream_t>(&stream, 1));
  }
  /// Returns once every rank has entered it and this rank's earlier collectives are done
  /// (NCCL has no barrier: a one-element all-reduce, then synchronize()).
  void barrier() {
    NcclComm* self = this;
    barrier_group(std::span<NcclComm>(self, 1));
  }
  /// Waits (on the host, bounded by timeout()) until the collectives issued so far on
  /// this communicator are done; throws CommError on an asynchronous NCCL error or the
  /// deadline, after aborting the communicator. Use it instead of cudaStreamSynchronize
  /// where a dead peer must not hang the caller.
  void synchronize() {
    NcclComm* self = this;
    sync_group(std::span<NcclComm>(self, 1), "synchronize");
  }
  /// ncclCommSplit: ranks with the same colour (>= 0) form a new communicator, ordered
  /// by (key, rank), on the same device, with this one's timeout. Collective.
  NcclComm split(int colour, int key) {
    NcclComm* self = this;
    auto children = split_group(std::span<NcclComm>(self, 1), std::span<const int>(&colour, 1),
                                std::span<const int>(&key, 1));
    return std::move(children.front());
  }

  /// Fails the communicator: ncclCommAbort (stops its kernels, frees it); every later
  /// call throws CommError carrying `reason`. Local: the peers learn of it through their
  /// own timeouts or NCCL's error detection.
  void abort(const std::string& reason) noexcept {
    try {
      if (aborted_.empty()) aborted_ = reason.empty() ? std::string("aborted") : reason;
      if (comm_ != nullptr) {
        detail::DeviceGuard guard(device_);
        ADDITIVE_NCCL_LOG(ncclCommAbort(comm_));
      }
    } catch (const std::exception& e) {  // cudaSetDevice failed (or no memory for the reason)
      std::fprintf(stderr, "additive: aborting an NCCL communicator: %s\n", e.what());
    }
    comm_ = nullptr;
  }

 private:
  template <NcclScalar T>
  friend void all_reduce_group(std::span<NcclComm>, std::span<const std::span<T>>,
                               std::span<const cudaStream_t>, bool);
  template <NcclScalar T>
  friend void broadcast_group(std::span<NcclComm>, std::span<const std::span<T>>, int,
                              std::span<const cudaStream_t>);
  friend void barrier_group(std::span<NcclComm>);
  friend void synchronize_group(std::span<NcclComm>);
  friend void finalize_group(std::span<NcclComm>) noexcept;
  friend std::vector<NcclComm> split_group(std::span<NcclComm>, std::span<const int>, std::span<const int>);
  friend class NcclLocalGroup;

  /// The CUDA objects of one rank, created on its device; behind a pointer so that a
  /// move is cheap and the destructor can free them with the right device current.
  struct Resources {
    cuda::Stream stream;
    cuda::Event ready;                   // recorded on the caller's stream before a collective
    cuda::Event done;                    // recorded on `stream` after it
    cuda::DeviceBuffer<float> token{1};  // the barrier's one-element all-reduce
  };

  NcclComm(int device, std::chrono::milliseconds timeout) : device_(device), timeout_(timeout) {
    detail::DeviceGuard guard(device);
    res_ = std::make_unique<Resources>();
  }

  static void check_args(int nranks, int rank, int device, std::chrono::milliseconds timeout) {
    if (nranks < 1 || rank < 0 || rank >= nranks)
      throw CommError("NcclComm: rank " + std::to_string(rank) + " is not in [0, " + std::to_string(nranks) +
                      ")");
    const int devices = cuda::device_count();
    if (device < 0 || device >= devices)
      throw CommError("NcclComm: device " + std::to_string(device) + " is not one of the " +
                      std::to_string(devices) + " CUDA device(s) of this process");
    if (timeout.count() <= 0) throw CommError("NcclComm: the timeout must be positive");
  }

  /// Reads rank and size from NCCL after initialisation or a split.
  void adopt() {
    ADDITIVE_NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    ADDITIVE_NCCL_CHECK(ncclCommCount(comm_, &size_));
  }

  void check_usable(const char* what) const {
    if (!aborted_.empty())
      throw CommError(std::string(what) + ": the NCCL communicator was aborted: " + aborted_);
    if (comm_ == nullptr && res_ == nullptr)
      throw CommError(std::string(what) + ": the NCCL communicator was moved from");
  }

  /// The status of a call on this (non-blocking) communicator: ncclSuccess and
  /// ncclInProgress go on (the wait comes later); anything else aborts and throws.
  void enter(ncclResult_t status, const char* what) {
    if (status == ncclSuccess || status == ncclInProgress) return;
    const std::string last = comm_ != nullptr ? ncclGetLastError(comm_) : ncclGetLastError(nullptr);
    fail_with(NcclError(status, what, __FILE__, __LINE__, last.c_str()));
  }

  template <class Error>
  [[noreturn]] void fail_with(const Error& error) {
    abort(error.what());
    throw error;
  }

  /// Polls the communicator's state until it is no longer ncclInProgress.
  void wait_ready(const char* what) {
    NcclComm* self = this;
    wait_states(std::span<NcclComm>(self, 1), what);
  }

  /// Waits until every communicator's state has left ncclInProgress; an error or the
  /// deadline aborts them all and throws (a group that failed in part cannot go on).
  static void wait_states(std::span<NcclComm> comms, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + max_timeout(comms);
    for (auto& c : comms) {
      ncclResult_t state = ncclInProgress;
      const bool done = detail::poll_until(deadline, [&] {
        const ncclResult_t query = ncclCommGetAsyncError(c.comm_, &state);
        if (query != ncclSuccess) state = query;
        return state != ncclInProgress;
      });
      if (!done) fail_all(comms, timeout_error(c, what));
      if (state != ncclSuccess)
        fail_all(comms, NcclError(state, what, __FILE__, __LINE__, ncclGetLastError(c.comm_)));
    }
  }

  /// Records `done` on each communicator's stream and waits for it (and the NCCL state).
  static void sync_group(std::span<NcclComm> comms, const char* what) {
    for (auto& c : comms) {
      c.check_usable(what);
      detail::DeviceGuard guard(c.device_);
      ADDITIVE_CUDA_CHECK(cudaEventRecord(c.res_->done.get(), c.res_->stream.get()));
    }
    const auto deadline = std::chrono::steady_clock::now() + max_timeout(comms);
    for (auto& c : comms) {
      detail::DeviceGuard guard(c.device_);
      ncclResult_t state = ncclSuccess;
      cudaError_t event = cudaSuccess;
      const bool done = detail::poll_until(deadline, [&] {
        const ncclResult_t query = ncclCommGetAsyncError(c.comm_, &state);
        if (query != ncclSuccess) state = query;
        if (state != ncclSuccess && state != ncclInProgress) return true;
        event = cudaEventQuery(c.res_->done.get());
        return event != cudaErrorNotReady;
      });
      if (!done) fail_all(comms, timeout_error(c, what));
      if (state != ncclSuccess && state != ncclInProgress)
        fail_all(comms, NcclError(state, what, __FILE__, __LINE__, ncclGetLastError(c.comm_)));
      if (event != cudaSuccess) {
        (void)cudaGetLastError();
        fail_all(comms, CommError(std::string(what) + ": CUDA error " + cudaGetErrorName(event) + " (" +
                                  cudaGetErrorString(event) + ") on device " + std::to_string(c.device_)));
      }
    }
  }

  static CommError timeout_error(const NcclComm& c, const char* what) {
    return CommError(std::string(what) + " on NCCL rank " + std::to_string(c.rank_) + " of " +
                     std::to_string(c.size_) + " (device " + std::to_string(c.device_) +
                     ") timed out after " + std::to_string(c.timeout_.count()) +
                     " ms: a peer did not arrive or failed; the communicator was aborted");
  }

  /// Aborts every communicator and throws `error` (its own type: NcclError stays one).
  template <class Error>
  [[noreturn]] static void fail_all(std::span<NcclComm> comms, const Error& error) {
    for (auto& c : comms) c.abort(error.what());
    throw error;
  }

  static std::chrono::milliseconds max_timeout(std::span<NcclComm> comms) {
    std::chrono::milliseconds t{0};
    for (const auto& c : comms) t = std::max(t, c.timeout_);
    return t;
  }

  /// Before a collective: the communicator's stream waits for the caller's stream.
  void order_after(cudaStream_t caller) {
    ADDITIVE_CUDA_CHECK(cudaEventRecord(res_->ready.get(), caller));
    ADDITIVE_CUDA_CHECK(cudaStreamWaitEvent(res_->stream.get(), res_->ready.get(), 0));
  }
  /// After it: the caller's stream waits for the communicator's stream.
  void order_before(cudaStream_t caller) {
    ADDITIVE_CUDA_CHECK(cudaEventRecord(res_->done.get(), res_->stream.get()));
    ADDITIVE_CUDA_CHECK(cudaStreamWaitEvent(caller, res_->done.get(), 0));
  }

  /// Runs `enqueue(comm, i)` for every communicator between ncclGroupStart and
  /// ncclGroupEnd (so that one thread can drive several ranks), each ordered after its
  /// caller stream; waits (bounded) for the NCCL states; then `after(comm, i)` on each
  /// communicator's stream and the callers' streams ordered after.
  template <class Enqueue, class After>
  static void run_group(std::span<NcclComm> comms, std::span<const cudaStream_t> streams, const char* what,
                        Enqueue&& enqueue, After&& after) {
    if (!streams.empty() && streams.size() != comms.size())
      throw CommError(std::string(what) + ": " + std::to_string(streams.size()) + " streams for " +
                      std::to_string(comms.size()) + " communicators");
    const auto caller = [&](std::size_t i) { return streams.empty() ? cudaStream_t{} : streams[i]; };
    for (std::size_t i = 0; i < comms.size(); ++i) {
      comms[i].check_usable(what);
      detail::DeviceGuard guard(comms[i].device_);
      comms[i].order_after(caller(i));
    }
    ADDITIVE_NCCL_CHECK(ncclGroupStart());
    try {
      for (std::size_t i = 0; i < comms.size(); ++i) {
        detail::DeviceGuard guard(comms[i].device_);
        comms[i].enter(enqueue(comms[i], i), what);
      }
    } catch (...) {
      ADDITIVE_NCCL_LOG(ncclGroupEnd());
      throw;
    }
    const ncclResult_t end = ncclGroupEnd();
    if (end != ncclSuccess && end != ncclInProgress)
      fail_all(comms, NcclError(end, "ncclGroupEnd()", __FILE__, __LINE__, ncclGetLastError(nullptr)));
    wait_states(comms, what);
    for (std::size_t i = 0; i < comms.size(); ++i) {
      detail::DeviceGuard guard(comms[i].device_);
      after(comms[i], i);
      comms[i].order_before(caller(i));
    }
  }

  /// Finalizes (bounded) and destroys; aborts instead when finalizing fails or times out.
  void release() noexcept {
    NcclComm* self = this;
    finalize_group(std::span<NcclComm>(self, 1));
  }

  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  int rank_ = 0;
  int size_ = 0;
  std::chrono::milliseconds timeout_ = default_nccl_timeout;
  std::string aborted_;  // why, when aborted
  std::unique_ptr<Resources> res_;
};

// ---------------------------------------------------------------------------------------
// Group operations: several communicators driven by one thread (or fused calls)
// ---------------------------------------------------------------------------------------

/// All-reduce (sum, or the average when `average`) of buffers[i] on comms[i], each on its
/// device and ordered against streams[i] (empty: each device's default stream), issued
/// together between ncclGroupStart and ncclGroupEnd. The ranks of one communicator pass
/// buffers of the same size.
template <NcclScalar T>
void all_reduce_group(std::span<NcclComm> comms, std::span<const std::span<T>> buffers,
                      std::span<const cudaStream_t> streams, bool average) {
  const char* what = average ? "all_reduce_average" : "all_reduce_sum";
  if (buffers.size() != comms.size())
    throw CommError(std::string(what) + ": " + std::to_string(buffers.size()) + " buffers for " +
                    std::to_string(comms.size()) + " communicators");
  // Empty spans are no-ops (all ranks of a communicator have the same count; fused
  // calls on several communicators may have different counts, some empty).
  if (std::all_of(buffers.begin(), buffers.end(), [](const auto& b) { return b.empty(); })) return;
  NcclComm::run_group(
      comms, streams, what,
      [&](NcclComm& c, std::size_t i) {
        if (buffers[i].empty()) return ncclSuccess;
        return ncclAllReduce(buffers[i].data(), buffers[i].data(), buffers[i].size(), detail::nccl_type<T>(),
                             ncclSum, c.comm_, c.res_->stream.get());
      },
      [&](NcclComm& c, std::size_t i) {
        if (!average || c.size_ == 1 || buffers[i].empty()) return;
        const std::size_t n = buffers[i].size();
        const auto blocks = static_cast<unsigned>(std::min<std::size_t>((n + 255) / 256, 4096));
        detail::divide_by<T><<<blocks, 256, 0, c.res_->stream.get()>>>(buffers[i].data(), n, c.size_);
        ADDITIVE_CUDA_CHECK_LAUNCH();
      });
}

/// Broadcast of rank `root`'s buffer (within each communicator) into every buffers[i].
template <NcclScalar T>
void broadcast_group(std::span<NcclComm> comms, std::span<const std::span<T>> buffers, int root,
                     std::span<const cudaStream_t> streams) {
  if (buffers.size() != comms.size())
    throw CommError("broadcast: " + std::to_string(buffers.size()) + " buffers for " +
                    std::to_string(comms.size()) + " communicators");
  for (const auto& c : comms)
    if (root < 0 || root >= c.size())
      throw CommError("broadcast: root " + std::to_string(root) + " is not a rank of a group of " +
                      std::to_string(c.size()));
  if (std::all_of(buffers.begin(), buffers.end(), [](const auto& b) { return b.empty(); })) return;
  NcclComm::run_group(
      comms, streams, "broadcast",
      [&](NcclComm& c, std::size_t i) {
        if (buffers[i].empty()) return ncclSuccess;
        return ncclBroadcast(buffers[i].data(), buffers[i].data(), buffers[i].size(), detail::nccl_type<T>(),
                             root, c.comm_, c.res_->stream.get());
      },
      [](NcclComm&, std::size_t) {});
}

/// Returns once every rank of every communicator has entered it.
inline void barrier_group(std::span<NcclComm> comms) {
  if (comms.empty()) return;
  // Ordered against nothing of the caller's: each communicator's own stream is the
  // "caller" (waiting on its own event is a no-op).
  std::vector<cudaStream_t> own;
  for (const auto& c : comms) own.push_back(c.stream());
  NcclComm::run_group(
      comms, own, "barrier",
      [](NcclComm& c, std::size_t) {
        return ncclAllReduce(c.res_->token.data(), c.res_->token.data(), 1, ncclFloat32, ncclSum, c.comm_,
                             c.res_->stream.get());
      },
      [](NcclComm&, std::size_t) {});
  NcclComm::sync_group(comms, "barrier");
}

/// Waits (bounded) until every communicator's issued collectives are done.
inline void synchronize_group(std::span<NcclComm> comms) { NcclComm::sync_group(comms, "synchronize"); }

/// ncclCommSplit of every communicator (colours[i], keys[i] for comms[i]), issued
/// together: the i-th result is comms[i]'s new communicator.
inline std::vector<NcclComm> split_group(std::span<NcclComm> comms, std::span<const int> colours,
                                         std::span<const int> keys) {
  if (colours.size() != comms.size() || keys.size() != comms.size())
    throw CommError("split: " + std::to_string(colours.size()) + " colours and " +
                    std::to_string(keys.size()) + " keys for " + std::to_string(comms.size()) +
                    " communicators");
  for (const int colour : colours)
    if (colour < 0) throw CommError("split: colour " + std::to_string(colour) + " is negative");
  std::vector<NcclComm> children;
  children.reserve(comms.size());
  for (auto& c : comms) {
    c.check_usable("split");
    children.push_back(NcclComm(c.device_, c.timeout_));
  }
  ADDITIVE_NCCL_CHECK(ncclGroupStart());
  try {
    for (std::size_t i = 0; i < comms.size(); ++i) {
      detail::DeviceGuard guard(comms[i].device_);
      ncclConfig_t config = detail::nonblocking_config();
      comms[i].enter(ncclCommSplit(comms[i].comm_, colours[i], keys[i], &children[i].comm_, &config),
                     "split");
    }
  } catch (...) {
    ADDITIVE_NCCL_LOG(ncclGroupEnd());
    throw;
  }
  const ncclResult_t end = ncclGroupEnd();
  if (end != ncclSuccess && end != ncclInProgress)
    NcclComm::fail_all(comms,
                       NcclError(end, "ncclGroupEnd()", __FILE__, __LINE__, ncclGetLastError(nullptr)));
  NcclComm::wait_states(comms, "split");
  for (auto& child : children)
    if (child.comm_ == nullptr) throw CommError("split: ncclCommSplit returned no communicator");
  NcclComm::wait_states(std::span<NcclComm>(children), "split (new communicator)");
  for (auto& child : children) child.adopt();
  return children;
}

/// Finalizes every communicator together (ncclCommFinalize on all, then a bounded wait
/// until each is quiescent), then destroys them; one that fails or times out is aborted
/// instead. Leaves them empty. Never throws (destructors use it).
inline void finalize_group(std::span<NcclComm> comms) noexcept {
  try {
    for (auto& c : comms) {
      if (c.comm_ == nullptr) continue;
      detail::DeviceGuard guard(c.device_);
      const ncclResult_t status = ncclCommFinalize(c.comm_);
      if (status != ncclSuccess && status != ncclInProgress) {
        std::fprintf(stderr, "additive: ncclCommFinalize failed (%s); aborting the communicator\n",
                     detail::nccl_status_name(status));
        c.abort("ncclCommFinalize failed");
      }
    }
    const auto deadline = std::chrono::steady_clock::now() + NcclComm::max_timeout(comms);
    for (auto& c : comms) {
      if (c.comm_ == nullptr) continue;
      ncclResult_t state = ncclInProgress;
      const bool done = detail::poll_until(deadline, [&] {
        if (ncclCommGetAsyncError(c.comm_, &state) != ncclSuccess) state = ncclInternalError;
        return state != ncclInProgress;
      });
      detail::DeviceGuard guard(c.device_);
      if (done && state == ncclSuccess) {
        ADDITIVE_NCCL_LOG(ncclCommDestroy(c.comm_));
        c.comm_ = nullptr;
      } else {
        std::fprintf(
            stderr,
            "additive: NCCL communicator (rank %d of %d, device %d) did not finalize (%s); aborting it\n",
            c.rank_, c.size_, c.device_, done ? detail::nccl_status_name(state) : "timed out");
        c.abort("finalize failed");
      }
    }
    for (auto& c : comms) {
      if (!c.res_) continue;
      detail::DeviceGuard guard(c.device_);
      c.res_.reset();
    }
  } catch (const std::exception& e) {  // DeviceGuard's cudaSetDevice failed: nothing more to do
    std::fprintf(stderr, "additive: ignoring an error while finalizing NCCL communicators: %s\n", e.what());
  }
}

// ---------------------------------------------------------------------------------------
// NcclLocalGroup: one process (one thread) driving every local GPU
// ---------------------------------------------------------------------------------------

/// One NcclComm per device of one process (rank i on devices[i]), created together and
/// finalized together, with the group versions of the collectives. The thread that owns
/// it issues every collective for all its ranks at once; to drive the ranks from one
/// thread each instead, take the communicators with comms() and hand one to each thread.
class NcclLocalGroup {
 public:
  /// `devices` (default: every device of this process, in order). Built like
  /// ncclCommInitAll (which it is equivalent to: one ncclGetUniqueId, then
  /// ncclCommInitRankConfig for every device inside ncclGroupStart/End), but
  /// ncclCommInitAll takes no config, so its communicators would be blocking and their
  /// waits could not be bounded.
  static NcclLocalGroup create(std::vector<int> devices = {},
                               std::chrono::milliseconds timeout = default_nccl_timeout) {
    if (devices.empty())
      for (int d = 0; d < cuda::device_count(); ++d) devices.push_back(d);
    if (devices.empty()) throw CommError("NcclLocalGroup: this process sees no CUDA device");
    const int n = static_cast<int>(devices.size());
    for (std::size_t i = 0; i < devices.size(); ++i) {
      NcclComm::check_args(n, static_cast<int>(i), devices[i], timeout);
      if (std::count(devices.begin(), devices.end(), devices[i]) > 1)
        throw CommError("NcclLocalGroup: device " + std::to_string(devices[i]) +
                        " is listed twice (NCCL allows one rank per device in a communicator)");
    }
    ncclUniqueId id{};
    ADDITIVE_NCCL_CHECK(ncclGetUniqueId(&id));
    NcclLocalGroup group;
    group.comms_.reserve(devices.size());
    for (const int d : devices) group.comms_.push_back(NcclComm(d, timeout));
    ADDITIVE_NCCL_CHECK(ncclGroupStart());
    try {
      for (int i = 0; i < n; ++i) {
        auto& c = group.comms_[static_cast<std::size_t>(i)];
        detail::DeviceGuard guard(c.device_);
        ncclConfig_t config = detail::nonblocking_config();
        c.enter(ncclCommInitRankConfig(&c.comm_, n, id, i, &config), "ncclCommInitRankConfig");
      }
    } catch (...) {
      ADDITIVE_NCCL_LOG(ncclGroupEnd());
      throw;
    }
    const ncclResult_t end = ncclGroupEnd();
    if (end != ncclSuccess && end != ncclInProgress)
      NcclComm::fail_all(group.comms_,
                         NcclError(end, "ncclGroupEnd()", __FILE__, __LINE__, ncclGetLastError(nullptr)));
    NcclComm::wait_states(group.comms_, "ncclCommInitRankConfig");
    for (auto& c : group.comms_) c.adopt();
    return group;
  }

  NcclLocalGroup(NcclLocalGroup&&) noexcept = default;
  NcclLocalGroup& operator=(NcclLocalGroup&& o) noexcept {
    if (this != &o) {
      finalize_group(comms_);
      comms_ = std::move(o.comms_);
    }
    return *this;
  }
  NcclLocalGroup(const NcclLocalGroup&) = delete;
  NcclLocalGroup& operator=(const NcclLocalGroup&) = delete;
  /// Finalizes all together: one by one, each would wait for the others.
  ~NcclLocalGroup() { finalize_group(comms_); }

  [[nodiscard]] std::size_t size() const { return comms_.size(); }
  [[nodiscard]] NcclComm& operator[](std::size_t i) { return comms_[i]; }
  [[nodiscard]] std::span<NcclComm> comms() { return comms_; }

  /// buffers[i] on rank i's device, ordered against streams[i] (empty: default streams).
  template <NcclScalar T>
  void all_reduce_sum(std::span<const std::span<T>> buffers, std::span<const cudaStream_t> streams = {}) {
    all_reduce_group<T>(comms_, buffers, streams, false);
  }
  template <NcclScalar T>
  void all_reduce_average(std::span<const std::span<T>> buffers, std::span<const cudaStream_t> streams = {}) {
    all_reduce_group<T>(comms_, buffers, streams, true);
  }
  template <NcclScalar T>
  void broadcast(std::span<const std::span<T>> buffers, int root,
                 std::span<const cudaStream_t> streams = {}) {
    broadcast_group<T>(comms_, buffers, root, streams);
  }
  void barrier() { barrier_group(comms_); }
  void synchronize() { synchronize_group(comms_); }
  /// Rank i goes to colour colours[i] with key keys[i]. The result holds every rank's
  /// new communicator (several communicators when the colours differ; the group
  /// functions then run one collective per colour).
  NcclLocalGroup split(std::span<const int> colours, std::span<const int> keys) {
    NcclLocalGroup group;
    group.comms_ = split_group(comms_, colours, keys);
    return group;
  }

 private:
  NcclLocalGroup() = default;
  std::vector<NcclComm> comms_;
};

// ---------------------------------------------------------------------------------------
// NcclHostComm: the host-memory Communicator over an NcclComm
// ---------------------------------------------------------------------------------------

/// Adapts an NcclComm (one rank per thread or process) to Communicator: every collective
/// copies the host span to a device buffer, runs on the NcclComm and copies back, waiting
/// (bounded) before it returns. For small, rare exchanges (start-up checks, seeds,
/// metrics), not for gradients. Borrows the NcclComm it is made from (which must outlive
/// it); split() returns one that owns its new NcclComm.
class NcclHostComm {
 public:
  explicit NcclHostComm(NcclComm& comm) : comm_(&comm) {}

  [[nodiscard]] int rank() const { return comm_->rank(); }
  [[nodiscard]] int size() const { return comm_->size(); }
  [[nodiscard]] NcclComm& device_comm() { return *comm_; }

  template <CommScalar T>
  void all_reduce_sum(std::span<T> x) {
    staged(x, [&](std::span<T> d, cudaStream_t s) { comm_->all_reduce_sum(d, s); });
  }
  template <CommScalar T>
  void all_reduce_average(std::span<T> x) {
    staged(x, [&](std::span<T> d, cudaStream_t s) { comm_->all_reduce_average(d, s); });
  }
  template <CommScalar T>
  void broadcast(std::span<T> x, int root) {
    staged(x, [&](std::span<T> d, cudaStream_t s) { comm_->broadcast(d, root, s); });
  }
  void barrier() { comm_->barrier(); }
  NcclHostComm split(int colour, int key) {
    NcclHostComm out(std::make_unique<NcclComm>(comm_->split(colour, key)));
    return out;
  }

 private:
  explicit NcclHostComm(std::unique_ptr<NcclComm> owned) : comm_(owned.get()), owned_(std::move(owned)) {}

  /// Upload, `op` on the communicator's own stream, bounded wait, download.
  template <CommScalar T, class Op>
  void staged(std::span<T> x, Op&& op) {
    detail::DeviceGuard guard(comm_->device());
    const cudaStream_t s = comm_->stream();
    cuda::DeviceBuffer<T> buffer(x.size());
    if (!x.empty())
      ADDITIVE_CUDA_CHECK(
          cudaMemcpyAsync(buffer.data(), x.data(), buffer.bytes(), cudaMemcpyHostToDevice, s));
    op(buffer.span(), s);
    // The bounded wait first: a copy back into pageable memory would block the host
    // until the collective is done, however long that takes.
    comm_->synchronize();
    if (!x.empty()) {
      ADDITIVE_CUDA_CHECK(
          cudaMemcpyAsync(x.data(), buffer.data(), buffer.bytes(), cudaMemcpyDeviceToHost, s));
      ADDITIVE_CUDA_CHECK(cudaStreamSynchronize(s));
    }
  }

  NcclComm* comm_ = nullptr;
  std::unique_ptr<NcclComm> owned_;  // set by split(): then comm_ points into it
};

static_assert(DeviceCommunicator<NcclComm>);
static_assert(!Communicator<NcclComm>, "device spans must not pass for host spans");
static_assert(Communicator<NcclHostComm>);

/// check_consistent (communicator.hpp) over NCCL: the hash table goes through the device.
inline void check_consistent(NcclComm& comm, std::string_view what, std::string_view description) {
  NcclHostComm host(comm);
  check_consistent(host, what, description);
}

}  // namespace additive::dist
