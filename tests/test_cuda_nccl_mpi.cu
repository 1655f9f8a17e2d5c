// ADDITIVE_TEST_MPI_NP: 1 2
// ADDITIVE_TEST_TIMEOUT: 120
// The MPI bootstrap of the NCCL communicator (dist/nccl_mpi.cuh): one process per GPU,
// the unique id sent by MPI_Bcast. All-reduce sum and average over sizes 0, 1, odd and
// large against the host, broadcast from every root, split, barrier, check_consistent
// (and its error naming the rank that differs). Every case skips, on every rank alike,
// where there are fewer CUDA devices than ranks (NCCL allows one rank per device): here
// without a GPU it checks only that the MPI + NCCL path builds, links and starts.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "additive/cuda/buffer.cuh"
#include "additive/cuda/stream.cuh"
#include "additive/dist/mpi_comm.hpp"
#include "additive/dist/nccl_mpi.cuh"

namespace {

namespace cu = additive::cuda;
namespace dist = additive::dist;
using additive::CommError;

/// Multiples of 1/4 in [-250, 250]: sums over a few ranks are exact in any order.
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

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// True where every rank can have its own device; the same answer on every rank.
bool enough_devices_or_skip(const dist::MpiComm& mpi) {
  const int devices = cu::device_count();
  if (devices >= mpi.size()) return true;
  MESSAGE("skipped: " << devices << " CUDA device(s) for " << mpi.size()
                      << " MPI rank(s) (NCCL needs one device per rank); this GPU test passes vacuously");
  return false;
}

}  // namespace

TEST_CASE_TEMPLATE("MPI-bootstrapped NCCL: all-reduce sum and average over sizes 0, 1, odd and large", T,
                   float, double) {
  auto mpi = dist::MpiComm::world();
  if (!enough_devices_or_skip(mpi)) return;
  auto comm = dist::nccl_from_mpi(mpi);
  REQUIRE(comm.rank() == mpi.rank());
  REQUIRE(comm.size() == mpi.size());
  const int p = comm.size();
  cu::Stream stream;
  for (const std::size_t n :
       {std::size_t{0}, std::size_t{1}, std::size_t{1001}, (std::size_t{1} << 22) + 3}) {
    CAPTURE(n);
    for (const bool average : {false, true}) {
      CAPTURE(average);
      auto device = cu::to_device(input<T>(comm.rank(), n));
      if (average)
        comm.all_reduce_average(device.span(), stream);
      else
        comm.all_reduce_sum(device.span(), stream);
      std::vector<T> want(n, T(0));
      for (int r = 0; r < p; ++r) {
        const auto x = input<T>(r, n);
        for (std::size_t i = 0; i < n; ++i) want[i] += x[i];
      }
      if (average)
        for (auto& v : want) v /= static_cast<T>(p);
      CHECK(same_bits(device.to_host(stream), want));
    }
  }
  comm.synchronize();
}

TEST_CASE("MPI-bootstrapped NCCL: broadcast from every root, split, barrier, check_consistent") {
  auto mpi = dist::MpiComm::world();
  if (!enough_devices_or_skip(mpi)) return;
  auto comm = dist::nccl_from_mpi(mpi);
  const int p = comm.size(), r = comm.rank();
  cu::Stream stream;
  for (int root = 0; root < p; ++root) {
    CAPTURE(root);
    auto device = cu::to_device(input<double>(r, 1001));
    comm.broadcast(device.span(), root, stream);
    CHECK(same_bits(device.to_host(stream), input<double>(root, 1001)));
  }
  comm.barrier();

  auto sub = comm.split(r % 2, -r);  // ordered by descending parent rank
  int members = 0, above = 0;
  for (int q = 0; q < p; ++q) {
    members += q % 2 == r % 2;
    above += q % 2 == r % 2 && q > r;
  }
  CHECK(sub.size() == members);
  CHECK(sub.rank() == above);
  sub.barrier();

  dist::check_consistent(comm, "parameter layout", "mlp d=64 h=128");
  if (p >= 2) {
    const std::string description = r == 1 ? "mlp d=64 h=256" : "mlp d=64 h=128";
    CHECK_THROWS_WITH_AS(dist::check_consistent(comm, "parameter layout", description),
                         doctest::Contains("ranks {1} agree"), CommError);
  }
}
