// Fuzz target: the safetensors reader (io/safetensors.hpp). The input is a file; loading
// it returns a validated file or throws InputError. A file that loads must keep the
// promise of SafetensorsFile: every tensor's bytes lie in its data and match its dtype
// and shape, a read of its own dtype succeeds (any exception there is a finding), a read
// that would change values is an InputError, and the metadata reads back as listed.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "additive/io/safetensors.hpp"

#include "fuzz_support.hpp"

namespace {

using additive::Dtype;
using additive::fuzz::require;

/// Reads tensor `name` of dtype T and checks the element count.
template <class T>
void read_as(const additive::SafetensorsFile& file, const std::string& name, std::size_t numel) {
  const std::vector<T> values = file.read<T>(name);
  require(values.size() == numel, "read: element count != numel");
}

/// A read as T of a tensor of another dtype (one that would change values) must be refused.
template <class T>
void refuse_as(const additive::SafetensorsFile& file, const std::string& name) {
  additive::fuzz::refuses("SafetensorsFile::read of tensor '" + name + "' as another dtype",
                          [&] { (void)file.read<T>(name); });
}

void check(const additive::SafetensorsFile& file) {
  for (const std::string& name : file.names()) {
    require(file.contains(name), "names() lists a tensor contains() denies");
    const additive::TensorInfo& t = file.info(name);
    const auto numel = additive::detail::checked_numel(t.shape);
    require(numel.has_value(), "a shape whose element count overflows");
    require(t.begin <= t.end, "data_offsets that end before they begin");
    require(t.end - t.begin == *numel * additive::dtype_size(t.dtype), "byte range != numel * dtype size");
    require(t.numel() == *numel, "TensorInfo::numel() != product of the shape");
    require(file.bytes(name).size() == t.end - t.begin, "bytes() of another size than data_offsets");
    switch (t.dtype) {
      case Dtype::f32:
        read_as<float>(file, name, *numel);
        read_as<double>(file, name, *numel);  // exact widening
        refuse_as<std::int32_t>(file, name);
        break;
      case Dtype::f64:
        read_as<double>(file, name, *numel);
        refuse_as<float>(file, name);
        break;
      case Dtype::i64:
        read_as<std::int64_t>(file, name, *numel);
        refuse_as<double>(file, name);
        break;
      case Dtype::u8:
        read_as<std::uint8_t>(file, name, *numel);
        refuse_as<float>(file, name);
        break;
      default:
        refuse_as<float>(file, name);
        break;
    }
  }
  for (const auto& [key, value] : file.metadata()) require(file.metadata(key) == value, "metadata(key)");
  const std::string absent = "\x01 absent";
  if (!file.contains(absent))
    additive::fuzz::refuses("SafetensorsFile::info of an absent tensor", [&] { (void)file.info(absent); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const additive::fuzz::ScratchDir scratch;
  const auto path = scratch.write("input.safetensors", std::span<const std::uint8_t>(data, size));
  std::optional<additive::SafetensorsFile> file;
  if (additive::fuzz::reads("SafetensorsFile", [&] { file.emplace(path); })) check(*file);
  return 0;
}
