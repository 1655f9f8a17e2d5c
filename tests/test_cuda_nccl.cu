// ADDITIVE_TEST_TIMEOUT: 300
// The NCCL communicator (dist/nccl_comm.cuh) in one process: one rank on one GPU, and
// with >= 2 GPUs the NcclLocalGroup path (one thread driving every device). All-reduce
// sum and average (float, double, bf16) over sizes 0, 1, odd and large against the host,
// broadcast, split, barrier, check_consistent, and the event ordering against the
// caller's stream. The error-family, concept and argument cases run everywhere; the GPU
// cases skip without a device. The MPI bootstrap is tests/test_cuda_nccl_mpi.cu.
//
// Inputs are multiples of 1/4 in [-250, 250]: every partial sum over <= 8 ranks is exact
// in float, so NCCL's reduction order (which we do not control) cannot change the bits,
// and the expected average is the host's correctly rounded division of the same sum.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "additive/cuda/buffer.cuh"
#include "additive/cuda/stream.cuh"
#include "additive/dist/nccl_comm.cuh"
#include "additive/dist/thread_comm.hpp"

#include "cuda_support.cuh"

namespace {

namespace cu = additive::cuda;
namespace dist = additive::dist;
using additive::CommError;
using dist::NcclComm;
using dist::NcclLocalGroup;

constexpr std::size_t test_sizes[] = {0, 1, 1001, (std::size_t{1} << 22) + 3};

/// Rank `rank`'s input: exact multiples of 1/4, different per rank and per element.
template <class T>
std::vector<T> input(int rank, std::size_t n) {
  std::vector<T> x(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto k =
        static_cast<std::int64_t>((i * 7919 + static_cast<std::size_t>(rank) * 104729 + 13) % 2001) - 1000;
    x[i] = static_cast<T>(static_cast<double>(k) * 0.25);
  }
  return x;
}

/// The elementwise sum over ranks 0..p-1 (exact, see the file comment), divided by p when
/// `average` (the host's correctly rounded division, as the device does it).
template <class T>
std::vector<T> expected(int p, std::size_t n, bool average) {
  std::vector<T> sum(n, T(0));
  for (int r = 0; r < p; ++r) {
    const auto x = input<T>(r, n);
    for (std::size_t i = 0; i < n; ++i) sum[i] += x[i];
  }
  if (average)
    for (auto& v : sum) v /= static_cast<T>(p);
  return sum;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
bool non_trivial(const std::vector<T>& x) {
  for (const T v : x)
    if (v != T(0)) return true;
  return x.empty();  // an empty buffer is trivially fine: the size-0 case checks no-ops
}

/// A one-rank communicator on `device` (the id need not travel anywhere).
NcclComm single_rank(int device = 0) {
  ncclUniqueId id{};
  ADDITIVE_NCCL_CHECK(ncclGetUniqueId(&id));
  return NcclComm::init_rank(id, 1, 0, device);
}

/// True with >= 2 devices; otherwise logs why the calling test case is skipped.
bool two_devices_or_skip() {
  if (cu::device_count() >= 2) return true;
  MESSAGE("skipped: fewer than 2 CUDA devices ("
          << cu::device_count() << "); the NcclLocalGroup path needs 2 or more, it passes vacuously");
  return false;
}

/// Spins for about `cycles` clock cycles, then writes `value` everywhere: a kernel that
/// is still running when the host has already issued the collective behind it.
template <class T>
__global__ void slow_fill(T* x, std::size_t n, T value, long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    x[i] = value;
}

template <class T>
__global__ void times_two(T* x, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    x[i] = x[i] + x[i];
}

}  // namespace

// ------------------------------------------------------------------ everywhere (no device)

TEST_CASE("NcclError carries the status name, NCCL's string, the expression, the file and the line") {
  try {
    ADDITIVE_NCCL_CHECK(ncclInvalidArgument);
    FAIL("no exception");
  } catch (const dist::NcclError& e) {
    const std::string what = e.what();
    CHECK(e.status() == ncclInvalidArgument);
    CHECK(what.find("ncclInvalidArgument") != std::string::npos);
    CHECK(what.find("invalid argument") != std::string::npos);     // ncclGetErrorString
    CHECK(what.find("ADDITIVE_NCCL_CHECK") == std::string::npos);  // the expression, not the macro
    CHECK(what.find("test_cuda_nccl.cu:") != std::string::npos);
  }
  static_assert(std::is_base_of_v<CommError, dist::NcclError>, "a failed collective is a CommError");
}

TEST_CASE("NcclComm is a DeviceCommunicator, not a (host-span) Communicator; NcclHostComm is one") {
  static_assert(dist::DeviceCommunicator<NcclComm>);
  static_assert(!additive::Communicator<NcclComm>);
  static_assert(additive::Communicator<dist::NcclHostComm>);
  static_assert(!dist::DeviceCommunicator<dist::ThreadComm>);
  static_assert(!dist::DeviceCommunicator<int>);
  static_assert(!std::is_copy_constructible_v<NcclComm>);
  static_assert(std::is_nothrow_move_constructible_v<NcclComm>);
  static_assert(std::is_nothrow_move_constructible_v<NcclLocalGroup>);
  static_assert(dist::NcclScalar<__nv_bfloat16> && !dist::NcclScalar<int>);
}

TEST_CASE("the NCCL factories refuse bad arguments with one CommError line") {
  ncclUniqueId id{};
  CHECK_THROWS_WITH_AS(NcclComm::init_rank(id, 2, 3, 0), "NcclComm: rank 3 is not in [0, 2)", CommError);
  CHECK_THROWS_WITH_AS(NcclComm::init_rank(id, 1, 0, 999),
                       doctest::Contains("NcclComm: device 999 is not one of the"), CommError);
  std::vector<float> host(3);
  const std::span<float> one[] = {std::span<float>(host)};
  CHECK_THROWS_WITH_AS(dist::all_reduce_group<float>({}, one, {}),
                       "all_reduce_sum: 1 buffers for 0 communicators", CommError);
  CHECK_THROWS_WITH_AS(dist::broadcast_group<float>({}, one, 0, {}),
                       "broadcast: 1 buffers for 0 communicators", CommError);
  if (cu::device_count() == 0) {
    CHECK_THROWS_WITH_AS(NcclLocalGroup::create(), "NcclLocalGroup: this process sees no CUDA device",
                         CommError);
  } else {
    CHECK_THROWS_WITH_AS(NcclLocalGroup::create({0, 0}), doctest::Contains("device 0 is listed twice"),
                         CommError);
    CHECK_THROWS_WITH_AS(NcclComm::init_rank(id, 1, 0, 0, std::chrono::milliseconds(0)),
                         "NcclComm: the timeout must be positive", CommError);
  }
}

// ------------------------------------------------------------------ one rank, one GPU

TEST_CASE_TEMPLATE("one rank: all-reduce sum and average over sizes 0, 1, odd and large", T, float, double) {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  auto comm = single_rank();
  CHECK(comm.rank() == 0);
  CHECK(comm.size() == 1);
  CHECK(comm.device() == 0);
  cu::Stream stream;
  for (const std::size_t n : test_sizes) {
    CAPTURE(n);
    for (const bool average : {false, true}) {
      CAPTURE(average);
      const auto x = input<T>(0, n);
      REQUIRE(non_trivial(x));
      auto device = cu::to_device(x);
      if (average)
        comm.all_reduce_average(device.span(), stream);
      else
        comm.all_reduce_sum(device.span(), stream);
      const auto got = device.to_host(stream);
      CHECK(same_bits(got, expected<T>(1, n, average)));
    }
  }
  comm.synchronize();
}

TEST_CASE("one rank: bf16 all-reduce") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  auto comm = single_rank();
  cu::Stream stream;
  const auto x = input<float>(0, 1001);
  std::vector<__nv_bfloat16> h(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) h[i] = __float2bfloat16_rn(x[i]);
  auto device = cu::to_device(h);
  comm.all_reduce_sum(device.span(), stream);
  comm.all_reduce_average(device.span(), stream);  // one rank: the values, unchanged
  const auto got = device.to_host(stream);
  CHECK(__bfloat162float(got[1]) != 0.0f);
  CHECK(same_bits(got, h));
}

TEST_CASE("one rank: broadcast, barrier, split, check_consistent") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  auto comm = single_rank();
  cu::Stream stream;
  const auto x = input<double>(0, 1001);
  auto device = cu::to_device(x);
  comm.broadcast(device.span(), 0, stream);
  CHECK(same_bits(device.to_host(stream), x));
  CHECK_THROWS_WITH_AS(comm.broadcast(device.span(), 1, stream),
                       "broadcast: root 1 is not a rank of a group of 1", CommError);
  comm.barrier();

  CHECK_THROWS_WITH_AS(comm.split(-1, 0), "split: colour -1 is negative", CommError);
  auto sub = comm.split(0, 7);  // the refusal above left the parent usable
  CHECK(sub.size() == 1);
  CHECK(sub.rank() == 0);
  CHECK(sub.device() == comm.device());
  sub.all_reduce_average(device.span(), stream);
  CHECK(same_bits(device.to_host(stream), x));
  sub.barrier();

  dist::check_consistent(comm, "parameter layout", "mlp d=64 h=128");
  dist::NcclHostComm host(comm);
  std::vector<float> h = input<float>(0, 5);
  host.all_reduce_average(std::span<float>(h));
  CHECK(same_bits(h, input<float>(0, 5)));
  auto host_sub = host.split(0, 0);
  CHECK(host_sub.size() == 1);
  host_sub.barrier();
}

TEST_CASE("one rank: moved-from and aborted communicators refuse collectives with CommError") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  auto comm = single_rank();
  cu::Stream stream;
  cu::DeviceBuffer<float> buffer(3);
  NcclComm moved = std::move(comm);
  CHECK_THROWS_WITH_AS(comm.all_reduce_sum(buffer.span(), stream), doctest::Contains("moved from"),
                       CommError);
  moved.abort("test abort");
  CHECK(moved.aborted());
  CHECK_THROWS_WITH_AS(moved.all_reduce_sum(buffer.span(), stream),
                       "all_reduce_sum: the NCCL communicator was aborted: test abort", CommError);
  CHECK_THROWS_AS(moved.barrier(), CommError);
}

// ------------------------------------------------------------------ stream ordering

TEST_CASE(
    "a kernel on the caller's stream, the collective, a kernel after it: the collective sees and is seen") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  // With one GPU an in-place one-rank all-reduce moves no data, so this only checks that
  // the chain runs and keeps the values; with >= 2 GPUs a collective that did not wait for
  // slow_fill would sum the -1000s, and a times_two that did not wait for the collective
  // would double a partial result.
  const int p = std::max(1, cu::device_count());
  auto group = p >= 2 ? NcclLocalGroup::create() : NcclLocalGroup::create({0});
  const std::size_t n = (std::size_t{1} << 20) + 1;
  std::vector<cu::Stream> streams;
  std::vector<cu::DeviceBuffer<float>> buffers;
  std::vector<std::span<float>> spans;
  std::vector<cudaStream_t> handles;
  for (std::size_t i = 0; i < group.size(); ++i) {
    dist::detail::DeviceGuard guard(group[i].device());
    streams.emplace_back();
    buffers.push_back(cu::to_device(std::vector<float>(n, -1000.0f)));
    spans.push_back(buffers.back().span());
    handles.push_back(streams.back().get());
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    dist::detail::DeviceGuard guard(group[i].device());
    slow_fill<float><<<64, 256, 0, handles[i]>>>(spans[i].data(), n, static_cast<float>(i + 1), 20'000'000);
    ADDITIVE_CUDA_CHECK_LAUNCH();
  }
  group.all_reduce_sum(std::span<const std::span<float>>(spans), handles);
  for (std::size_t i = 0; i < group.size(); ++i) {
    dist::detail::DeviceGuard guard(group[i].device());
    times_two<float><<<64, 256, 0, handles[i]>>>(spans[i].data(), n);
    ADDITIVE_CUDA_CHECK_LAUNCH();
  }
  const float want = static_cast<float>(group.size() * (group.size() + 1));  // 2 * (1 + ... + p)
  for (std::size_t i = 0; i < group.size(); ++i) {
    dist::detail::DeviceGuard guard(group[i].device());
    const auto got = buffers[i].to_host(handles[i]);
    CAPTURE(i);
    CHECK(got.front() == want);
    CHECK(got.back() == want);
    CHECK(std::count(got.begin(), got.end(), want) == static_cast<std::ptrdiff_t>(n));
  }
}

// ------------------------------------------------------------------ every local GPU

TEST_CASE_TEMPLATE(
    "all local GPUs (NcclLocalGroup): all-reduce sum and average over sizes 0, 1, odd and large", T, float,
    double) {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  if (!two_devices_or_skip()) return;
  auto group = NcclLocalGroup::create();
  const int p = static_cast<int>(group.size());
  for (int r = 0; r < p; ++r) {
    CHECK(group[static_cast<std::size_t>(r)].rank() == r);
    CHECK(group[static_cast<std::size_t>(r)].size() == p);
    CHECK(group[static_cast<std::size_t>(r)].device() == r);
  }
  for (const std::size_t n : test_sizes) {
    CAPTURE(n);
    for (const bool average : {false, true}) {
      CAPTURE(average);
      std::vector<cu::DeviceBuffer<T>> buffers;
      std::vector<std::span<T>> spans;
      for (int r = 0; r < p; ++r) {
        dist::detail::DeviceGuard guard(r);
        buffers.push_back(cu::to_device(input<T>(r, n)));
        spans.push_back(buffers.back().span());
      }
      if (average)
        group.all_reduce_average(std::span<const std::span<T>>(spans));
      else
        group.all_reduce_sum(std::span<const std::span<T>>(spans));
      group.synchronize();
      const auto want = expected<T>(p, n, average);
      REQUIRE(non_trivial(want));
      for (int r = 0; r < p; ++r) {
        dist::detail::DeviceGuard guard(r);
        CAPTURE(r);
        CHECK(same_bits(buffers[static_cast<std::size_t>(r)].to_host(), want));
      }
    }
  }
}

TEST_CASE("all local GPUs: broadcast from every root, barrier, split") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  if (!two_devices_or_skip()) return;
  auto group = NcclLocalGroup::create();
  const int p = static_cast<int>(group.size());
  const std::size_t n = 1001;
  for (int root = 0; root < p; ++root) {
    CAPTURE(root);
    std::vector<cu::DeviceBuffer<double>> buffers;
    std::vector<std::span<double>> spans;
    for (int r = 0; r < p; ++r) {
      dist::detail::DeviceGuard guard(r);
      buffers.push_back(cu::to_device(input<double>(r, n)));
      spans.push_back(buffers.back().span());
    }
    group.broadcast(std::span<const std::span<double>>(spans), root);
    group.synchronize();
    for (int r = 0; r < p; ++r) {
      dist::detail::DeviceGuard guard(r);
      CHECK(same_bits(buffers[static_cast<std::size_t>(r)].to_host(), input<double>(root, n)));
    }
  }
  group.barrier();

  // Colour r % 2, key -r: each sub-group is ordered by descending parent rank.
  std::vector<int> colours, keys;
  for (int r = 0; r < p; ++r) {
    colours.push_back(r % 2);
    keys.push_back(-r);
  }
  auto sub = group.split(colours, keys);
  REQUIRE(sub.size() == group.size());
  std::vector<int> members[2];
  for (int r = 0; r < p; ++r) members[r % 2].push_back(r);
  for (int r = 0; r < p; ++r) {
    const auto& m = members[r % 2];
    CAPTURE(r);
    CHECK(sub[static_cast<std::size_t>(r)].size() == static_cast<int>(m.size()));
    CHECK(sub[static_cast<std::size_t>(r)].rank() ==
          static_cast<int>(m.end() - std::find(m.begin(), m.end(), r)) - 1);
    CHECK(sub[static_cast<std::size_t>(r)].device() == r);
  }
  // One all-reduce per colour, issued together: each rank gets the sum over its colour.
  std::vector<cu::DeviceBuffer<float>> buffers;
  std::vector<std::span<float>> spans;
  for (int r = 0; r < p; ++r) {
    dist::detail::DeviceGuard guard(r);
    buffers.push_back(cu::to_device(input<float>(r, n)));
    spans.push_back(buffers.back().span());
  }
  sub.all_reduce_sum(std::span<const std::span<float>>(spans));
  sub.synchronize();
  for (int r = 0; r < p; ++r) {
    std::vector<float> want(n, 0.0f);
    for (const int q : members[r % 2]) {
      const auto x = input<float>(q, n);
      for (std::size_t i = 0; i < n; ++i) want[i] += x[i];
    }
    dist::detail::DeviceGuard guard(r);
    CAPTURE(r);
    CHECK(same_bits(buffers[static_cast<std::size_t>(r)].to_host(), want));
  }
}

TEST_CASE("all local GPUs, one thread per rank: check_consistent agrees, and names the rank that differs") {
  ADDITIVE_REQUIRE_CUDA_DEVICE();
  if (!two_devices_or_skip()) return;
  auto group = NcclLocalGroup::create();
  const int p = static_cast<int>(group.size());
  for (const bool differ : {false, true}) {
    CAPTURE(differ);
    std::vector<std::string> errors(static_cast<std::size_t>(p));
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < p; ++r) {
        threads.emplace_back([&, r] {
          const std::string description = differ && r == 1 ? "mlp d=64 h=256" : "mlp d=64 h=128";
          try {
            dist::check_consistent(group[static_cast<std::size_t>(r)], "parameter layout", description);
          } catch (const std::exception& e) {
            errors[static_cast<std::size_t>(r)] = e.what();
          }
        });
      }
    }
    for (int r = 0; r < p; ++r) {
      CAPTURE(r);
      const std::string& e = errors[static_cast<std::size_t>(r)];
      if (!differ) {
        CHECK(e.empty());
      } else {
        CHECK(e.find("parameter layout differs between ranks") != std::string::npos);
        CHECK(e.find("ranks {1} agree") != std::string::npos);
      }
    }
  }
}
