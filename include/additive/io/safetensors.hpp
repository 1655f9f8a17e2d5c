// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON header (padded with spaces), then the
// tensor bytes, contiguous, row-major, little-endian. `SafetensorsWriter` writes files
// atomically; `SafetensorsFile` loads one and validates all of it, so every later access
// is in bounds. Every problem with a file is an `InputError` of one line that names it.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <numeric>
#include <optional>
#include <ranges>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#ifdef __unix__
#include <unistd.h>
#endif

#include "additive/core/error.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/io/json.hpp"

namespace additive {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O copies tensor bytes as they are: it needs a little-endian host");

/// Element types of the format. Every type of whole bytes is known; sub-byte types
/// (F4, F6_*) are not supported and read as an unknown dtype.
enum class Dtype : std::uint8_t {
  boolean,
  u8,
  i8,
  f8_e5m2,
  f8_e4m3,
  f8_e8m0,
  i16,
  u16,
  f16,
  bf16,
  i32,
  u32,
  f32,
  c64,
  f64,
  i64,
  u64
};

namespace detail {

struct DtypeInfo {
  Dtype dtype;
  std::string_view name;  // as written in the header
  std::size_t size;       // bytes per element
};

// One table, in enum order, feeds names, sizes and parsing.
inline constexpr std::array<DtypeInfo, 17> dtype_table{{
    {Dtype::boolean, "BOOL", 1},
    {Dtype::u8, "U8", 1},
    {Dtype::i8, "I8", 1},
    {Dtype::f8_e5m2, "F8_E5M2", 1},
    {Dtype::f8_e4m3, "F8_E4M3", 1},
    {Dtype::f8_e8m0, "F8_E8M0", 1},
    {Dtype::i16, "I16", 2},
    {Dtype::u16, "U16", 2},
    {Dtype::f16, "F16", 2},
    {Dtype::bf16, "BF16", 2},
    {Dtype::i32, "I32", 4},
    {Dtype::u32, "U32", 4},
    {Dtype::f32, "F32", 4},
    {Dtype::c64, "C64", 8},
    {Dtype::f64, "F64", 8},
    {Dtype::i64, "I64", 8},
    {Dtype::u64, "U64", 8},
}};

static_assert(
    [] {
      for (std::size_t i = 0; i < dtype_table.size(); ++i)
        if (static_cast<std::size_t>(dtype_table[i].dtype) != i) return false;
      return true;
    }(),
    "dtype_table must list the Dtype enumerators in declaration order");

}  // namespace detail

/// The header name of a dtype ("F32").
constexpr std::string_view dtype_name(Dtype d) {
  return detail::dtype_table[static_cast<std::size_t>(d)].name;
}

/// Bytes per element.
constexpr std::size_t dtype_size(Dtype d) { return detail::dtype_table[static_cast<std::size_t>(d)].size; }

/// The dtype of a header name, or nothing for an unknown name.
constexpr std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const auto& info : detail::dtype_table)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

/// The C++ types that map to a dtype: `DtypeOf<T>::value`.
template <class T>
struct DtypeOf;
template <>
struct DtypeOf<float> {
  static constexpr Dtype value = Dtype::f32;
};
template <>
struct DtypeOf<double> {
  static constexpr Dtype value = Dtype::f64;
};
template <>
struct DtypeOf<std::int8_t> {
  static constexpr Dtype value = Dtype::i8;
};
template <>
struct DtypeOf<std::uint8_t> {
  static constexpr Dtype value = Dtype::u8;
};
template <>
struct DtypeOf<std::int16_t> {
  static constexpr Dtype value = Dtype::i16;
};
template <>
struct DtypeOf<std::uint16_t> {
  static constexpr Dtype value = Dtype::u16;
};
template <>
struct DtypeOf<std::int32_t> {
  static constexpr Dtype value = Dtype::i32;
};
template <>
struct DtypeOf<std::uint32_t> {
  static constexpr Dtype value = Dtype::u32;
};
template <>
struct DtypeOf<std::int64_t> {
  static constexpr Dtype value = Dtype::i64;
};
template <>
struct DtypeOf<std::uint64_t> {
  static constexpr Dtype value = Dtype::u64;
};

/// A C++ element type with a safetensors dtype (typed reads and writes accept these).
template <class T>
concept TensorScalar = requires {
  DtypeOf<T>::value;
}
&&sizeof(T) == dtype_size(DtypeOf<T>::value);

template <TensorScalar T>
inline constexpr Dtype dtype_of = DtypeOf<T>::value;

namespace detail {

/// "[2, 3]"; "[]" for a scalar.
inline std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// The element count of `shape`, or nothing on overflow (or a negative dimension).
inline std::optional<std::uint64_t> checked_numel(std::span<const std::int64_t> shape) {
  std::uint64_t n = 1;
  for (const std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d == 0) return 0;
  }
  for (const std::int64_t d : shape) {
    const auto u = static_cast<std::uint64_t>(d);
    if (n > std::numeric_limits<std::uint64_t>::max() / u) return std::nullopt;
    n *= u;
  }
  return n;
}

/// Header lengths above this are refused as absurd (the reference implementation's limit).
inline constexpr std::uint64_t safetensors_max_header = 100'000'000;

}  // namespace detail

/// A contiguous range of a `TensorScalar` that a writer may keep a view of: an lvalue, or
/// a view (a span) of memory that outlives it. Temporaries such as `std::vector<float>{}`
/// are refused at compile time, since their memory would be gone before `write`.
template <class R>
concept TensorSource = std::ranges::contiguous_range<R> &&
    TensorScalar<std::remove_cv_t<std::ranges::range_value_t<R>>> &&
    (std::is_lvalue_reference_v<R> || std::ranges::borrowed_range<R>);

/// Builds a safetensors file from named tensors and string metadata. The writer keeps
/// views, not copies: the tensors' memory must stay alive and unchanged until `write`.
/// Tensors are laid out by decreasing element size (then in the order added), so each
/// one starts aligned to its element size; the header's key order is alphabetical.
class SafetensorsWriter {
 public:
  /// Adds a tensor of dtype `dtype_of<T>` from a contiguous range of `T` (a vector, a
  /// span, an array) whose size is the product of `shape`.
  template <TensorSource R>
  SafetensorsWriter& add(std::string_view name, const std::vector<std::int64_t>& shape, R&& data) {
    using T = std::remove_cv_t<std::ranges::range_value_t<R>>;
    const std::span<const T> view(std::ranges::data(data), std::ranges::size(data));
    return add_bytes(std::string(name), dtype_of<T>, shape, std::as_bytes(view));
  }

  /// Adds a tensor of any dtype from its raw little-endian bytes.
  SafetensorsWriter& add_bytes(std::string name, Dtype dtype, std::vector<std::int64_t> shape,
                               std::span<const std::byte> bytes) {
    const std::string where = "safetensors writer: tensor '" + detail::printable(name) + "': ";
    if (name == "__metadata__") throw InputError(where + "the name is reserved for the metadata");
    for (const auto& e : entries_)
      if (e.name == name) throw InputError(where + "added twice");
    const auto numel = detail::checked_numel(shape);
    if (!numel) throw InputError(where + "invalid shape " + detail::shape_string(shape));
    if (*numel * dtype_size(dtype) != bytes.size())
      throw InputError(where + "shape " + detail::shape_string(shape) + " of " +
                       std::string(dtype_name(dtype)) + " needs " +
                       std::to_string(*numel * dtype_size(dtype)) + " bytes, the data has " +
                       std::to_string(bytes.size()));
    entries_.push_back({std::move(name), dtype, std::move(shape), bytes});
    return *this;
  }

  /// Sets (or replaces) a metadata entry.
  SafetensorsWriter& set_metadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
    return *this;
  }

  /// Writes the file atomically (see `write_file_atomically`).
  void write(const std::filesystem::path& path) const {
    std::vector<std::size_t> order(entries_.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return dtype_size(entries_[a].dtype) > dtype_size(entries_[b].dtype);
    });

    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const std::size_t i : order) {
      const Entry& e = entries_[i];
      nlohmann::json entry = nlohmann::json::object();
      entry["dtype"] = std::string(dtype_name(e.dtype));
      entry["shape"] = e.shape;
      entry["data_offsets"] = nlohmann::json::array({offset, offset + e.bytes.size()});
      header[e.name] = std::move(entry);
      offset += e.bytes.size();
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::type_error&) {
      throw InputError("cannot write '" + path.string() +
                       "': a tensor name or metadata string is not valid UTF-8");
    }
    text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned

    std::array<std::byte, 8> length{};
    const auto n = static_cast<std::uint64_t>(text.size());
    for (std::size_t i = 0; i < 8; ++i) length[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);

    write_file_atomically(path, [&](FileSink& sink) {
      sink.write(length);
      sink.write(text);
      for (const std::size_t i : order) sink.write(entries_[i].bytes);
    });
  }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<std::int64_t> shape;
    std::span<const std::byte> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// What the header says about one tensor.
struct TensorInfo {
  Dtype dtype = Dtype::f32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  ///< data_offsets, relative to the start of the data buffer
  std::uint64_t end = 0;

  [[nodiscard]] std::size_t numel() const {
    return static_cast<std::size_t>((end - begin) / dtype_size(dtype));
  }
};

/// A safetensors file loaded into memory and validated: the header is well-formed JSON
/// with known dtypes, every shape matches its byte range, and the ranges tile the data
/// buffer exactly (no overlap, no gap, nothing after the last tensor), as the reference
/// implementation demands. Any violation is an `InputError` naming the file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) {
    std::ifstream in = open();
    parse(in);      // the header, checked against the file's size before any data is read
    read_data(in);  // then the tensors' bytes
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// The metadata value of `key`, or nothing.
  [[nodiscard]] std::optional<std::string> metadata(std::string_view key) const {
    const auto it = metadata_.find(std::string(key));
    if (it == metadata_.end()) return std::nullopt;
    return it->second;
  }

  /// Tensor names in alphabetical order.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, info] : tensors_) out.push_back(name);
    return out;
  }

  [[nodiscard]] bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

  /// Dtype, shape and byte range of tensor `name`; `InputError` if there is none.
  [[nodiscard]] const TensorInfo& info(std::string_view name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) fail("no tensor named '" + detail::printable(name) + "'");
    return it->second;
  }

  [[nodiscard]] Dtype dtype(std::string_view name) const { return info(name).dtype; }
  [[nodiscard]] const std::vector<std::int64_t>& shape(std::string_view name) const {
    return info(name).shape;
  }

  /// The raw little-endian bytes of tensor `name` (valid while this object lives).
  [[nodiscard]] std::span<const std::byte> bytes(std::string_view name) const {
    const TensorInfo& t = info(name);
    return std::span<const std::byte>(data_).subspan(static_cast<std::size_t>(t.begin),
                                                     static_cast<std::size_t>(t.end - t.begin));
  }

  /// Copies tensor `name` into `out`, which must hold exactly its element count. The
  /// dtype must be `dtype_of<T>`, or F32 when `T` is double (exact); anything else would
  /// change values and is an `InputError` naming the tensor.
  template <TensorScalar T>
  void read_into(std::string_view name, std::span<T> out) const {
    const TensorInfo& t = info(name);
    const std::string where = "tensor '" + detail::printable(name) + "' ";
    if (out.size() != t.numel())
      fail(where + "has " + std::to_string(t.numel()) + " elements (shape " + detail::shape_string(t.shape) +
           "), the destination holds " + std::to_string(out.size()));
    const auto src = bytes(name);
    if (t.dtype == dtype_of<T>) {
      if (!src.empty()) std::memcpy(out.data(), src.data(), src.size());
      return;
    }
    if constexpr (std::is_same_v<T, double>) {
      if (t.dtype == Dtype::f32) {
        for (std::size_t i = 0; i < out.size(); ++i) {
          float f;
          std::memcpy(&f, src.data() + i * sizeof(float), sizeof(float));
          out[i] = static_cast<double>(f);
        }
        return;
      }
    }
    fail(where + "is " + std::string(dtype_name(t.dtype)) + ", it cannot be read exactly as " +
         std::string(dtype_name(dtype_of<T>)));
  }

  /// `read_into` a new vector.
  template <TensorScalar T>
  [[nodiscard]] std::vector<T> read(std::string_view name) const {
    std::vector<T> out(info(name).numel());
    read_into<T>(name, out);
    return out;
  }

  /// Throws the `InputError` this file's problems use: "safetensors file '<path>': <what>".
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError("safetensors file '" + path_.string() + "': " + what);
  }

 private:
  std::ifstream open() {
    std::error_code ec;
    const auto status = std::filesystem::status(path_, ec);
    if (!std::filesystem::exists(status)) fail("no such file");
    if (!std::filesystem::is_regular_file(status)) fail("not a regular file");
    file_size_ = std::filesystem::file_size(path_, ec);
    if (ec) fail("cannot determine its size");
    std::ifstream in(path_, std::ios::binary);
    if (!in) fail("cannot open it for reading");
    return in;
  }

  /// Reads and checks the header: nothing of the data is read (or allocated) before the
  /// header's tensors are known to tile exactly the rest of the file.
  void parse(std::ifstream& in) {
    const std::uint64_t size = file_size_;
    if (size < 8)
      fail("file is too short (" + std::to_string(size) + " bytes) to hold the 8-byte header length");
    std::array<unsigned char, 8> length{};
    if (!in.read(reinterpret_cast<char*>(length.data()), 8)) fail("read error");
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < 8; ++i) n |= std::uint64_t{length[i]} << (8 * i);
    if (n > detail::safetensors_max_header)
      fail("header length " + std::to_string(n) + " is absurd (the limit is " +
           std::to_string(detail::safetensors_max_header) + " bytes)");
    if (n > size - 8)
      fail("header length " + std::to_string(n) + " runs past the end of the file (" +
           std::to_string(size - 8) + " bytes follow the length)");
    buffer_start_ = 8 + n;
    const std::uint64_t buffer_size = size - buffer_start_;
    std::string text(static_cast<std::size_t>(n), '\0');
    if (n > 0 && !in.read(text.data(), static_cast<std::streamsize>(n))) fail("read error");

    const nlohmann::json header = parse_json(text.data(), n);
    if (!header.is_object()) fail("the header is not a JSON object");

    struct Range {
      std::uint64_t begin, end;
      const std::string* name;
    };
    std::vector<Range> ranges;
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        parse_metadata(value);
        continue;
      }
      TensorInfo t = parse_tensor(key, value, buffer_size);
      const auto [it, inserted] = tensors_.emplace(key, std::move(t));
      ranges.push_back({it->second.begin, it->second.end, &it->first});
    }

    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t covered = 0;
    for (std::size_t i = 0; i < ranges.size(); ++i) {
      const Range& r = ranges[i];
      if (r.begin < covered)
        fail("tensors '" + detail::printable(*ranges[i - 1].name) + "' and '" + detail::printable(*r.name) +
             "' overlap (data_offsets begin at " + std::to_string(r.begin) + " before the previous ends at " +
             std::to_string(covered) + ")");
      if (r.begin > covered)
        fail("gap of " + std::to_string(r.begin - covered) + " bytes before tensor '" +
             detail::printable(*r.name) + "' (tensors must be contiguous)");
      covered = r.end;
    }
    if (covered != buffer_size)
      fail(std::to_string(buffer_size - covered) + " bytes after the last tensor belong to no tensor");
  }

  /// The data buffer, `file_size_ - buffer_start_` bytes that the header has accounted for;
  /// more than this machine's memory is refused before allocating.
  void read_data(std::ifstream& in) {
    const std::uint64_t n = file_size_ - buffer_start_;
#ifdef __unix__
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0 && n / static_cast<std::uint64_t>(page) >= static_cast<std::uint64_t>(pages))
      fail("its tensors take " + std::to_string(n) + " bytes, more than this machine's memory (" +
           std::to_string(static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page)) + " bytes)");
#endif
    try {
      data_.resize(static_cast<std::size_t>(n));
    } catch (const std::bad_alloc&) {
      fail("cannot allocate the " + std::to_string(n) + " bytes of its tensors");
    }
    if (n > 0 && !in.read(reinterpret_cast<char*>(data_.data()), static_cast<std::streamsize>(n)))
      fail("read error (the file is shorter than it was)");
  }

  // Parses the header, refusing duplicate keys (which JSON libraries silently merge).
  [[nodiscard]] nlohmann::json parse_json(const char* text, std::uint64_t n) const {
    std::vector<std::set<std::string>> open_objects;
    std::string duplicate;
    const nlohmann::json::parser_callback_t callback = [&](int, nlohmann::json::parse_event_t event,
                                                           nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      if (event == Event::object_start) {
        open_objects.emplace_back();
      } else if (event == Event::object_end) {
        if (!open_objects.empty()) open_objects.pop_back();
      } else if (event == Event::key && !open_objects.empty() && duplicate.empty() && parsed.is_string()) {
        if (!open_objects.back().insert(parsed.get<std::string>()).second)
          duplicate = parsed.get<std::string>();
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = parse_json_limited(std::string_view(text, static_cast<std::size_t>(n)),
                                  "safetensors file '" + path_.string() + "': the header", callback);
    } catch (const nlohmann::json::exception& e) {
      fail("the header is not valid JSON: " + detail::printable(e.what(), 120));
    }
    if (!duplicate.empty()) fail("the header has the key '" + detail::printable(duplicate) + "' twice");
    return header;
  }

  void parse_metadata(const nlohmann::json& value) {
    if (value.is_null()) return;  // the reference implementation accepts a null map
    if (!value.is_object()) fail("__metadata__ is not a JSON object");
    for (const auto& [k, v] : value.items()) {
      if (!v.is_string())
        fail("metadata '" + detail::printable(k) + "' is not a string (found " + v.type_name() + ")");
      metadata_.emplace(k, v.get<std::string>());
    }
  }

  [[nodiscard]] TensorInfo parse_tensor(const std::string& name, const nlohmann::json& value,
                                        std::uint64_t buffer_size) const {
    const std::string where = "tensor '" + detail::printable(name) + "': ";
    if (!value.is_object()) fail(where + "the entry is not a JSON object");
    for (const auto& [field, unused] : value.items())
      if (field != "dtype" && field != "shape" && field != "data_offsets")
        fail(where + "unknown field '" + detail::printable(field) + "'");

    TensorInfo t;
    const auto dtype = value.find("dtype");
    if (dtype == value.end()) fail(where + "missing dtype");
    if (!dtype->is_string()) fail(where + "dtype is not a string");
    const auto parsed = parse_dtype(dtype->get_ref<const std::string&>());
    if (!parsed)
      fail(where + "unknown dtype '" + detail::printable(dtype->get_ref<const std::string&>()) + "'");
    t.dtype = *parsed;

    const auto shape = value.find("shape");
    if (shape == value.end()) fail(where + "missing shape");
    if (!shape->is_array()) fail(where + "shape is not an array");
    for (const auto& d : *shape) {
      if (!d.is_number_unsigned() ||
          d.get<std::uint64_t>() > std::uint64_t{std::numeric_limits<std::int64_t>::max()})
        fail(where + "shape " + json_echo(*shape) + " has an entry that is not a non-negative integer");
      t.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
    }

    const auto offsets = value.find("data_offsets");
    if (offsets == value.end()) fail(where + "missing data_offsets");
    if (!offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned())
      fail(where + "data_offsets " + json_echo(*offsets) + " is not a pair of non-negative integers");
    t.begin = (*offsets)[0].get<std::uint64_t>();
    t.end = (*offsets)[1].get<std::uint64_t>();
    const std::string range = "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.begin > t.end) fail(where + range + " end before they begin");
    if (t.end > buffer_size)
      fail(where + range + " run past the end of the data buffer (" + std::to_string(buffer_size) +
           " bytes)");

    const auto numel = detail::checked_numel(t.shape);
    const std::uint64_t bytes = t.end - t.begin;
    const std::uint64_t size = dtype_size(t.dtype);
    if (!numel || bytes % size != 0 || *numel != bytes / size) {
      const bool representable = numel && *numel <= std::numeric_limits<std::uint64_t>::max() / size;
      fail(where + range + " hold " + std::to_string(bytes) + " bytes, but " +
           std::string(dtype_name(t.dtype)) + " shape " + detail::shape_string(t.shape) + " needs " +
           (representable ? std::to_string(*numel * size) : std::string("more than 2^64")));
    }
    return t;
  }

  std::filesystem::path path_;
  std::uint64_t file_size_ = 0;
  std::vector<std::byte> data_;     // the data buffer (the file after its header)
  std::uint64_t buffer_start_ = 0;  // where the data buffer starts in the file
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace additive
