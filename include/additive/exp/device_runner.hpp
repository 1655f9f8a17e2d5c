// The seam between the experiment engines (compiled by the host compiler) and an
// accelerator backend (compiled elsewhere, e.g. by nvcc): a list of training jobs goes
// in, each job's TrainResult comes out as it finishes. The engines hold a runner as a
// std::function and never see the backend's headers; a driver built with the backend
// sets it (examples/cuda/device_runner.hpp gives the CUDA one).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "additive/data/dataset.hpp"
#include "additive/exp/train.hpp"

namespace additive {

/// One structure to train: its mask (bits) and the complete training options (seed,
/// epochs, ...). Its initial weights, batches and schedule follow from these as in
/// additive::Trainer.
struct DeviceJob {
  std::uint64_t mask = 0;
  TrainOptions train{};
};

/// Called once per job as it finishes (any order; always on the runner's calling
/// thread): the job's index, its result, and the wall seconds from its start to its end.
using DeviceJobDone = std::function<void(std::size_t job, const TrainResult& result, double seconds)>;

/// Trains every job on `train`, evaluating on `val` after each epoch, and reports each
/// through `done`. Throws what the training throws (InputError for bad input).
using DeviceJobRunner = std::function<void(const std::vector<DeviceJob>& jobs, const DatasetView& train,
                                           const DatasetView& val, const DeviceJobDone& done)>;

}  // namespace additive
