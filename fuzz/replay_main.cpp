// The corpus replay: a main for a fuzz target built without libFuzzer (any compiler), so
// that its seed corpus runs as an ordinary test. Every regular file under the given
// files and directories goes through LLVMFuzzerTestOneInput, in name order; a finding
// aborts, as under libFuzzer. A seed named `ok-*` must be accepted (by one of the
// target's main readers) and one named `bad-*` refused; other names (crash-*, what a
// fuzzer found) carry no expectation. An empty corpus is an error.
//
//   fuzz_<target>_replay [FILE | DIR]...
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg = argv[i];
    if (fs::is_directory(arg)) {
      for (const auto& entry : fs::recursive_directory_iterator(arg))
        if (entry.is_regular_file()) files.push_back(entry.path());
    } else if (fs::is_regular_file(arg)) {
      files.push_back(arg);
    } else {
      std::fprintf(stderr, "replay: %s is neither a file nor a directory\n", arg.c_str());
      return 2;
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "replay: no inputs (give the corpus files or directories)\n");
    return 2;
  }

  int wrong = 0;
  std::size_t accepted = 0;
  for (const fs::path& file : files) {
    const std::vector<std::uint8_t> bytes = read_file(file);
    additive::fuzz::accepted = 0;
    if (additive::fuzz::verbose()) std::fprintf(stderr, "%s\n", file.c_str());
    // A null pointer for the empty input, as libFuzzer may pass.
    LLVMFuzzerTestOneInput(bytes.empty() ? nullptr : bytes.data(), bytes.size());
    const bool ok = additive::fuzz::accepted > 0;
    accepted += ok ? 1 : 0;
    const std::string name = file.filename().string();
    const char* expected = name.starts_with("ok-")    ? "accepted"
                           : name.starts_with("bad-") ? "refused"
                                                      : nullptr;
    const char* got = ok ? "accepted" : "refused";
    const bool mismatch = expected != nullptr && std::string(expected) != got;
    if (mismatch) {
      std::printf("%-9s %s   <-- expected %s\n", got, file.c_str(), expected);
      ++wrong;
    } else {
      std::printf("%-9s %s\n", got, file.c_str());
    }
  }
  std::printf("replay: %zu inputs, %zu accepted, %zu refused, %d not as their names say\n", files.size(),
              accepted, files.size() - accepted, wrong);
  return wrong == 0 ? 0 : 1;
}
