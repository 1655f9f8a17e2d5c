// The CUDA side of the example drivers, as plain C++ declarations: train and search
// (compiled by the host compiler) call these; examples/cuda/device_runner.cu (compiled
// by nvcc, linked only when the build has ADDITIVE_CUDA, which defines
// ADDITIVE_HAS_CUDA for the drivers) implements them with cuda/train.cuh.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "additive/data/dataset.hpp"
#include "additive/exp/device_runner.hpp"
#include "additive/exp/train.hpp"
#include "additive/nn/mlp.hpp"

namespace additive::examples {

/// --no-graphs / --precision / --concurrent of the drivers.
struct CudaDriverOptions {
  bool graphs = true;              ///< replay each training step as a CUDA graph
  std::string precision = "fp32";  ///< GEMM precision: fp32, tf32 or bf16
  int concurrent = 0;              ///< search: structures trained at once (0: all of a round)
};

/// InputError "--device cuda: no CUDA device ..." where the machine has none.
void require_cuda_device();

struct CudaTrainRun {
  TrainResult result{};
  std::optional<EvalResult> test{};  ///< when `test` was given and the run finished
};

/// The train driver's run on the GPU: MlpFamily<4, 2>, structure `mask`, optionally
/// resumed from `resume` (a CPU or GPU checkpoint). `on_start` sees the parameter count
/// and the step the run starts at.
CudaTrainRun train_on_cuda(const MlpConfig& model, std::uint64_t mask, const TrainOptions& train,
                           const RunOptions& run, const CudaDriverOptions& cuda, const std::string& resume,
                           const DatasetView& train_data, const DatasetView& val, const DatasetView* test,
                           const std::function<void(std::size_t parameters, std::int64_t step)>& on_start,
                           const std::function<void(const EpochRecord&)>& on_epoch);

/// A StructureSearch runner training the jobs concurrently on the GPU, for the search
/// driver's --family (default, branch, no-final-norm).
DeviceJobRunner cuda_search_runner(const std::string& family, const MlpConfig& model,
                                   const CudaDriverOptions& cuda);

}  // namespace additive::examples
