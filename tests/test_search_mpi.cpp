// ADDITIVE_TEST_MPI_NP: 1 2 3
// The structure search on MPI ranks (include/additive/exp/search.hpp on dist::MpiComm):
// the report and the results file equal a one-process search's exactly (==, every run is
// seeded and single-threaded, the records travel exactly); a resume from rank 0's file
// trains only what is missing and ends with the same results; an error on one rank and a
// settings mismatch between ranks are errors on every rank, not a hang.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "additive/dist/mpi_comm.hpp"
#include "additive/exp/search.hpp"

#include "test_support.hpp"

using namespace additive;
using additive::dist::MpiComm;

namespace {

/// The search over family F, trained in float on the CPU.
template <class F>
using Search = StructureSearch<cpu::MlpModel<F, float>>;

using Default = MlpFamily<4, 2, GateLayout::merge_only>;

const MlpConfig model{.in_dim = 20, .d = 8, .h = 16, .classes = 4};
const TrainOptions train{.epochs = 1, .batch = 32, .lr = 5e-3, .seed = 3};
const SearchOptions options{
    .sample = 12, .sample_seed = 1, .seeds = 2, .top_k = 4, .long_epochs = 2, .long_top = 4, .workers = 1};
const nlohmann::json data_identity{{"synthetic", 1}};

ImageDataset synthetic(std::int64_t count, std::uint64_t seed) { return test::synthetic_images(count, seed); }

/// Rank 0's scratch file; only rank 0 touches it (ctest may run np 1, 2, 3 at once).
std::filesystem::path scratch(const MpiComm& comm, const std::string& name) {
  return std::filesystem::temp_directory_path() / ("additive_test_search_mpi_" + std::to_string(comm.size()) +
                                                   "_" + std::to_string(::getpid()) + "_" + name + ".json");
}

/// The runs of a results file without their wall times.
nlohmann::json runs_of(const std::filesystem::path& path) {
  auto j = nlohmann::json::parse(std::ifstream(path));
  for (auto& r : j["runs"]) r.erase("seconds");
  return j["runs"];
}

void check_equal(const SearchReport& a, const SearchReport& b) {
  REQUIRE(a.entries.size() == b.entries.size());
  for (std::size_t i = 0; i < a.entries.size(); ++i) {
    CHECK(a.entries[i].mask == b.entries[i].mask);
    CHECK(a.entries[i].acc_mean == b.entries[i].acc_mean);
    CHECK(a.entries[i].acc_std == b.entries[i].acc_std);
    CHECK(a.entries[i].loss_mean == b.entries[i].loss_mean);
    CHECK(a.entries[i].loss_std == b.entries[i].loss_std);
  }
  REQUIRE(a.trust.has_value());
  REQUIRE(b.trust.has_value());
  CHECK(a.trust->masks == b.trust->masks);
  CHECK(a.trust->long_acc == b.trust->long_acc);
  CHECK(a.trust->tau == b.trust->tau);
}

}  // namespace

TEST_CASE("a search on MPI ranks equals a one-process search, and resumes from rank 0's file") {
  MpiComm comm = MpiComm::world();
  const auto train_set = synthetic(96, 1);
  const auto val_set = synthetic(48, 2);
  const DatasetView tv(train_set), vv(val_set);
  const auto path = scratch(comm, "ranks");

  Search<Default> ranked(model, train, options);
  const auto got = ranked.run(comm, tv, vv, path, false, data_identity, false);
  // Every rank trained its share and ends with every record: the same report everywhere.
  CHECK(ranked.runs_trained() == 12 * 2 + 4);
  CHECK(ranked.epochs_trained() == 12 * 2 * 1 + 4 * 2);

  SearchReport want;
  nlohmann::json want_runs, kept;
  if (comm.rank() == 0) {
    const auto ref_path = scratch(comm, "one");
    Search<Default> one(model, train, options);
    want = one.run(tv, vv, ref_path, false, data_identity, false);
    // Non-trivial: the structures do not all score alike.
    CHECK(want.entries.front().acc_mean > want.entries.back().acc_mean);
    check_equal(got, want);
    const auto runs = runs_of(path);
    CHECK(runs.size() == 12 * 2 + 4);
    want_runs = runs_of(ref_path);
    CHECK(runs == want_runs);
    std::filesystem::remove(ref_path);

    // A killed search leaves the file as it was after some finished runs: keep 5.
    auto j = nlohmann::json::parse(std::ifstream(path));
    j["runs"] = nlohmann::json(std::vector<nlohmann::json>(j["runs"].begin(), j["runs"].begin() + 5));
    j["complete"] = false;
    j.erase("report");
    std::ofstream(path) << j.dump();
    kept = runs_of(path);
  }
  comm.barrier();

  Search<Default> resumed(model, train, options);
  const auto again = resumed.run(comm, tv, vv, path, true, data_identity, false);
  CHECK(resumed.runs_trained() == 12 * 2 + 4 - 5);
  if (comm.rank() == 0) {
    check_equal(again, want);
    const auto runs = runs_of(path);
    CHECK(runs == want_runs);
    CHECK(nlohmann::json::parse(std::ifstream(path))["complete"] == true);
    for (const auto& r : kept) CHECK(std::find(runs.begin(), runs.end(), r) != runs.end());
  }

  // Resume refuses rank 0's file of another search, on every rank.
  TrainOptions other = train;
  other.lr = 1e-2;
  Search<Default> wrong(model, other, options);
  CHECK_THROWS_WITH_AS(wrong.run(comm, tv, vv, path, true, data_identity, false),
                       doctest::Contains("other train settings"), InputError);
  comm.barrier();
  if (comm.rank() == 0) std::filesystem::remove(path);
}

TEST_CASE("a failure on one rank is the same error on every rank; ranks that disagree stop at once") {
  MpiComm comm = MpiComm::world();
  const auto train_set = synthetic(96, 1);
  const auto val_set = synthetic(48, 2);
  const ImageDataset empty{0, 4, 5, 4, {}, {}};
  const bool last = comm.rank() == comm.size() - 1;
  // The last rank's training set is empty: its first run throws, the others' succeed.
  const DatasetView tv = last ? DatasetView(empty) : DatasetView(train_set);
  const DatasetView vv(val_set);
  Search<Default> s(model, train, options);
  CHECK_THROWS_WITH_AS(s.run(comm, tv, vv, {}, false, data_identity, false),
                       doctest::Contains("training set is empty"), InputError);

  // Settings that differ between ranks: a CommError before any training, on every rank.
  if (comm.size() > 1) {
    TrainOptions mine = train;
    if (last) mine.lr = 1e-2;
    Search<Default> d(model, mine, options);
    CHECK_THROWS_WITH_AS(d.run(comm, DatasetView(train_set), vv, {}, false, data_identity, false),
                         doctest::Contains("search settings"), CommError);
  }
}
