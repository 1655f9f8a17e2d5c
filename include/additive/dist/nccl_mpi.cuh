// The MPI bootstrap of the NCCL communicator: one process per GPU, started by mpirun or a
// cluster launcher; rank 0 makes the NCCL unique id and MPI_Bcast sends it to the others.
// Only code that includes this header needs MPI (link MPI::MPI_CXX), as for
// dist/mpi_comm.hpp; additive::nccl does not carry it.
//
//   additive::dist::MpiEnvironment env(argc, argv);
//   auto mpi = additive::dist::MpiComm::world();
//   auto nccl = additive::dist::nccl_from_mpi(mpi);        // device: local rank mod #devices
#pragma once

#include <chrono>
#include <cstring>
#include <string>

#include "additive/core/error.hpp"
#include "additive/cuda/stream.cuh"
#include "additive/dist/mpi_comm.hpp"
#include "additive/dist/nccl_comm.cuh"

namespace additive::dist {

/// This process's rank among the processes of `comm` on the same node (shared memory):
/// the usual choice of its GPU. Collective over `comm`.
inline int mpi_local_rank(const MpiComm& comm) {
  MPI_Comm local = MPI_COMM_NULL;
  ADDITIVE_MPI_CHECK(
      MPI_Comm_split_type(comm.native(), MPI_COMM_TYPE_SHARED, comm.rank(), MPI_INFO_NULL, &local));
  int rank = 0;
  const int status = MPI_Comm_rank(local, &rank);
  MPI_Comm_free(&local);
  ADDITIVE_MPI_CHECK(status);
  return rank;
}

/// An NcclComm with the ranks of `comm` (same rank numbers, same size). Collective over
/// `comm`. `device` < 0: the local rank modulo the number of devices this process sees.
/// When rank 0 cannot make the id, every rank throws the same CommError (none waits).
inline NcclComm nccl_from_mpi(const MpiComm& comm, int device = -1,
                              std::chrono::milliseconds timeout = default_nccl_timeout) {
  if (device < 0) {
    const int local = mpi_local_rank(comm);
    const int devices = cuda::device_count();
    if (devices == 0)
      throw CommError("nccl_from_mpi: rank " + std::to_string(comm.rank()) + " sees no CUDA device");
    device = local % devices;
  }
  // Rank 0's id, or its error message, in one broadcast: the others never wait for an id
  // that is not coming.
  struct Message {
    ncclUniqueId id;
    int ok;
    char error[512];
  };
  Message message{};
  if (comm.rank() == 0) {
    try {
      ADDITIVE_NCCL_CHECK(ncclGetUniqueId(&message.id));
      message.ok = 1;
    } catch (const std::exception& e) {
      std::strncpy(message.error, e.what(), sizeof(message.error) - 1);
    }
  }
  ADDITIVE_MPI_CHECK(MPI_Bcast(&message, static_cast<int>(sizeof(Message)), MPI_BYTE, 0, comm.native()));
  if (message.ok != 1) throw CommError(std::string("nccl_from_mpi: rank 0 failed: ") + message.error);
  return NcclComm::init_rank(message.id, comm.size(), comm.rank(), device, timeout);
}

}  // namespace additive::dist
