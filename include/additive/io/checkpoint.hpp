// Checkpoints: the flat parameter buffer, the optimizer's state buffers and the run's
// metadata in one safetensors file, written atomically. Each layout tensor is saved
// under its name with its shape, optimizer buffer `s` of tensor `t` as `optim.<s>.<t>`.
// Loading checks the file against the expected layout and changes nothing unless all of
// it is valid.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "additive/core/error.hpp"
#include "additive/core/params.hpp"
#include "additive/io/json.hpp"
#include "additive/io/safetensors.hpp"

namespace additive {

/// The `format` metadata of every checkpoint this header writes.
inline constexpr std::string_view checkpoint_format = "additive-checkpoint-1";

/// Metadata every checkpoint carries. `save_checkpoint` adds `format` and `dtype` itself;
/// the caller supplies `step` and `epoch` (unsigned decimal integers) and `rng` (from
/// `rng_to_string`). Other keys (`structure`, `config`, ...) are free-form strings.
inline constexpr std::string_view checkpoint_required_metadata[] = {"format", "dtype", "step", "epoch",
                                                                    "rng"};

/// The scalar types a checkpoint stores: float as F32, double as F64.
template <class T>
concept CheckpointScalar = std::same_as<T, float> || std::same_as<T, double>;

/// What a checkpoint holds, as views into the caller's buffers. `save_checkpoint` reads
/// them; `load_checkpoint` fills the spans (which must already have the layout's size)
/// and replaces `metadata` with the file's.
template <CheckpointScalar T>
struct CheckpointState {
  const ParamLayout* layout = nullptr;
  std::span<T> params;                                                ///< layout.total() elements
  std::vector<std::pair<std::string, std::span<T>>> optimizer_state;  ///< e.g. {"m", m}, {"v", v}
  std::map<std::string, std::string> metadata;  ///< step, epoch, rng, structure, config, ...
};

/// The state of `rng` as text (the standard `operator<<` form).
inline std::string rng_to_string(const std::mt19937_64& rng) {
  std::ostringstream os;
  os << rng;
  return os.str();
}

/// The engine whose state `text` is (from `rng_to_string`). `InputError` unless `text`
/// is exactly the right number of unsigned 64-bit decimal numbers separated by spaces.
inline std::mt19937_64 rng_from_string(std::string_view text) {
  static const std::size_t expected = [] {
    std::istringstream is(rng_to_string(std::mt19937_64{}));
    std::size_t n = 0;
    for (std::string token; is >> token;) ++n;
    return n;
  }();
  auto fail = [](const std::string& what) -> void {
    throw InputError("malformed std::mt19937_64 state: " + what);
  };
  std::size_t count = 0;
  bool all_zero = true;
  std::size_t i = 0;
  while (i < text.size()) {
    if (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r') {
      ++i;
      continue;
    }
    const std::size_t start = i;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
    if (i == start ||
        (i < text.size() && text[i] != ' ' && text[i] != '\n' && text[i] != '\t' && text[i] != '\r'))
      fail("found '" + detail::printable(text.substr(start, 20)) +
           "' where an unsigned decimal number belongs");
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data() + start, text.data() + i, value);
    if (ec != std::errc{} || end != text.data() + i)
      fail("number " + std::to_string(count + 1) + " does not fit in 64 bits");
    if (count < std::mt19937_64::state_size && value != 0) all_zero = false;
    ++count;
  }
  if (count != expected)
    fail("expected " + std::to_string(expected) + " numbers, found " + std::to_string(count));
  if (all_zero) fail("the state words are all zero");
  std::mt19937_64 rng;
  std::istringstream is{std::string(text)};
  is >> rng;
  if (is.fail()) fail("the standard library refused it");
  return rng;
}

/// A checkpoint's metadata read field by field, for the engines that resume from it:
/// every value that is missing, does not parse or is out of range is an InputError of one
/// line, "checkpoint '<path>': metadata '<key>' ...", that echoes the value short.
class CheckpointMetadata {
 public:
  CheckpointMetadata(std::filesystem::path path, const std::map<std::string, std::string>& meta)
      : path_(std::move(path)), meta_(&meta) {}

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

  /// "checkpoint '<path>': <what>".
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError("checkpoint '" + path_.string() + "': " + what);
  }

  /// "checkpoint '<path>': metadata '<key>' <what>".
  [[noreturn]] void fail(std::string_view key, const std::string& what) const {
    fail("metadata '" + std::string(key) + "' " + what);
  }

  [[nodiscard]] bool contains(std::string_view key) const { return meta_->contains(std::string(key)); }

  /// The value of `key` as it is.
  [[nodiscard]] const std::string& text(std::string_view key) const {
    const auto it = meta_->find(std::string(key));
    if (it == meta_->end()) fail("missing metadata '" + std::string(key) + "'");
    return it->second;
  }

  /// An unsigned decimal integer in [0, max].
  [[nodiscard]] std::uint64_t counter(std::string_view key,
                                      std::uint64_t max = std::numeric_limits<std::uint64_t>::max()) const {
    const std::string& v = text(key);
    std::uint64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (v.empty() || end != v.data() + v.size() ||
        (ec != std::errc{} && ec != std::errc::result_out_of_range))
      fail(key, "is '" + detail::printable(v, echo_limit) + "', expected an unsigned integer");
    if (ec == std::errc::result_out_of_range || out > max)
      fail(key, "is " + detail::printable(v, echo_limit) + ", more than " + std::to_string(max));
    return out;
  }

  /// A finite decimal number in [lo, hi].
  [[nodiscard]] double number(std::string_view key, double lo, double hi) const {
    const std::string& v = text(key);
    double out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (v.empty() || ec != std::errc{} || end != v.data() + v.size() || !std::isfinite(out) || out < lo ||
        out > hi) {
      std::ostringstream range;
      if (hi == std::numeric_limits<double>::max())
        range << ">= " << lo;
      else
        range << "in [" << lo << ", " << hi << "]";
      fail(key, "is '" + detail::printable(v, echo_limit) + "', expected a finite number " + range.str());
    }
    return out;
  }

  /// The value parsed as JSON (nested at most json_max_depth levels).
  [[nodiscard]] nlohmann::json json(std::string_view key) const {
    const std::string& v = text(key);
    try {
      return parse_json_limited(v,
                                "checkpoint '" + path_.string() + "': metadata '" + std::string(key) + "'");
    } catch (const nlohmann::json::exception&) {
      fail(key, "is not JSON");
    }
  }

 private:
  std::filesystem::path path_;
  const std::map<std::string, std::string>* meta_;
};

namespace detail {

inline std::string checkpoint_tensor_name(std::string_view state, std::string_view tensor) {
  return "optim." + std::string(state) + "." + std::string(tensor);
}

/// True for a non-empty string of decimal digits that fits in 64 bits.
inline bool is_counter(std::string_view s) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && ec == std::errc{} && end == s.data() + s.size() && s.front() != '+' &&
         s.front() != '-';
}

/// The first non-finite element of `data` as "NaN at index 5 (element [1, 2])", or "".
template <class T>
std::string first_non_finite(std::span<const T> data, const std::vector<std::int64_t>& shape) {
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (std::isfinite(data[i])) continue;
    std::vector<std::int64_t> index(shape.size());
    std::size_t rest = i;
    for (std::size_t k = shape.size(); k-- > 0;) {
      const auto d = static_cast<std::size_t>(shape[k]);
      index[k] = static_cast<std::int64_t>(rest % d);
      rest /= d;
    }
    const std::string what = std::isnan(data[i]) ? "NaN" : (data[i] > 0 ? "+Inf" : "-Inf");
    return what + " at index " + std::to_string(i) + " (element " + shape_string(index) + ")";
  }
  return {};
}

/// Optimizer buffers read from checkpoint `read.path()`: a second moment (a state named
/// "v", or ending in "_v": "inner_v", "rank1_v") holds squares, so a negative element
/// is an InputError naming the file, not a divergence many steps later.
template <class T>
void check_optimizer_state(const CheckpointMetadata& read,
                           const std::vector<std::pair<std::string, std::span<T>>>& state) {
  for (const auto& [name, buffer] : state) {
    if (name != "v" && !name.ends_with("_v")) continue;
    for (std::size_t i = 0; i < buffer.size(); ++i)
      if (buffer[i] < T(0)) {
        std::ostringstream value;
        value << double(buffer[i]);
        read.fail("optimizer state '" + name + "' (a second moment) is " + value.str() + " at index " +
                  std::to_string(i) + ", expected >= 0");
      }
  }
}

/// Checks what the calling code passes in: a layout, buffers of its size, usable state names.
template <class T>
void check_checkpoint_state(std::string_view who, const CheckpointState<T>& s) {
  auto fail = [&](const std::string& what) { throw InputError(std::string(who) + ": " + what); };
  if (s.layout == nullptr) fail("no parameter layout given");
  const std::size_t total = s.layout->total();
  if (s.params.size() != total)
    fail("params has " + std::to_string(s.params.size()) + " elements, the layout has " +
         std::to_string(total));
  std::set<std::string_view> names;
  for (const auto& [name, buffer] : s.optimizer_state) {
    if (name.empty() || name.find('.') != std::string::npos)
      fail("optimizer state name '" + printable(name) + "' must be non-empty and contain no '.'");
    if (!names.insert(name).second) fail("optimizer state '" + name + "' given twice");
    if (buffer.size() != total)
      fail("optimizer state '" + name + "' has " + std::to_string(buffer.size()) +
           " elements, the layout has " + std::to_string(total));
  }
}

}  // namespace detail

/// Writes `state` to `path` atomically (the previous file survives any failure). Throws
/// `InputError` for a state that does not fit its layout, for missing or malformed
/// required metadata, and for a NaN or Inf in any buffer: a diverged run must not
/// replace the last good checkpoint with one that cannot be resumed.
template <CheckpointScalar T>
void save_checkpoint(const std::filesystem::path& path, const CheckpointState<T>& state) {
  const std::string who = "save_checkpoint '" + path.string() + "'";
  detail::check_checkpoint_state(who, state);
  auto fail = [&](const std::string& what) { throw InputError(who + ": " + what); };

  const std::string dtype(dtype_name(dtype_of<T>));
  const std::map<std::string, std::string, std::less<>> own = {{"format", std::string(checkpoint_format)},
                                                               {"dtype", dtype}};
  for (const auto& [key, value] : own) {
    const auto it = state.metadata.find(key);
    if (it == state.metadata.end() || it->second == value) continue;
    std::string what = "metadata '" + key + "' is '" + detail::printable(it->second);
    what += "', but this checkpoint is '" + value + "'";
    fail(what);
  }
  for (const std::string_view key : checkpoint_required_metadata) {
    if (own.contains(key)) continue;
    const auto it = state.metadata.find(std::string(key));
    if (it == state.metadata.end()) fail("missing metadata '" + std::string(key) + "'");
    if (key == "rng") {
      try {
        (void)rng_from_string(it->second);
      } catch (const InputError& e) {
        fail("metadata 'rng': " + std::string(e.what()));
      }
    } else if (!detail::is_counter(it->second)) {
      fail("metadata '" + std::string(key) + "' is '" + detail::printable(it->second) +
           "', expected an unsigned integer");
    }
  }

  const ParamLayout& layout = *state.layout;
  auto check_finite = [&](const std::string& name, std::span<const T> data, const TensorSpec& t) {
    const std::string bad = detail::first_non_finite(data, t.shape);
    if (!bad.empty()) fail("refusing to save tensor '" + name + "': " + bad);
  };
  SafetensorsWriter writer;
  for (const TensorSpec& t : layout.tensors()) {
    const auto data = state.params.subspan(t.offset, t.size);
    check_finite(t.name, data, t);
    writer.add(t.name, t.shape, data);
  }
  for (const auto& [name, buffer] : state.optimizer_state) {
    for (const TensorSpec& t : layout.tensors()) {
      const auto data = buffer.subspan(t.offset, t.size);
      const std::string full = detail::checkpoint_tensor_name(name, t.name);
      check_finite(full, data, t);
      writer.add(full, t.shape, data);
    }
  }
  for (const auto& [key, value] : state.metadata) writer.set_metadata(key, value);
  for (const auto& [key, value] : own) writer.set_metadata(key, value);
  writer.write(path);
}

/// Loads the checkpoint at `path` into `into`: the spans receive the parameters and the
/// requested optimizer buffers, `metadata` becomes the file's. The file must match
/// `*into.layout` exactly (every tensor, its shape and dtype; no tensor the layout does
/// not know; buffers of optimizer states not requested are ignored), hold no NaN or Inf,
/// and carry the required metadata. Otherwise `InputError` naming the file and the
/// problem, and `into` is unchanged.
template <CheckpointScalar T>
void load_checkpoint(const std::filesystem::path& path, CheckpointState<T>& into) {
  detail::check_checkpoint_state("load_checkpoint '" + path.string() + "'", into);
  const SafetensorsFile file(path);
  auto fail = [&](const std::string& what) {
    throw InputError("checkpoint '" + path.string() + "': " + what);
  };

  const std::string dtype(dtype_name(dtype_of<T>));
  const auto format = file.metadata("format");
  if (!format) fail("missing metadata 'format' (not an additive checkpoint)");
  if (*format != checkpoint_format)
    fail("metadata 'format' is '" + detail::printable(*format) + "', expected '" +
         std::string(checkpoint_format) + "'");
  for (const std::string_view key : checkpoint_required_metadata)
    if (!file.metadata(key)) fail("missing metadata '" + std::string(key) + "'");
  if (*file.metadata("dtype") != dtype)
    fail("stored as " + detail::printable(*file.metadata("dtype")) + ", expected " + dtype);
  for (const std::string_view key : {"step", "epoch"}) {
    const std::string value = *file.metadata(key);
    if (!detail::is_counter(value))
      fail("metadata '" + std::string(key) + "' is '" + detail::printable(value) +
           "', expected an unsigned integer");
  }
  try {
    (void)rng_from_string(*file.metadata("rng"));
  } catch (const InputError& e) {
    fail("metadata 'rng': " + std::string(e.what()));
  }

  // Every expected tensor with its exact shape and dtype; nothing unexpected.
  const ParamLayout& layout = *into.layout;
  std::set<std::string, std::less<>> layout_names;
  for (const TensorSpec& t : layout.tensors()) layout_names.insert(t.name);
  auto expect = [&](const std::string& name, const TensorSpec& t) {
    if (!file.contains(name)) fail("missing tensor '" + name + "'");
    const TensorInfo& found = file.info(name);
    if (found.shape != t.shape)
      fail("tensor '" + name + "' has shape " + detail::shape_string(found.shape) + ", expected " +
           detail::shape_string(t.shape));
    if (found.dtype != dtype_of<T>)
      fail("tensor '" + name + "' is " + std::string(dtype_name(found.dtype)) + ", expected " + dtype);
  };
  for (const TensorSpec& t : layout.tensors()) expect(t.name, t);
  for (const auto& [state, buffer] : into.optimizer_state)
    for (const TensorSpec& t : layout.tensors()) expect(detail::checkpoint_tensor_name(state, t.name), t);
  for (const std::string& name : file.names()) {
    if (layout_names.contains(name)) continue;
    const std::string_view rest = std::string_view(name).substr(name.starts_with("optim.") ? 6 : name.size());
    const std::size_t dot = rest.find('.');
    if (dot == std::string_view::npos || dot == 0 || !layout_names.contains(rest.substr(dot + 1)))
      fail("unexpected tensor '" + detail::printable(name) + "' (the model's layout has no such tensor)");
  }

  // Read everything into temporaries, check it, then copy (nothing below throws).
  std::vector<T> params(layout.total());
  std::vector<std::vector<T>> buffers(into.optimizer_state.size(), std::vector<T>(layout.total()));
  auto read = [&](const std::string& name, const TensorSpec& t, std::vector<T>& dest) {
    const std::span<T> part = std::span<T>(dest).subspan(t.offset, t.size);
    file.read_into<T>(name, part);
    const std::string bad = detail::first_non_finite<T>(part, t.shape);
    if (!bad.empty()) fail("tensor '" + name + "' has " + bad);
  };
  for (const TensorSpec& t : layout.tensors()) read(t.name, t, params);
  for (std::size_t s = 0; s < into.optimizer_state.size(); ++s)
    for (const TensorSpec& t : layout.tensors())
      read(detail::checkpoint_tensor_name(into.optimizer_state[s].first, t.name), t, buffers[s]);
  std::map<std::string, std::string> metadata = file.metadata();

  std::copy(params.begin(), params.end(), into.params.begin());
  for (std::size_t s = 0; s < buffers.size(); ++s)
    std::copy(buffers[s].begin(), buffers[s].end(), into.optimizer_state[s].second.begin());
  into.metadata.swap(metadata);
}

}  // namespace additive
