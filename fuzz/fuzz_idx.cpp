// Fuzz target: the IDX readers (data/idx.hpp). Every input is read as an images file and
// as a labels file, as it is and, unless it already is gzip data, gzip-compressed by the
// target (so that mutations of the IDX content also reach the inflating path whole). Each
// read returns consistent data or throws InputError.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <vector>

#include "additive/data/idx.hpp"

#include "fuzz_support.hpp"

namespace {

using additive::fuzz::require;

/// `bytes` as one gzip member (fast compression: the target needs valid streams, not small ones).
std::vector<std::uint8_t> gzip(std::span<const std::uint8_t> bytes) {
  z_stream zs{};
  if (deflateInit2(&zs, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    additive::fuzz::finding("deflateInit2 failed");
  std::vector<std::uint8_t> out(deflateBound(&zs, static_cast<uLong>(bytes.size())));
  zs.next_in = const_cast<Bytef*>(bytes.data());  // zlib does not write through next_in
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  out.resize(out.size() - zs.avail_out);
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) additive::fuzz::finding("deflate did not finish");
  return out;
}

/// Both readers on the file at `path` (`raw_size`: its size when it is not gzip data).
void read_both(const std::filesystem::path& path, std::optional<std::size_t> raw_size) {
  additive::fuzz::reads("read_idx_images", [&] {
    const additive::IdxImages im = additive::read_idx_images(path);
    require(im.count > 0 && im.rows > 0 && im.cols > 0, "images: a zero dimension");
    require(im.rows * im.cols <= additive::kIdxMaxImagePixels, "images: an image above 2^20 pixels");
    const auto pixels = static_cast<std::size_t>(im.count * im.rows * im.cols);
    require(im.pixels.size() == pixels, "images: pixel count != count * rows * cols");
    require(!raw_size || *raw_size == 16 + pixels, "images: a raw file of other than 16 + pixels bytes");
  });
  additive::fuzz::reads("read_idx_labels", [&] {
    const std::vector<std::uint8_t> labels = additive::read_idx_labels(path);
    require(!labels.empty(), "labels: none");
    require(!raw_size || *raw_size == 8 + labels.size(), "labels: a raw file of other than 8 + count bytes");
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const additive::fuzz::ScratchDir scratch;
  const std::span<const std::uint8_t> input(data, size);
  const bool is_gzip = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  read_both(scratch.write("input-idx", input), is_gzip ? std::nullopt : std::optional<std::size_t>(size));
  if (!is_gzip) read_both(scratch.write("input-idx.gz", gzip(input)), std::nullopt);
  return 0;
}
