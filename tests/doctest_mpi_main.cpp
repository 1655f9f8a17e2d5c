// doctest's runner for tests labelled `mpi`: every rank runs the same test cases between
// MPI_Init and MPI_Finalize; a rank's exit status is non-zero when any rank failed, so
// mpiexec reports the failure whichever rank saw it.
#define DOCTEST_CONFIG_IMPLEMENT
#define OMPI_SKIP_MPICXX 1  // MPI's C interface only: its C++ bindings do not compile warning-free
#include <doctest/doctest.h>
#include <mpi.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  doctest::Context context(argc, argv);
  const int failed = context.run() != 0 ? 1 : 0;
  int any_failed = failed;
  if (!context.shouldExit()) MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}
