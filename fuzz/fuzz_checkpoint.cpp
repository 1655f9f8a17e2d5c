// Fuzz target: the checkpoint loader (io/checkpoint.hpp) as `train --resume` runs it:
// Trainer::resume (exp/train.hpp) of a small model, which loads the safetensors file
// against the model's layout (tensors, shapes, dtype, no NaN or Inf), checks the run's
// identity (family, widths, mask, training options) and reads the position metadata
// (step, epoch seed, loss sum, RNG state, optimizer moments). Then the file's metadata is
// read field by field as the other engines read it (CheckpointMetadata: counters,
// numbers, JSON, an RNG state). Each read returns or throws InputError.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>

#include "additive/exp/train.hpp"
#include "additive/io/checkpoint.hpp"
#include "additive/io/safetensors.hpp"
#include "additive/nn/mlp.hpp"

#include "fuzz_support.hpp"

namespace {

/// The model of the seed checkpoints (fuzz/make_corpus.py writes them for exactly this
/// family, config, mask and the default TrainOptions): 34 parameters.
using Family = additive::MlpFamily<2, 1>;
using Model = additive::cpu::MlpModel<Family, float>;
const additive::MlpConfig config{.in_dim = 2, .d = 2, .h = 2, .classes = 2};
constexpr std::uint64_t mask = 0x3;

/// Every metadata field through each reader of CheckpointMetadata.
void read_metadata(const std::filesystem::path& path) {
  std::optional<additive::SafetensorsFile> file;
  if (!additive::fuzz::accepts("SafetensorsFile", [&] { file.emplace(path); })) return;
  const additive::CheckpointMetadata read(path, file->metadata());
  for (const auto& entry : file->metadata()) {
    const std::string& key = entry.first;  // (clang 14 cannot capture structured bindings)
    const std::string& value = entry.second;
    additive::fuzz::require(read.contains(key) && read.text(key) == value, "CheckpointMetadata::text");
    additive::fuzz::accepts("CheckpointMetadata::counter", [&] { (void)read.counter(key); });
    additive::fuzz::accepts("CheckpointMetadata::counter (max 2^53)",
                            [&] { (void)read.counter(key, std::uint64_t{1} << 53); });
    additive::fuzz::accepts("CheckpointMetadata::number", [&] {
      const double v = read.number(key, 0, std::numeric_limits<double>::max());
      additive::fuzz::require(v >= 0 && v <= std::numeric_limits<double>::max(), "number out of range");
    });
    additive::fuzz::accepts("CheckpointMetadata::json", [&] { (void)read.json(key); });
    additive::fuzz::accepts("rng_from_string", [&] { (void)additive::rng_from_string(value); });
  }
  const std::string absent = "\x01 absent";
  if (!read.contains(absent))
    additive::fuzz::refuses("CheckpointMetadata::text of an absent key", [&] { (void)read.text(absent); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const additive::fuzz::ScratchDir scratch;
  // One trainer for every input: a refused resume changes nothing, and an accepted one
  // changes nothing that the next resume's checks read (family, widths, mask, options).
  static additive::Trainer<Model> trainer(config, Family::mask_type(mask), additive::TrainOptions{},
                                          additive::RunOptions{.threads = 1, .progress = false});
  const auto path = scratch.write("input.safetensors", std::span<const std::uint8_t>(data, size));
  if (additive::fuzz::reads("Trainer::resume", [&] { trainer.resume(path); }))
    additive::fuzz::require(trainer.step() >= 0 && trainer.step() <= (std::int64_t{1} << 53),
                            "resume: a step outside [0, 2^53]");
  read_metadata(path);
  return 0;
}
