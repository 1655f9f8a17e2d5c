// One error family for the library. `InputError` is what users cause (a bad file, flag,
// mask or checkpoint): its message is one line that names the input and what was
// expected, and drivers turn it into exit code 2. Library code throws, never exits.
#pragma once

#include <stdexcept>
#include <string>

namespace additive {

/// A problem with something the user supplied: a file, a flag, a mask, a checkpoint.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A broken internal invariant or a failed system call that is not the user's fault.
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A failed collective: a rank left or failed, a timeout, ranks that disagree on what to
/// do, or an error status of MPI (the message then carries MPI_Error_string). Every rank
/// that cannot complete a collective gets one, so no rank waits forever.
class CommError : public RuntimeError {
 public:
  using RuntimeError::RuntimeError;
};

}  // namespace additive
