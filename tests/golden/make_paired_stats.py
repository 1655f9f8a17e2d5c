#!/usr/bin/env python3
"""Golden fixture for tests/test_paired_stats.cpp: the statistics layer
(include/additive/stats/) against an independent reference, numpy + scipy.stats.

Written from docs/statistics.md and the protocol comments of the headers (the bootstrap's
draw order, the coding of the gate-effect model, the forward-selection rule), never from
the C++ code. Writes tests/golden/paired_stats_golden.json. Run by hand, never in CI:

    python3 -m venv /tmp/venv-stats && /tmp/venv-stats/bin/pip install numpy scipy
    /tmp/venv-stats/bin/python tests/golden/make_paired_stats.py

What it records:
  distributions  Student t quantiles / two-sided p / cdf, F survival, normal quantiles,
                 regularized incomplete beta, exact two-sided binomial test (p = 1/2)
  holm           Holm-adjusted p-values (from the definition)
  paired         three run tables (per-image correctness as hex) and, for each, every
                 structure's difference to the leader, McNemar counts and exact p
                 (scipy.stats.binomtest), paired t over seeds (scipy.stats.ttest_rel), the
                 paired bootstrap replayed with a Python std::mt19937_64, Holm and the top group,
                 Kendall's tau-b between seeds (scipy.stats.kendalltau)
  gate_effects   OLS by numpy.linalg.lstsq with standard errors from sigma^2 (X^T X)^-1,
                 t intervals, R^2, predictions; the forward selection of interactions;
                 a rank-deficient sampled design
"""
import json
import math
import os

import numpy as np
import scipy
from scipy import special, stats

MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------
# The library's random streams: splitmix64 / derive_seed (include/additive/core/seed.hpp's
# comment), std::mt19937_64 (specified by the C++ standard), bounded_rand (rejection below
# 2^64 mod bound).

def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def derive_seed(seed, domain, k):
    return splitmix64(splitmix64(splitmix64(seed) ^ domain) ^ k)


RESAMPLE = int.from_bytes(b"resample", "big")


class MT19937_64:
    N, M = 312, 156
    MATRIX_A = 0xB5026F5AA96619E9
    UPPER, LOWER = 0xFFFFFFFF80000000, 0x7FFFFFFF

    def __init__(self, seed):
        mt = [0] * self.N
        mt[0] = seed & MASK64
        for i in range(1, self.N):
            mt[i] = (6364136223846793005 * (mt[i - 1] ^ (mt[i - 1] >> 62)) + i) & MASK64
        self.mt, self.i = mt, self.N

    def _twist(self):
        mt, n, m = self.mt, self.N, self.M
        for i in range(n):
            x = (mt[i] & self.UPPER) | (mt[(i + 1) % n] & self.LOWER)
            xa = x >> 1
            if x & 1:
                xa ^= self.MATRIX_A
            mt[i] = mt[(i + m) % n] ^ xa
        self.i = 0

    def __call__(self):
        if self.i >= self.N:
            self._twist()
        y = self.mt[self.i]
        self.i += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & MASK64


def bounded_rand(gen, bound):
    threshold = ((1 << 64) - bound) % bound
    while True:
        r = gen()
        if r >= threshold:
            return r % bound


def check_mt():
    g = MT19937_64(5489)
    for _ in range(9999):
        g()
    assert g() == 9981545732273789042, "mt19937_64 does not meet the standard's 10000th value"


# --------------------------------------------------------------------------------------
# Helpers

def to_hex(bits):
    """Image 4k+j in bit j of hex digit k (docs/statistics.md, CorrectBits::to_hex)."""
    out = []
    for k in range(0, len(bits), 4):
        v = 0
        for j, b in enumerate(bits[k:k + 4]):
            v |= int(b) << j
        out.append("0123456789abcdef"[v])
    return "".join(out)


def holm(p):
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        adj[idx] = running
    return adj.tolist()


def quantile7(sorted_values, q):
    return float(np.quantile(np.asarray(sorted_values), q, method="linear"))


# --------------------------------------------------------------------------------------
# Distributions

def distributions():
    t_q = [(p, df) for p in (0.975, 0.995, 0.9995, 0.6, 0.025, 0.51, 1e-12) for df in (1, 2, 3, 7, 30, 250, 4000)]
    t_2 = [(t, df) for t in (0.0, 0.3, 1.0, 2.2, 5.0, 40.0, -3.1) for df in (1, 2, 5, 42, 1000)]
    f_sf = [(f, d1, d2) for f in (0.1, 1.0, 4.2, 30.0, 250.0) for d1, d2 in ((1, 1), (1, 10), (1, 57), (3, 40), (12, 7))]
    z_q = [1e-300, 1e-20, 1e-8, 0.001, 0.025, 0.3, 0.5, 0.7, 0.975, 0.999999]
    beta = [(a, b, x) for a, b in ((0.5, 0.5), (1, 3), (2.5, 0.5), (30, 40), (4000, 4100), (0.5, 5000)) for x in (1e-6, 0.1, 0.43, 0.5, 0.9, 0.999)]
    binom = [(k, n) for k, n in ((0, 0), (0, 1), (0, 5), (1, 5), (2, 5), (3, 9), (7, 20), (10, 20), (40, 100), (480, 1000), (1210, 2600), (0, 3000))]
    return {
        "t_quantile": [[p, df, float(stats.t.ppf(p, df))] for p, df in t_q],
        "t_two_sided": [[t, df, float(2 * stats.t.sf(abs(t), df))] for t, df in t_2],
        "t_cdf": [[t, df, float(stats.t.cdf(t, df))] for t, df in t_2],
        "f_survival": [[f, d1, d2, float(stats.f.sf(f, d1, d2))] for f, d1, d2 in f_sf],
        "normal_quantile": [[p, float(stats.norm.ppf(p))] for p in z_q],
        "incomplete_beta": [[a, b, x, float(special.betainc(a, b, x))] for a, b, x in beta],
        "binomial_two_sided_half": [[k, n, 1.0 if n == 0 else float(stats.binomtest(k, n, 0.5).pvalue)] for k, n in binom],
    }


def holm_cases():
    cases = [
        [0.01, 0.04, 0.03, 0.005],
        [0.2, 0.2, 0.01, 0.9, 0.04, 0.049],
        [1e-6, 0.5],
        [0.03],
    ]
    return [{"p": c, "adjusted": holm(c)} for c in cases]


# --------------------------------------------------------------------------------------
# Paired comparisons

def paired_case(name, rng, masks, seeds, images, strengths, same_images, resamples, boot_seed, level=0.95, alpha=0.05):
    """images: one count per seed (all equal when same_images). strengths: per structure, the
    shift of its chance of being right on the hard images."""
    S, R = len(masks), seeds
    bits = {}  # (s, r) -> np.array of 0/1
    shared_hard = rng.random(images[0]) < 0.35  # which images are hard (the same set when shared)
    for r in range(R):
        n = images[r]
        hard = shared_hard if same_images else rng.random(n) < 0.35
        base = np.where(hard, 0.55, 0.97)
        for s in range(S):
            p = np.clip(base + np.where(hard, strengths[s], 0.0), 0, 1)
            bits[(s, r)] = (rng.random(n) < p).astype(np.uint8)
    loss = {(s, r): float(1.0 - bits[(s, r)].mean() + 0.01 * s) for s in range(S) for r in range(R)}
    acc = np.array([[bits[(s, r)].sum() / len(bits[(s, r)]) for r in range(R)] for s in range(S)])
    mean_acc = acc.mean(axis=1)
    leader = int(np.argmax(mean_acc))  # first maximum
    order = sorted(range(S), key=lambda s: (-mean_acc[s], s))
    rank = {s: i + 1 for i, s in enumerate(order)}

    # The bootstrap, replayed from the documented protocol.
    boot = np.zeros((resamples, S))
    for b in range(resamples):
        gen = MT19937_64(derive_seed(boot_seed, RESAMPLE, b))
        pick = [bounded_rand(gen, R) for _ in range(R)] if R >= 2 else list(range(R))
        weights = []
        if same_images:
            n = images[0]
            w = np.bincount([bounded_rand(gen, n) for _ in range(n)], minlength=n)
            weights = [w] * R
        else:
            for j in range(R):
                n = images[pick[j]]
                weights.append(np.bincount([bounded_rand(gen, n) for _ in range(n)], minlength=n))
        for s in range(S):
            total = 0.0
            for j in range(R):
                c = bits[(s, pick[j])]
                total += float(int(np.dot(weights[j].astype(np.int64), c.astype(np.int64)))) / float(len(c))
            boot[b, s] = total / R

    rows = []
    for s in range(S):
        row = {"mask": masks[s], "rank": rank[s], "accuracy": float(mean_acc[s]), "is_reference": s == leader}
        if s == leader:
            rows.append(row)
            continue
        d = acc[s] - acc[leader]
        row["difference"] = float(d.mean())
        b_cnt = int(sum(int(((bits[(s, r)] == 1) & (bits[(leader, r)] == 0)).sum()) for r in range(R)))
        c_cnt = int(sum(int(((bits[(s, r)] == 0) & (bits[(leader, r)] == 1)).sum()) for r in range(R)))
        row["right_only"], row["wrong_only"] = b_cnt, c_cnt
        row["p_mcnemar"] = 1.0 if b_cnt + c_cnt == 0 else float(stats.binomtest(b_cnt, b_cnt + c_cnt, 0.5).pvalue)
        diffs = boot[:, s] - boot[:, leader]
        sd = float(np.std(diffs, ddof=1))
        row["boot_se"] = sd
        row["p_bootstrap"] = float(2 * stats.norm.sf(abs(d.mean()) / sd))
        srt = np.sort(diffs)
        row["boot_lo"] = quantile7(srt, (1 - level) / 2)
        row["boot_hi"] = quantile7(srt, (1 + level) / 2)
        if R >= 2:
            row["p_seed_t"] = float(stats.ttest_rel(acc[s], acc[leader]).pvalue)
            se = float(np.std(d, ddof=1) / math.sqrt(R))
            q = float(stats.t.ppf((1 + level) / 2, R - 1))
            row["t_lo"], row["t_hi"], row["t_se"] = float(d.mean() - q * se), float(d.mean() + q * se), se
        rows.append(row)

    family = [s for s in range(S) if s != leader]
    tests = {}
    for test, key in (("bootstrap", "p_bootstrap"), ("mcnemar", "p_mcnemar"), ("seed_t", "p_seed_t")):
        if R < 2 and test == "seed_t":
            continue
        adj = holm([rows[s][key] for s in family])
        tests[test] = {
            "adjusted": {str(masks[s]): a for s, a in zip(family, adj)},
            "top_group": [masks[s] for s in order if s == leader or adj[family.index(s)] >= alpha],
        }

    taus = []
    for a in range(R):
        for b in range(a + 1, R):
            taus.append([a, b, float(stats.kendalltau(acc[:, a], acc[:, b], variant="b").statistic)])

    return {
        "name": name,
        "masks": masks,
        "seeds": R,
        "images": images,
        "same_images_across_seeds": same_images,
        "resamples": resamples,
        "bootstrap_seed": boot_seed,
        "level": level,
        "alpha": alpha,
        "runs": [{"structure": s, "seed": r, "correct": to_hex(bits[(s, r)].tolist()), "loss": loss[(s, r)]}
                 for s in range(S) for r in range(R)],
        "leader": masks[leader],
        "rows": rows,
        "tests": tests,
        "kendall": taus,
        "mean_loss": [float(np.mean([loss[(s, r)] for r in range(R)])) for s in range(S)],
    }


def paired_cases():
    rng = np.random.default_rng(20240616)
    return [
        paired_case("three seeds, shared images", rng, [3, 5, 6, 9, 12, 15], 3, [203] * 3,
                    [0.0, 0.08, -0.02, 0.12, -0.15, 0.11], True, 300, 7),
        paired_case("two seeds, own images", rng, [0, 1, 2, 3], 2, [150, 171],
                    [0.05, 0.0, 0.09, -0.1], False, 250, 99),
        paired_case("one seed", rng, [1, 2, 4, 8, 16], 1, [260], [0.0, 0.1, 0.06, -0.2, 0.1], True, 200, 3),
    ]


# --------------------------------------------------------------------------------------
# Gate-effect model

def column(mask, col):
    g, h = col
    x = lambda k: ((mask >> k) & 1) - 0.5
    if g < 0:
        return 1.0
    if h < 0:
        return x(g)
    return x(g) * x(h)


def design(masks, cols):
    return np.array([[column(m, c) for c in cols] for m in masks], dtype=float)


def residual(X, v):
    beta, *_ = np.linalg.lstsq(X, v, rcond=None)
    return v - X @ beta


def ols(masks, y, gates, level=0.95, interactions=True, alpha_in=0.05, max_inter=-1, min_df=5):
    y = np.asarray(y, dtype=float)
    n = len(y)
    cols = [(-1, -1)]
    dropped, kept = [], []
    for g in range(gates):
        X = design(masks, cols)
        c = design(masks, [(g, -1)])[:, 0]
        if np.linalg.norm(residual(X, c)) <= 1e-9 * max(1.0, np.linalg.norm(c)):
            dropped.append(g)
        else:
            cols.append((g, -1))
            kept.append(g)
    tss = float(((y - y.mean()) ** 2).sum())

    def r2(rss, p):
        return 1 - rss / tss, 1 - (rss / (n - p)) / (tss / (n - 1))

    X = design(masks, cols)
    r2_main = r2(float((residual(X, y) ** 2).sum()), X.shape[1])
    selected = []
    if interactions:
        cand = [(kept[a], kept[b]) for a in range(len(kept)) for b in range(a + 1, len(kept))]
        while True:
            X = design(masks, cols)
            df_new = n - X.shape[1] - 1
            if df_new < min_df or (max_inter >= 0 and len(selected) >= max_inter):
                break
            e = residual(X, y)
            rss = float(e @ e)
            best, best_p, still = None, 2.0, []
            for c in cand:
                col = design(masks, [c])[:, 0]
                rc = residual(X, col)
                if np.linalg.norm(rc) <= 1e-9 * max(1.0, np.linalg.norm(col)):
                    continue
                still.append(c)
                ss = float(rc @ e) ** 2 / float(rc @ rc)
                rss_new = max(rss - ss, 0.0)
                p = float(stats.f.sf(ss / (rss_new / df_new), 1, df_new)) if rss_new > 0 else 0.0
                if p < best_p:
                    best, best_p = c, p
            cand = still
            if not cand or best_p * len(cand) >= alpha_in:
                break
            selected.append(best)
            cols.append(best)
            cand.remove(best)
    X = design(masks, cols)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ beta
    df = n - X.shape[1]
    sigma = math.sqrt(float(res @ res) / df)
    xtx_inv = np.linalg.inv(X.T @ X)
    se = sigma * np.sqrt(np.diag(xtx_inv))
    q = float(stats.t.ppf((1 + level) / 2, df))
    t = beta / se
    terms = []
    for j, (g, h) in enumerate(cols):
        name = "intercept" if g < 0 else (f"g{g}" if h < 0 else f"g{g}:g{h}")
        terms.append({"name": name, "estimate": float(beta[j]), "se": float(se[j]), "lo": float(beta[j] - q * se[j]),
                      "hi": float(beta[j] + q * se[j]), "t": float(t[j]), "p": float(2 * stats.t.sf(abs(t[j]), df))})
    r2_final = r2(float(res @ res), X.shape[1])

    def predict(mask):
        x = design([mask], cols)[0]
        mean = float(x @ beta)
        v = float(x @ xtx_inv @ x)
        return {"mask": mask, "mean": mean, "se_mean": sigma * math.sqrt(v), "lo_mean": mean - q * sigma * math.sqrt(v),
                "hi_mean": mean + q * sigma * math.sqrt(v), "se": sigma * math.sqrt(1 + v),
                "lo": mean - q * sigma * math.sqrt(1 + v), "hi": mean + q * sigma * math.sqrt(1 + v)}

    return {"terms": terms, "dropped": dropped, "df": df, "sigma": sigma, "r2": r2_final[0], "adj_r2": r2_final[1],
            "r2_main": r2_main[0], "adj_r2_main": r2_main[1], "predict": predict}


def gate_cases():
    rng = np.random.default_rng(777)
    cases = []

    # A: full factorial 2^4, main effects only, with noise.
    gates = 4
    masks = list(range(1 << gates))
    eff = [0.004, -0.002, 0.0, 0.007]
    y = [0.86 + sum(eff[g] * (((m >> g) & 1) - 0.5) for g in range(gates)) + 0.0015 * rng.standard_normal() for m in masks]
    fit = ols(masks, y, gates, interactions=False)
    cases.append({"name": "full factorial 2^4, main effects", "gates": gates, "masks": masks, "response": y,
                  "options": {"interactions": False, "level": 0.95},
                  **{k: v for k, v in fit.items() if k != "predict"},
                  "predictions": [fit["predict"](m) for m in (0, 5, 15)]})

    # B: full factorial 2^5 with two true interactions: forward selection.
    gates = 5
    masks = list(range(1 << gates))
    eff = [0.01, 0.003, -0.006, 0.0, 0.004]
    x = lambda m, g: ((m >> g) & 1) - 0.5
    y = [0.8 + sum(eff[g] * x(m, g) for g in range(gates)) + 0.012 * x(m, 1) * x(m, 3) - 0.006 * x(m, 0) * x(m, 4)
         + 0.001 * rng.standard_normal() for m in masks]
    fit = ols(masks, y, gates, level=0.9)
    cases.append({"name": "full factorial 2^5, forward selection", "gates": gates, "masks": masks, "response": y,
                  "options": {"interactions": True, "level": 0.9},
                  **{k: v for k, v in fit.items() if k != "predict"},
                  "predictions": [fit["predict"](m) for m in (0, 10, 31)]})

    # C: a sample of 6 gates with gate 5 always off and gate 4 always equal to gate 2.
    gates = 6
    pool = [m for m in range(1 << gates) if not (m >> 5) & 1 and ((m >> 4) & 1) == ((m >> 2) & 1)]
    masks = sorted(int(v) for v in rng.choice(pool, size=12, replace=False))
    y = [0.7 + 0.01 * x(m, 0) - 0.02 * x(m, 2) + 0.005 * x(m, 3) + 0.002 * rng.standard_normal() for m in masks]
    fit = ols(masks, y, gates, interactions=True, max_inter=1, min_df=3)
    consistent = [m for m in pool if m not in masks][:2]
    cases.append({"name": "sampled, rank deficient", "gates": gates, "masks": masks, "response": y,
                  "options": {"interactions": True, "level": 0.95, "max_interactions": 1, "min_residual_df": 3},
                  **{k: v for k, v in fit.items() if k != "predict"},
                  "predictions": [fit["predict"](m) for m in consistent],
                  "undetermined": [0b100000, 0b000100]})
    return cases


def main():
    check_mt()
    fixture = {
        "generator": "tests/golden/make_paired_stats.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "distributions": distributions(),
        "holm": holm_cases(),
        "paired": paired_cases(),
        "gate_effects": gate_cases(),
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paired_stats_golden.json")
    with open(out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
