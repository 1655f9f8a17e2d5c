// The CUDA side of the train and search drivers (declarations and contract in
// device_runner.hpp). cuda/train.cuh comes first: it sets fmt up for nvcc.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/structure.hpp"
#include "additive/cuda/stream.cuh"
#include "additive/cuda/train.cuh"
#include "additive/nn/families.hpp"

#include "device_runner.hpp"

namespace additive::examples {

namespace {

cuda::DeviceOptions device_options(const CudaDriverOptions& o) {
  cuda::DeviceOptions d;
  d.graphs = o.graphs;
  if (o.precision == "tf32")
    d.precision = cuda::Precision::tf32;
  else if (o.precision == "bf16")
    d.precision = cuda::Precision::bf16;
  else if (o.precision != "fp32")
    throw InputError("--precision: expected fp32, tf32 or bf16, got '" + o.precision + "'");
  return d;
}

}  // namespace

void require_cuda_device() {
  if (cuda::device_count() < 1)
    throw InputError("--device cuda: no CUDA device found (cudaGetDeviceCount reports none)");
}

CudaTrainRun train_on_cuda(const MlpConfig& model, std::uint64_t mask, const TrainOptions& train,
                           const RunOptions& run, const CudaDriverOptions& options, const std::string& resume,
                           const DatasetView& train_data, const DatasetView& val, const DatasetView* test,
                           const std::function<void(std::size_t parameters, std::int64_t step)>& on_start,
                           const std::function<void(const EpochRecord&)>& on_epoch) {
  using F = MlpFamily<4, 2>;
  require_cuda_device();
  cuda::Trainer<F> trainer(model, F::mask_type(mask), train, run, device_options(options));
  if (!resume.empty()) trainer.resume(resume);
  if (on_start) on_start(trainer.layout().total(), trainer.step());
  CudaTrainRun out;
  out.result = trainer.fit(train_data, val, on_epoch);
  if (out.result.finished && test != nullptr) out.test = trainer.evaluate(*test);
  return out;
}

namespace {

template <class F>
DeviceJobRunner runner_for(const MlpConfig& model, const CudaDriverOptions& options) {
  return [model, options](const std::vector<DeviceJob>& jobs, const DatasetView& train,
                          const DatasetView& val, const DeviceJobDone& done) {
    require_cuda_device();
    std::vector<cuda::ConcurrentJob> cj;
    cj.reserve(jobs.size());
    for (const auto& j : jobs) cj.push_back({j.mask, j.train});
    cuda::ConcurrentTrainer<F> trainer(model, RunOptions{.progress = false}, device_options(options),
                                       options.concurrent);
    trainer.fit(cj, train, val,
                [&](std::size_t i, const TrainResult& r, double seconds) { done(i, r, seconds); });
  };
}

}  // namespace

DeviceJobRunner cuda_search_runner(const std::string& family, const MlpConfig& model,
                                   const CudaDriverOptions& options) {
  return with_family(family, [&](auto f) { return runner_for<typename decltype(f)::type>(model, options); });
}

}  // namespace additive::examples
