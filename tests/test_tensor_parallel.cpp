// Tensor-parallel MLP on thread ranks (include/additive/dist/tensor_parallel.hpp), float64.
// For EVERY structure of three small families (S = 4 and S = 2, with and without the final
// norm): loss and logits equal the single-process cpu::MlpModel's to 1e-12 relative; the
// gathered gradient (shard slices back in the flat layout, replicated tensors from rank 0)
// equals MlpModel::backward's to 1e-12, with exact zeros for skipped blocks; replicated
// gradients, loss and logits are bit-identical on every rank and a rerun is bit-identical;
// each rank makes exactly the segment all-reduces its structure needs (none for skipped
// blocks or one-shard segments) and splits each block pattern once; the traffic matches
// nn/cost.hpp's model (each active segment all-reduced once forward and once backward); a wrong
// rank count or ranks that disagree on the model are clear errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "additive/cpu/mlp_model.hpp"
#include "additive/dist/tensor_parallel.hpp"
#include "additive/dist/thread_comm.hpp"
#include "additive/nn/cost.hpp"

#include "test_support.hpp"

using namespace additive;
using dist::ThreadComm;
using dist::TpCollective;
using dist::TpPhase;

namespace {

/// What one rank produced for one structure.
struct RankStep {
  double loss = 0;
  std::vector<double> logits;
  std::vector<double> grads;  // the rank's shard layout
  std::vector<TpCollective> log;
  double forward_sent = 0, backward_sent = 0;  // TensorParallelMlp::bytes_sent
};

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

template <class F>
void check_family(const MlpConfig& c, Index batch, std::uint64_t seed) {
  constexpr int S = F::shards;
  constexpr std::uint64_t count = F::mask_type::count;
  cpu::MlpModel<F, double> model(c, 1);
  const auto params = test::random_params<double>(model.layout(), seed);
  const auto x = test::random_inputs<double>(c.in_dim, batch, seed + 1);
  const auto y = test::random_labels(batch, c.classes, seed + 2);
  const MatView<const double> xv(x.data(), c.in_dim, batch);
  const ParamLayout local_layout = mlp_layout(dist::shard_config(c, S), F::blocks);
  std::size_t replicated_count = 0;
  for (std::size_t i = 0; i < local_layout.tensors().size(); ++i)
    replicated_count += dist::is_sharded_tensor(c, F::blocks, S, i) ? 0 : local_layout.tensors()[i].size;

  // The shards: extract, then gather back, gives the parameters again.
  std::vector<std::vector<double>> local(S, std::vector<double>(local_layout.total()));
  std::vector<double> regathered(params.size(), -1.0);
  for (int j = 0; j < S; ++j) {
    dist::extract_shard<double>(c, F::blocks, S, j, params, local[static_cast<std::size_t>(j)]);
    dist::insert_shard<double>(c, F::blocks, S, j, local[static_cast<std::size_t>(j)], regathered, j == 0);
  }
  REQUIRE(same_bits(regathered, params));

  // Every structure on S thread ranks, then every third again: the second pass must
  // reuse the splits and reproduce the first pass bit for bit.
  std::vector<std::vector<RankStep>> out(S, std::vector<RankStep>(count));
  std::vector<std::size_t> splits_first(S), splits_second(S);
  std::vector<int> rerun_differs(S, 0);
  dist::run_threads(S, [&](ThreadComm& comm) {
    const auto j = static_cast<std::size_t>(comm.rank());
    dist::TensorParallelMlp<F, double, ThreadComm> tp(c, comm);
    REQUIRE(tp.layout().total() == local_layout.total());
    std::vector<double> g(tp.layout().total());
    for (std::uint64_t bits = 0; bits < count; ++bits) {
      RankStep& r = out[j][bits];
      r.loss = tp.forward(typename F::mask_type(bits), local[j], xv, y);
      r.logits = test::to_vector(tp.logits());
      tp.backward(local[j], g);
      r.grads = g;
      r.log = tp.collectives();
      r.forward_sent = tp.bytes_sent(TpPhase::forward);
      r.backward_sent = tp.bytes_sent(TpPhase::backward);
    }
    splits_first[j] = tp.splits();
    for (std::uint64_t bits = 0; bits < count; bits += 3) {  // a third of them
      const double loss = tp.forward(typename F::mask_type(bits), local[j], xv, y);
      tp.backward(local[j], g);
      if (loss != out[j][bits].loss || !same_bits(g, out[j][bits].grads)) rerun_differs[j] = 1;
    }
    splits_second[j] = tp.splits();
  });

  // One split per merge pattern that has a segment of two or more shards.
  for (int j = 0; j < S; ++j) {
    CHECK(splits_first[static_cast<std::size_t>(j)] == (std::size_t{1} << (S - 1)) - 1);
    CHECK(splits_second[static_cast<std::size_t>(j)] == splits_first[static_cast<std::size_t>(j)]);
    CHECK(rerun_differs[static_cast<std::size_t>(j)] == 0);
  }

  std::vector<double> ref_grads(params.size()), gathered(params.size());
  double worst_loss = 0, worst_logits = 0, worst_grads = 0;
  for (std::uint64_t bits = 0; bits < count; ++bits) {
    const auto m = typename F::mask_type(bits);
    CAPTURE(F::to_string(m));
    const double ref_loss = model.forward(m, params, xv, y);
    const auto ref_logits = test::to_vector(model.logits());
    model.backward(params, ref_grads);
    REQUIRE(test::max_abs<double>(ref_grads) > 1e-3);  // not vacuous

    // Loss and logits: every rank the same bits, equal to the model to rounding.
    for (int j = 0; j < S; ++j) {
      const RankStep& r = out[static_cast<std::size_t>(j)][bits];
      CHECK(r.loss == out[0][bits].loss);
      CHECK(same_bits(r.logits, out[0][bits].logits));
    }
    const RankStep& r0 = out[0][bits];
    worst_loss = std::max(worst_loss, std::abs(r0.loss - ref_loss) / std::abs(ref_loss));
    CHECK(std::abs(r0.loss - ref_loss) <= 1e-12 * std::abs(ref_loss));
    const double logit_err =
        test::max_abs_diff<double>(r0.logits, ref_logits) / test::max_abs<double>(ref_logits);
    worst_logits = std::max(worst_logits, logit_err);
    CHECK(logit_err <= 1e-12);

    // Gradient: shards from their ranks, replicated tensors from rank 0 (and the same
    // bits on every rank).
    std::fill(gathered.begin(), gathered.end(), std::nan(""));
    for (int j = 0; j < S; ++j) {
      const auto& gj = out[static_cast<std::size_t>(j)][bits].grads;
      dist::insert_shard<double>(c, F::blocks, S, j, gj, gathered, j == 0);
      for (std::size_t i = 0; i < local_layout.tensors().size(); ++i)
        if (const auto& t = local_layout.tensors()[i]; !dist::is_sharded_tensor(c, F::blocks, S, i))
          CHECK(std::memcmp(gj.data() + t.offset, r0.grads.data() + t.offset, t.size * sizeof(double)) == 0);
    }
    const double grad_err =
        test::max_abs_diff<double>(gathered, ref_grads) / test::max_abs<double>(ref_grads);
    worst_grads = std::max(worst_grads, grad_err);
    CHECK(grad_err <= 1e-12);
    std::size_t nonzero_in_skipped = 0;  // skipped blocks: exact zeros, as the model
    for (const auto& t : model.layout().tensors()) {
      const int l = t.name.starts_with("blocks.") ? std::stoi(t.name.substr(7)) : -1;
      if (l >= 0 && !F::block(m, l).residual())
        for (std::size_t i = 0; i < t.size; ++i) nonzero_in_skipped += gathered[t.offset + i] != 0.0 ? 1 : 0;
    }
    CHECK(nonzero_in_skipped == 0);

    // Collectives of each rank: per active block one forward and one backward
    // all-reduce of (d, batch) among its segment when the segment has >= 2 shards;
    // nothing for skipped blocks; then the logits and the replicated gradients.
    double forward_model_bytes = 0;  // nn/cost.hpp counts each segment once
    std::int64_t forward_segments = 0;
    for (int j = 0; j < S; ++j) {
      const auto& log = out[static_cast<std::size_t>(j)][bits].log;
      std::size_t expected = 2;
      for (int l = 0; l < F::blocks; ++l) {
        const auto gates = F::block(m, l);
        int seg_size = 1;
        for (const Segment s : gates.segments())
          if (j >= s.first && j < s.last()) seg_size = s.size;
        const bool talks = gates.residual() && seg_size > 1;
        int fwd = 0, bwd = 0;
        for (const TpCollective& col : log) {
          if (col.block != l) continue;
          CHECK(col.group == seg_size);
          CHECK(col.elements == static_cast<std::size_t>(c.d * batch));
          (col.phase == TpPhase::forward ? fwd : bwd) += 1;
          if (col.phase == TpPhase::forward) {
            forward_model_bytes += col.ring_bytes(sizeof(double)) / col.group;
            ++forward_segments;  // counted by each of its |G| ranks: divided below
          }
        }
        CHECK(fwd == (talks ? 1 : 0));
        CHECK(bwd == (talks ? 1 : 0));
        expected += talks ? 2 : 0;
      }
      // Order: forward segments, the logits, backward segments (last block first), the
      // replicated gradients.
      REQUIRE(log.size() == expected);
      std::size_t at = 0;
      while (at < log.size() && log[at].phase == TpPhase::forward) ++at;
      REQUIRE(at + 2 <= log.size());
      CHECK(log[at].phase == TpPhase::logits);
      CHECK(log[at].group == S);
      CHECK(log[at].elements == static_cast<std::size_t>(c.classes * batch));
      for (std::size_t i = at + 1; i + 1 < log.size(); ++i) CHECK(log[i].phase == TpPhase::backward);
      CHECK(log.back().phase == TpPhase::gradients);
      CHECK(log.back().group == S);
      CHECK(log.back().elements == replicated_count);
      double fwd_bytes = 0, bwd_bytes = 0;
      for (const TpCollective& col : log) {
        if (col.phase == TpPhase::forward) fwd_bytes += col.ring_bytes(sizeof(double));
        if (col.phase == TpPhase::backward) bwd_bytes += col.ring_bytes(sizeof(double));
      }
      CHECK(fwd_bytes == out[static_cast<std::size_t>(j)][bits].forward_sent);  // bytes_sent() agrees
      CHECK(bwd_bytes == out[static_cast<std::size_t>(j)][bits].backward_sent);
      CHECK(bwd_bytes == fwd_bytes);  // the backward pass sends what the forward pass sent
    }
    // nn/cost.hpp counts each segment's all-reduce once per pass: forward and backward.
    const StructureCost cost = mlp_cost<F>(c, m, batch, sizeof(double));
    CHECK(2 * forward_model_bytes == doctest::Approx(cost.comm_bytes).epsilon(1e-12));
    // forward_segments counted each segment once per member rank; the model once.
    std::int64_t segments = 0;
    for (int l = 0; l < F::blocks; ++l)
      if (F::block(m, l).residual())
        for (const Segment s : F::block(m, l).segments()) segments += s.size > 1 ? s.size : 0;
    CHECK(forward_segments == segments);
    std::int64_t distinct = 0;
    for (int l = 0; l < F::blocks; ++l)
      if (F::block(m, l).residual())
        for (const Segment s : F::block(m, l).segments()) distinct += s.size > 1 ? 1 : 0;
    CHECK(cost.allreduces == 2 * distinct);
  }
  MESSAGE(count << " structures on " << S << " thread ranks; worst relative error: loss " << worst_loss
                << ", logits " << worst_logits << ", gradient " << worst_grads);
}

const MlpConfig small{.in_dim = 7, .d = 8, .h = 16, .classes = 5};

}  // namespace

TEST_CASE("tensor parallel on 4 thread ranks equals the single-process model, every structure (n = 8)") {
  check_family<MlpFamily<4, 2>>(small, 6, 101);
}

TEST_CASE("tensor parallel on 2 thread ranks equals the single-process model, every structure (n = 6)") {
  check_family<MlpFamily<2, 3>>(small, 6, 202);
}

TEST_CASE("tensor parallel without a final norm, merge-only, 4 thread ranks (n = 6)") {
  check_family<MlpFamily<4, 2, GateLayout::merge_only, FinalNorm::none>>(small, 5, 303);
}

TEST_CASE("tensor parallel: a communicator of the wrong size is a clear InputError") {
  std::string message;
  try {
    dist::run_threads(3, [](ThreadComm& comm) {
      dist::TensorParallelMlp<MlpFamily<4, 2>, double, ThreadComm> tp(small, comm);
    });
  } catch (const InputError& e) {
    message = e.what();
  }
  CHECK(message ==
        "tensor-parallel mlp S=4 L=2 merge_and_branch needs 4 ranks (one per shard), the "
        "communicator has 3");
}

TEST_CASE("tensor parallel: ranks that disagree on the model get a CommError, not a hang") {
  std::string message;
  try {
    dist::run_threads(2, [](ThreadComm& comm) {
      MlpConfig c = small;
      if (comm.rank() == 1) c.d = 6;
      dist::TensorParallelMlp<MlpFamily<2, 2>, double, ThreadComm> tp(c, comm);
    });
  } catch (const CommError& e) {
    message = e.what();
  }
  CHECK(message.find("tensor-parallel MLP differs between ranks") != std::string::npos);
}

TEST_CASE("tensor parallel: bad shard index and buffer sizes are errors") {
  std::vector<double> full(mlp_layout(small, 2).total()),
      local(mlp_layout(dist::shard_config(small, 4), 2).total());
  CHECK_THROWS_AS(dist::extract_shard<double>(small, 2, 4, 4, full, local), InputError);
  CHECK_THROWS_AS(dist::extract_shard<double>(small, 2, 4, 0, local, local), RuntimeError);
  CHECK_THROWS_AS(dist::shard_config(small, 3), InputError);  // 16 does not split in 3
}
