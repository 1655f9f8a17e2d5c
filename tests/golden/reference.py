"""Independent PyTorch reference of the sharded MLP family of `additive`.

Written from docs/design.md (section 2) and docs/design-notes.md only,
never from the C++ sources. Works in float32 and float64 (the dtype of the
parameters decides). Run directly (`python tests/golden/reference.py`) for the
float64 self-test.

Conventions (design-notes.md):
  * x is (batch, in_dim) row-major, the same memory as the C++ (in_dim, batch)
    column-major batch.
  * A model of L blocks with S shards has k gates per block (k = S for the
    'merge_and_branch' layout, k = S-1 for 'merge_only'), n = L*k gates.
    Block l owns bits [l*k, (l+1)*k) of the mask. Bit i (0 <= i < S-1) of a
    block is the merge gate between shard i and shard i+1 (0-based shards);
    bit S-1 ('merge_and_branch' only) is the block's branch (residual) gate.
    Bit set = gate active.
  * Parameter names and shapes: PyTorch (out, in) weights, see `param_shapes`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LN_EPS = 1e-5
LAYOUTS = ("merge_and_branch", "merge_only")


# --------------------------------------------------------------------------
# configuration and gates
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    in_dim: int
    d: int
    h: int
    S: int
    L: int
    classes: int
    layout: str = "merge_and_branch"

    def __post_init__(self):
        assert self.layout in LAYOUTS, self.layout
        assert self.S >= 1 and self.L >= 1
        assert self.h % self.S == 0, "h must be a multiple of S"

    @property
    def hs(self) -> int:
        return self.h // self.S

    @property
    def k(self) -> int:
        return self.S if self.layout == "merge_and_branch" else self.S - 1

    @property
    def n(self) -> int:
        return self.L * self.k

    def as_dict(self) -> dict:
        return dict(in_dim=self.in_dim, d=self.d, h=self.h, S=self.S, L=self.L,
                    classes=self.classes, layout=self.layout, hs=self.hs,
                    k=self.k, n=self.n)


def block_bits(cfg: Config, mask: int, l: int) -> int:
    return (mask >> (l * cfg.k)) & ((1 << cfg.k) - 1)


def block_gates(cfg: Config, mask: int, l: int):
    """(merge, branch): merge[i] for i in 0..S-2, branch a bool."""
    assert 0 <= mask < (1 << cfg.n), f"mask {mask:#x} out of range for n={cfg.n}"
    bits = block_bits(cfg, mask, l)
    merge = [bool((bits >> i) & 1) for i in range(cfg.S - 1)]
    branch = bool((bits >> (cfg.S - 1)) & 1) if cfg.layout == "merge_and_branch" else True
    return merge, branch


def segments(merge) -> list[tuple[int, int]]:
    """Maximal runs of shards joined by active merge gates, as inclusive
    (first, last) 0-based shard indices, in order."""
    S = len(merge) + 1
    segs, start = [], 0
    for i in range(S - 1):
        if not merge[i]:
            segs.append((start, i))
            start = i + 1
    segs.append((start, S - 1))
    return segs


def canonical(cfg: Config, mask: int) -> int:
    """Merge bits of skipped blocks cleared (design-notes 'Gate layouts')."""
    out = mask
    for l in range(cfg.L):
        _, branch = block_gates(cfg, mask, l)
        if not branch:
            out &= ~(((1 << (cfg.S - 1)) - 1) << (l * cfg.k))
    return out


def pretty(cfg: Config, mask: int) -> str:
    """'[12|34] res=1 . [1|234] res=0' (shards numbered from 1)."""
    groups = []
    for l in range(cfg.L):
        merge, branch = block_gates(cfg, mask, l)
        s = "[1"
        for i in range(cfg.S - 1):
            s += ("" if merge[i] else "|") + str(i + 2)
        s += "]"
        if cfg.layout == "merge_and_branch":
            s += f" res={int(branch)}"
        groups.append(s)
    return " . ".join(groups)


def make_mask(cfg: Config, blocks) -> int:
    """blocks: list of (merge list, branch bool) per block -> model mask."""
    mask = 0
    for l, (merge, branch) in enumerate(blocks):
        bits = sum(int(bool(g)) << i for i, g in enumerate(merge))
        if cfg.layout == "merge_and_branch":
            bits |= int(bool(branch)) << (cfg.S - 1)
        else:
            assert branch
        mask |= bits << (l * cfg.k)
    return mask


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------

def param_shapes(cfg: Config) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes in the order of the flat parameter buffer."""
    out = [("embed.weight", (cfg.d, cfg.in_dim)), ("embed.bias", (cfg.d,))]
    for l in range(cfg.L):
        out += [
            (f"blocks.{l}.norm.weight", (cfg.d,)),
            (f"blocks.{l}.norm.bias", (cfg.d,)),
            (f"blocks.{l}.up.weight", (cfg.h, cfg.d)),
            (f"blocks.{l}.up.bias", (cfg.h,)),
            (f"blocks.{l}.down.weight", (cfg.d, cfg.h)),
            (f"blocks.{l}.down.bias", (cfg.d,)),
        ]
    out += [("final_norm.weight", (cfg.d,)), ("final_norm.bias", (cfg.d,)),
            ("head.weight", (cfg.classes, cfg.d)), ("head.bias", (cfg.classes,))]
    return out


def is_norm(name: str) -> bool:
    return ".norm." in name or name.startswith("final_norm.")


def is_bias(name: str) -> bool:
    return name.endswith(".bias")


def init_std(cfg: Config, name: str) -> float:
    """Standard deviation of a linear weight. design-notes: N(0, 1/fan_in),
    down.weight N(0, 1/(h*2L)); the second argument read as the VARIANCE."""
    if name.endswith("down.weight"):
        return math.sqrt(1.0 / (cfg.h * 2 * cfg.L))
    fan_in = dict(param_shapes(cfg))[name][1]
    return math.sqrt(1.0 / fan_in)


def init_params(cfg: Config, dtype=torch.float32, generator=None) -> dict[str, torch.Tensor]:
    """design-notes init rule with torch's RNG. Draws happen in buffer order,
    one torch.randn per linear weight (biases zero, norm weights one, norm
    biases zero draw nothing)."""
    params = {}
    for name, shape in param_shapes(cfg):
        if is_norm(name):
            t = torch.ones(shape, dtype=dtype) if name.endswith("weight") else torch.zeros(shape, dtype=dtype)
        elif is_bias(name):
            t = torch.zeros(shape, dtype=dtype)
        else:
            t = torch.randn(shape, dtype=dtype, generator=generator) * init_std(cfg, name)
        params[name] = t
    return params


def perturb_params(cfg: Config, params, generator, scale=0.2) -> dict[str, torch.Tensor]:
    """Copy with every bias, norm weight and norm bias moved away from its
    init value by N(0, scale^2), so forward checks also see the biases and norm
    affines (at init they are 0 / 1 and would hide bias-scaling bugs)."""
    out = {}
    for name, t in params.items():
        if is_bias(name) or is_norm(name):
            out[name] = t + scale * torch.randn(t.shape, dtype=t.dtype, generator=generator)
        else:
            out[name] = t.clone()
    return out


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------

def _ln(p, prefix: str, X: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(X, (X.shape[-1],), p[prefix + ".weight"], p[prefix + ".bias"], LN_EPS)


def _gelu(u: torch.Tensor) -> torch.Tensor:
    return F.gelu(u, approximate="none")


def _block(cfg: Config, p, l: int, merge, streams):
    """One active block. streams: list of ((lo, hi), X) covering shards
    0..S-1 in order with contiguous inclusive intervals."""
    hs, S = cfg.hs, cfg.S
    A, a = p[f"blocks.{l}.up.weight"], p[f"blocks.{l}.up.bias"]
    B, b = p[f"blocks.{l}.down.weight"], p[f"blocks.{l}.down.bias"]
    # norm(X) once per stream (same block weights for every stream)
    normed = [_ln(p, f"blocks.{l}.norm", X) for _, X in streams]
    stream_of = [None] * S
    for s, ((lo, hi), _) in enumerate(streams):
        for j in range(lo, hi + 1):
            stream_of[j] = s
    out = []
    for g0, g1 in segments(merge):
        acc = None
        for j in range(g0, g1 + 1):
            rows = slice(j * hs, (j + 1) * hs)
            Hj = _gelu(F.linear(normed[stream_of[j]], A[rows], a[rows]))   # (batch, hs)
            c = F.linear(Hj, B[:, rows])                                   # (batch, d)
            acc = c if acc is None else acc + c
        Z = (S / (g1 - g0 + 1)) * acc + b                                  # b once, unscaled
        for (lo, hi), X in streams:
            lo2, hi2 = max(lo, g0), min(hi, g1)
            if lo2 <= hi2:
                out.append(((lo2, hi2), X + Z))
    return out


def forward_streams(cfg: Config, p, x: torch.Tensor, mask: int):
    """Streams after the last block: list of ((lo, hi), X)."""
    streams = [((0, cfg.S - 1), F.linear(x, p["embed.weight"], p["embed.bias"]))]
    for l in range(cfg.L):
        merge, branch = block_gates(cfg, mask, l)
        if not branch:
            continue  # skipped: nothing computed, partition unchanged
        streams = _block(cfg, p, l, merge, streams)
    return streams


def forward(cfg: Config, p, x: torch.Tensor, mask: int) -> torch.Tensor:
    """Logits (batch, classes): per-stream final norm + head, a stream shared
    by m shards weighted m/S."""
    logits = None
    for (lo, hi), X in forward_streams(cfg, p, x, mask):
        z = F.linear(_ln(p, "final_norm", X), p["head.weight"], p["head.bias"])
        z = ((hi - lo + 1) / cfg.S) * z
        logits = z if logits is None else logits + z
    return logits


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="mean")


# --------------------------------------------------------------------------
# independent formulations for the self-test
# --------------------------------------------------------------------------

def forward_per_shard(cfg: Config, p, x, mask):
    """DESIGN section 2 literally: every shard j carries its own copy X_j,
    Y_j = X_j + Z_seg(j), logits = (1/S) sum_j head(final_norm(Y_j))."""
    S, hs = cfg.S, cfg.hs
    e = F.linear(x, p["embed.weight"], p["embed.bias"])
    X = [e] * S
    for l in range(cfg.L):
        merge, branch = block_gates(cfg, mask, l)
        if not branch:
            continue
        A, a = p[f"blocks.{l}.up.weight"], p[f"blocks.{l}.up.bias"]
        B, b = p[f"blocks.{l}.down.weight"], p[f"blocks.{l}.down.bias"]
        H = [_gelu(_ln(p, f"blocks.{l}.norm", X[j]) @ A[j * hs:(j + 1) * hs].T + a[j * hs:(j + 1) * hs])
             for j in range(S)]
        Y = [None] * S
        for g0, g1 in segments(merge):
            # one product over the concatenated segment: K = |G| * hs
            Hg = torch.cat(H[g0:g1 + 1], dim=1)
            Z = (S / (g1 - g0 + 1)) * (Hg @ B[:, g0 * hs:(g1 + 1) * hs].T) + b
            for j in range(g0, g1 + 1):
                Y[j] = X[j] + Z
        X = Y
    return sum(_ln(p, "final_norm", X[j]) @ p["head.weight"].T + p["head.bias"] for j in range(S)) / S


def dense_forward(cfg: Config, p, x, active=None):
    """Plain dense residual MLP with the full A, B (active[l] False skips block l)."""
    active = active or [True] * cfg.L
    h = F.linear(x, p["embed.weight"], p["embed.bias"])
    for l in range(cfg.L):
        if active[l]:
            u = _gelu(F.linear(_ln(p, f"blocks.{l}.norm", h), p[f"blocks.{l}.up.weight"], p[f"blocks.{l}.up.bias"]))
            h = h + F.linear(u, p[f"blocks.{l}.down.weight"], p[f"blocks.{l}.down.bias"])
    return F.linear(_ln(p, "final_norm", h), p["head.weight"], p["head.bias"])


def ensemble_forward(cfg: Config, p, x, active=None):
    """Average of S narrow networks: network j uses rows j of A / columns j of
    B of every block (its branch scaled by S/|G| = S), shares embedding, norms,
    the full bias b and the head."""
    active = active or [True] * cfg.L
    S, hs = cfg.S, cfg.hs
    outs = []
    for j in range(S):
        r = slice(j * hs, (j + 1) * hs)
        h = F.linear(x, p["embed.weight"], p["embed.bias"])
        for l in range(cfg.L):
            if active[l]:
                u = _gelu(F.linear(_ln(p, f"blocks.{l}.norm", h), p[f"blocks.{l}.up.weight"][r], p[f"blocks.{l}.up.bias"][r]))
                h = h + S * F.linear(u, p[f"blocks.{l}.down.weight"][:, r]) + p[f"blocks.{l}.down.bias"]
        outs.append(F.linear(_ln(p, "final_norm", h), p["head.weight"], p["head.bias"]))
    return torch.stack(outs).mean(0)


# --------------------------------------------------------------------------
# self-test (float64)
# --------------------------------------------------------------------------

def _random_params(cfg: Config, gen) -> dict[str, torch.Tensor]:
    p = init_params(cfg, torch.float64, gen)
    p = perturb_params(cfg, p, gen, scale=0.3)
    # larger residual branches so every block visibly moves the output
    for l in range(cfg.L):
        p[f"blocks.{l}.down.weight"] *= 4.0
    return p


def self_test(verbose: bool = True) -> dict:
    """Asserts, in float64 with nonzero biases and non-unit norm affines:
      1. all gates on == dense residual MLP (and per pattern of skipped blocks);
      2. all merge gates off == average of S narrow nets (ditto);
      3. the stream-partition forward == the literal per-shard forward, all masks;
      4. equal canonical masks give bit-identical logits, distinct canonical
         masks give different logits (DESIGN property 3 / design-notes layouts).
    Returns a dict of the worst deviations."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(20240601)
    report = {}
    tol = 1e-12
    # 0. the shared primitives against their design-notes formulas
    u = torch.randn(4, 8, dtype=torch.float64, generator=gen) * 3
    w, bb = torch.randn(8, dtype=torch.float64, generator=gen), torch.randn(8, dtype=torch.float64, generator=gen)
    gelu_ref = u * 0.5 * (1 + torch.erf(u / math.sqrt(2.0)))
    mu, var = u.mean(-1, keepdim=True), u.var(-1, unbiased=False, keepdim=True)
    ln_ref = (u - mu) / torch.sqrt(var + LN_EPS) * w + bb
    d_gelu = (_gelu(u) - gelu_ref).abs().max().item()
    d_ln = (_ln({"n.weight": w, "n.bias": bb}, "n", u) - ln_ref).abs().max().item()
    assert d_gelu <= tol and d_ln <= tol, ("primitives", d_gelu, d_ln)
    report["primitives"] = dict(gelu_max_abs=d_gelu, layer_norm_max_abs=d_ln)
    configs = [
        Config(in_dim=48, d=32, h=64, S=4, L=2, classes=10, layout="merge_and_branch"),
        Config(in_dim=7, d=6, h=15, S=5, L=2, classes=3, layout="merge_only"),
        Config(in_dim=5, d=8, h=6, S=3, L=3, classes=4, layout="merge_and_branch"),
    ]
    for cfg in configs:
        name = f"S{cfg.S}_L{cfg.L}_{cfg.layout}"
        p = _random_params(cfg, gen)
        x = torch.rand(9, cfg.in_dim, dtype=torch.float64, generator=gen) * 2 - 0.5
        scale = dense_forward(cfg, p, x).abs().max().item()
        worst_dense = worst_ens = worst_shard = 0.0
        # 1 and 2 for every pattern of active blocks
        for active in itertools.product([True, False], repeat=cfg.L):
            if cfg.layout == "merge_only" and not all(active):
                continue
            m_dense = make_mask(cfg, [([True] * (cfg.S - 1), a) for a in active])
            m_ens = make_mask(cfg, [([False] * (cfg.S - 1), a) for a in active])
            d1 = (forward(cfg, p, x, m_dense) - dense_forward(cfg, p, x, list(active))).abs().max().item()
            d2 = (forward(cfg, p, x, m_ens) - ensemble_forward(cfg, p, x, list(active))).abs().max().item()
            worst_dense, worst_ens = max(worst_dense, d1), max(worst_ens, d2)
        assert worst_dense <= tol * max(1.0, scale), (name, "dense", worst_dense)
        assert worst_ens <= tol * max(1.0, scale), (name, "ensemble", worst_ens)
        # 3 and 4 over all 2^n masks
        outs = {}
        for mask in range(1 << cfg.n):
            o = forward(cfg, p, x, mask)
            worst_shard = max(worst_shard, (o - forward_per_shard(cfg, p, x, mask)).abs().max().item())
            outs[mask] = o
        assert worst_shard <= tol * max(1.0, scale), (name, "per-shard", worst_shard)
        classes = {}
        for mask, o in outs.items():
            c = canonical(cfg, mask)
            if c in classes:
                assert torch.equal(o, outs[classes[c]]), (name, "canonical not identical", mask)
            else:
                classes[c] = mask
        expected = (2 ** (cfg.S - 1) + 1) ** cfg.L if cfg.layout == "merge_and_branch" else 2 ** cfg.n
        assert len(classes) == expected, (name, len(classes), expected)
        reps = list(classes.values())
        min_sep = math.inf
        for i in range(len(reps)):
            for j in range(i + 1, len(reps)):
                min_sep = min(min_sep, (outs[reps[i]] - outs[reps[j]]).abs().max().item())
        assert min_sep > 1e-6, (name, "two canonical masks give the same function", min_sep)
        report[name] = dict(masks=1 << cfg.n, functions=len(classes),
                            dense_max_abs=worst_dense, ensemble_max_abs=worst_ens,
                            per_shard_max_abs=worst_shard, min_separation=min_sep,
                            logit_scale=scale)
        if verbose:
            print(f"self-test {name}: {1 << cfg.n} masks, {len(classes)} distinct functions; "
                  f"dense {worst_dense:.2e}, ensemble {worst_ens:.2e}, per-shard {worst_shard:.2e}, "
                  f"min separation {min_sep:.2e} (logit scale {scale:.2f})")
    return report


if __name__ == "__main__":
    self_test()
    print("self-test passed")
