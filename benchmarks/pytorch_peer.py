"""The PyTorch peer of benchmarks/bench_train_step.cpp, and the side-by-side driver.

The same model, written the way a PyTorch user would write it: nn.Linear / nn.LayerNorm
modules, the structure of each block applied in forward() as slices of the full weights
(one up-projection per input stream, one down-projection per segment with K = |G| hs and
the S/|G| scale), exact GELU, a per-stream final norm and the head averaged over the
shards, mean cross-entropy, and torch.optim.AdamW with weight decay on the linear weights
only (no decay on norms and biases). One step = forward + backward + AdamW step on one
fixed batch of 256, float32, CPU, torch.set_num_threads(threads).

Without --additive-bench it measures PyTorch alone. With it, it runs our Google Benchmark
program and PyTorch alternately (round after round, structure by structure: ours, torch
eager, torch.compile), so both see the same machine load, and prints the medians and the
ratios. scripts/bench.sh builds our program and calls this with the right arguments.

    python benchmarks/pytorch_peer.py --additive-bench build-bench/bin/bench_train_step
    python benchmarks/pytorch_peer.py --check      # same function as tests/golden/reference.py
    python benchmarks/pytorch_peer.py --device cuda --batch 4096 --precision bf16   # on a GPU

With --device cuda the model, the batch and the optimizer live on the GPU (eager and
torch.compile as on the CPU; --precision tf32 sets torch.backends.cuda.matmul.allow_tf32,
bf16 runs forward and backward under torch.autocast(bfloat16) with fp32 master weights),
and every timing waits for the GPU (torch.cuda.synchronize). Our side of that comparison is
bench_cuda_train_step (scripts/gpu.sh runs both; docs/gpu-benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# The structures of MlpFamily<4, 2> (bits 0..2 of a block: merge gates, bit 3: residual).
STRUCTURES = {
    "dense": 0xFF,      # [1234] res=1 . [1234] res=1
    "all_split": 0x88,  # [1|2|3|4] res=1 . [1|2|3|4] res=1
    "mixed_dd": 0xDD,   # [12|34] res=1 . [12|34] res=1
    "mixed_ad": 0xAD,   # [12|34] res=1 . [1|23|4] res=1
}


def block_plan(mask: int, S: int, L: int):
    """Per block: (segments as half-open shard intervals, residual active)."""
    plan = []
    for l in range(L):
        bits = (mask >> (l * S)) & ((1 << S) - 1)
        segs, start = [], 0
        for i in range(S - 1):
            if not (bits >> i) & 1:
                segs.append((start, i + 1))
                start = i + 1
        segs.append((start, S))
        plan.append((segs, bool((bits >> (S - 1)) & 1)))
    return plan


def pretty(mask: int, S: int, L: int) -> str:
    out = []
    for segs, res in block_plan(mask, S, L):
        text = "|".join("".join(str(j + 1) for j in range(a, b)) for a, b in segs)
        out.append(f"[{text}] res={int(res)}")
    return " . ".join(out)


class ShardedBlock(nn.Module):
    """Pre-norm residual MLP block whose hidden width is cut into S shards."""

    def __init__(self, d: int, h: int, S: int):
        super().__init__()
        self.S, self.hs = S, h // S
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, h)    # A: shard j = rows [j hs, (j+1) hs)
        self.down = nn.Linear(h, d)  # B: shard j = columns [j hs, (j+1) hs)

    def forward(self, streams, segments):
        """streams: [((lo, hi), X)] covering the shards in order; returns the output streams."""
        hs, S = self.hs, self.S
        # One norm and one up-projection per input stream, over its shards' rows of A.
        hidden = []
        for (lo, hi), x in streams:
            rows = slice(lo * hs, hi * hs)
            hidden.append(((lo, hi), F.gelu(F.linear(self.norm(x), self.up.weight[rows], self.up.bias[rows]))))
        out = []
        for g0, g1 in segments:
            # The segment's activations (batch, |G| hs): a slice of one stream's, or pieces of several.
            pieces = [h[:, (max(lo, g0) - lo) * hs:(min(hi, g1) - lo) * hs]
                      for (lo, hi), h in hidden if lo < g1 and g0 < hi]
            hg = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            # Z_G = (S/|G|) hg B_G^T + b: one GEMM with K = |G| hs (what F.linear does, plus alpha).
            z = torch.addmm(self.down.bias, hg, self.down.weight[:, g0 * hs:g1 * hs].t(), alpha=S / (g1 - g0))
            out += [((max(lo, g0), min(hi, g1)), x + z) for (lo, hi), x in streams if lo < g1 and g0 < hi]
        return out


class ShardedMLP(nn.Module):
    """784 -> d, L sharded blocks of one fixed structure, per-stream final norm, head."""

    def __init__(self, mask: int, in_dim=784, d=256, h=1024, S=4, L=2, classes=10):
        super().__init__()
        self.S = S
        self.plan = block_plan(mask, S, L)
        self.embed = nn.Linear(in_dim, d)
        self.blocks = nn.ModuleList(ShardedBlock(d, h, S) for _ in range(L))
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)
        self.reset_parameters(h, L)

    @torch.no_grad()
    def reset_parameters(self, h: int, L: int):
        """docs/design-notes.md: weights N(0, 1/fan_in), down.weight N(0, 1/(2 L h)), biases 0."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                std = (1.0 / (h * 2 * L)) ** 0.5 if name.endswith("down.weight") else p.shape[1] ** -0.5
                p.normal_(0.0, std)

    def forward(self, x):
        streams = [((0, self.S), self.embed(x))]
        for block, (segments, residual) in zip(self.blocks, self.plan):
            if residual:  # an inactive branch gate skips the block
                streams = block(streams, segments)
        if len(streams) == 1:
            return self.head(self.final_norm(streams[0][1]))
        return sum(((hi - lo) / self.S) * self.head(self.final_norm(x)) for (lo, hi), x in streams)


def make_optimizer(model: nn.Module, lr=1e-3, weight_decay=0.01, fused=None):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # norms and biases
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=fused)


class Runner:
    """One structure, one mode (eager or compile): model, optimizer, a fixed batch."""

    def __init__(self, mask: int, mode: str, batch: int, seed: int = 1, fused=None, device: str = "cpu",
                 precision: str = "fp32"):
        torch.manual_seed(seed)
        self.device = device
        self.model = ShardedMLP(mask).to(device)
        self.opt = make_optimizer(self.model, fused=fused)
        self.x = torch.rand(batch, 784).to(device)
        self.y = torch.randint(0, 10, (batch,)).to(device)
        self.batch = batch
        self.bf16 = device == "cuda" and precision == "bf16"
        self.forward = torch.compile(self.model) if mode == "compile" else self.model

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext():
            loss = F.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def measure(self, seconds: float, warmup: int = 3) -> float:
        """Samples per second over at least `seconds` (and at least 5 steps)."""
        for _ in range(warmup):
            self.step()
        self.sync()
        steps, start = 0, time.perf_counter()
        while True:
            self.step()
            steps += 1
            self.sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and steps >= 5:
                return steps * self.batch / elapsed


def run_additive(binary: str, name: str, threads: int, seconds: float) -> float:
    """Samples per second of our Google Benchmark case train_step/<name>/threads:<threads>."""
    cmd = [binary, f"--benchmark_filter=^train_step/{name}/threads:{threads}/",
           f"--benchmark_min_time={seconds}", "--benchmark_format=json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    runs = json.loads(out)["benchmarks"]
    if len(runs) != 1:
        raise RuntimeError(f"{' '.join(cmd)}: expected one benchmark, got {len(runs)}")
    return float(runs[0]["items_per_second"])


def check_against_reference(root: Path) -> None:
    """The peer computes the same function as tests/golden/reference.py (float64)."""
    sys.path.insert(0, str(root / "tests" / "golden"))
    import reference as ref  # noqa: E402

    cfg = ref.Config(in_dim=784, d=256, h=1024, S=4, L=2, classes=10)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(16, 784, dtype=torch.float64, generator=gen)
    for name, mask in STRUCTURES.items():
        model = ShardedMLP(mask).double()
        with torch.no_grad():  # non-trivial biases and norm affines, larger branches
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
        params = dict(model.named_parameters())
        want = ref.forward(cfg, params, x, mask)
        got = model(x)
        err = (got - want).abs().max().item()
        assert want.abs().max().item() > 0.1 and err < 1e-10, (name, err)
        print(f"check {name:10s} {pretty(mask, 4, 2):34s} max |peer - reference| = {err:.1e}")


def machine_line() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--additive-bench", help="our bench_train_step binary (omit to measure PyTorch alone)")
    ap.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time of one run")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--fused-adamw", action="store_true", help="torch.optim.AdamW(fused=True) (default: PyTorch's default)")
    ap.add_argument("--check", action="store_true", help="compare the peer with tests/golden/reference.py and exit")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where PyTorch trains")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32",
                    help="cuda: GEMM precision (tf32: allow_tf32; bf16: autocast)")
    args = ap.parse_args()

    root = Path(__file__).resolve().parent.parent
    if args.check:
        check_against_reference(root)
        return 0

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.structures.split(",") if n.strip()]
    for n in names:
        if n not in STRUCTURES:
            ap.error(f"--structures: unknown structure '{n}' (expected some of {', '.join(STRUCTURES)})")
    if args.batch != 256 and args.additive_bench:
        ap.error("--batch: our benchmark measures batch 256 only")
    if args.device == "cuda":
        if args.additive_bench:
            ap.error("--device cuda: compare with bench_cuda_train_step (scripts/gpu.sh), not --additive-bench")
        if not torch.cuda.is_available():
            ap.error("--device cuda: torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"

    modes = ["eager"] + ([] if args.no_compile else ["compile"])
    omp_env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
                       if k in os.environ)
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}; precision {args.precision}", flush=True)
    print(f"machine: {machine_line()}; {args.threads} threads; batch {args.batch}; "
          f"{args.rounds} rounds x {args.seconds:g} s per measurement; environment: {omp_env or '(no OpenMP settings)'}",
          flush=True)
    runners = {}
    for n in names:
        for mode in modes:
            try:
                runners[(n, mode)] = Runner(STRUCTURES[n], mode, args.batch, fused=True if args.fused_adamw else None,
                                            device=args.device, precision=args.precision)
                if mode == "compile":
                    t0 = time.perf_counter()
                    runners[(n, mode)].measure(0.0, warmup=2)  # compiles forward and backward
                    print(f"torch.compile {n}: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
            except Exception as e:  # torch.compile needs a working C++ toolchain; report and go on
                print(f"{mode} {n}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)
                runners.pop((n, mode), None)

    samples = {(n, who): [] for n in names for who in ["additive"] + modes}
    for r in range(args.rounds):
        for n in names:
            line = []
            if args.additive_bench:
                v = run_additive(args.additive_bench, n, args.threads, args.seconds)
                samples[(n, "additive")].append(v)
                line.append(f"additive {v:8.0f}")
            for mode in modes:
                if (n, mode) in runners:
                    v = runners[(n, mode)].measure(args.seconds)
                    samples[(n, mode)].append(v)
                    line.append(f"torch {mode} {v:8.0f}")
            load = os.getloadavg()[0]
            print(f"round {r + 1}/{args.rounds} {n:10s} " + "  ".join(line) + f"  samples/s  (load {load:.1f})",
                  flush=True)

    med = {k: statistics.median(v) if v else float("nan") for k, v in samples.items()}

    def ratio_range(n, mode):
        """Min and max over rounds of the per-round ratio additive / torch."""
        pairs = [a / t for a, t in zip(samples[(n, "additive")], samples[(n, mode)])]
        return (min(pairs), max(pairs)) if pairs else (float("nan"), float("nan"))

    print()
    header = "| structure | mask | additive samples/s | torch eager samples/s | ratio |"
    rule = "| --- | --- | ---: | ---: | ---: |"
    if "compile" in modes:
        header += " torch.compile samples/s | ratio |"
        rule += " ---: | ---: |"
    print(header)
    print(rule)
    for n in names:
        label = pretty(STRUCTURES[n], 4, 2).replace("|", "\\|")  # a markdown cell
        row = f"| {n} `{label}` | {STRUCTURES[n]:#04x} | "
        row += f"{med[(n, 'additive')]:.0f} | " if args.additive_bench else "- | "
        for mode in modes:
            row += f"{med[(n, mode)]:.0f} | "
            if args.additive_bench:
                lo, hi = ratio_range(n, mode)
                row += f"{med[(n, 'additive')] / med[(n, mode)]:.2f}x ({lo:.2f}-{hi:.2f}) | "
            else:
                row += "- | "
        print(row.rstrip())
    print("\nmedians over rounds; ratio = additive / torch (in brackets: range of the per-round ratios)")

    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": machine_line(), "device": args.device, "precision": args.precision, "environment": omp_env, "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
             "seconds": args.seconds, "samples_per_s": {f"{n}/{who}": v for (n, who), v in samples.items()}},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
