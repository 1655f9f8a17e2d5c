"""Generate the golden fixture for the sharded MLP (run by hand, never in CI).

    python3 -m venv .venv && .venv/bin/pip install torch safetensors numpy
    .venv/bin/python tests/golden/make_golden.py

Writes tests/golden/mlp_golden.safetensors and tests/golden/mlp_golden.json.
See tests/golden/README.md for what they hold and how the C++ test uses them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402

SEED = 1234
PERTURB_SEED = 5678
CFG = ref.Config(in_dim=48, d=32, h=64, S=4, L=2, classes=10, layout="merge_and_branch")
BATCHES, BATCH_SIZE, STEPS = 4, 16, 10
OPT = dict(name="AdamW", lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False)

# (name, per-block (merge gates, branch gate))
STRUCTURES = [
    ("dense", [([1, 1, 1], 1), ([1, 1, 1], 1)]),
    ("all_split", [([0, 0, 0], 1), ([0, 0, 0], 1)]),
    ("mixed_skip", [([1, 0, 1], 1), ([0, 1, 1], 0)]),
    ("mixed", [([1, 0, 1], 1), ([0, 1, 0], 1)]),
]
EXPECTED_MASKS = {"dense": 0xFF, "all_split": 0x88, "mixed_skip": 0x6D, "mixed": 0xAD}
EXPECTED_PRETTY = {"dense": "[1234] res=1 . [1234] res=1",
                   "all_split": "[1|2|3|4] res=1 . [1|2|3|4] res=1",
                   "mixed_skip": "[12|34] res=1 . [1|234] res=0",
                   "mixed": "[12|34] res=1 . [1|23|4] res=1"}


def hexm(mask: int) -> str:
    return f"{mask:#04x}"  # '0xff', '0x88', '0x6d', '0xad'


def decay_names(cfg):
    """Weight decay on the linear weights only; none on biases and norm affines."""
    return [n for n, _ in ref.param_shapes(cfg) if not ref.is_bias(n) and not ref.is_norm(n)]


def global_norm(tensors) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def train(init, batches, mask, dtype):
    """STEPS AdamW steps from `init` (cast to dtype); step t uses batch t % 4.
    Parameters a structure does not use (a skipped block) get an exact zero
    gradient (DESIGN property 6), so AdamW still applies its decoupled weight
    decay to them."""
    names = [n for n, _ in ref.param_shapes(CFG)]
    p = {n: init[n].to(dtype).clone().requires_grad_(True) for n in names}
    dec = set(decay_names(CFG))
    opt = torch.optim.AdamW(
        [dict(params=[p[n] for n in names if n in dec], weight_decay=OPT["weight_decay"]),
         dict(params=[p[n] for n in names if n not in dec], weight_decay=0.0)],
        lr=OPT["lr"], betas=OPT["betas"], eps=OPT["eps"], amsgrad=False,
        foreach=False, fused=False)
    losses, gnorms = [], []
    for t in range(STEPS):
        x, y = batches[t % BATCHES]
        opt.zero_grad(set_to_none=True)
        loss = ref.loss_fn(ref.forward(CFG, p, x.to(dtype), mask), y)
        loss.backward()
        for n in names:
            if p[n].grad is None:
                p[n].grad = torch.zeros_like(p[n])
        losses.append(float(loss.detach()))
        gnorms.append(global_norm(p[n].grad for n in names))
        opt.step()
    with torch.no_grad():
        x0, y0 = batches[0]
        final_loss = float(ref.loss_fn(ref.forward(CFG, p, x0.to(dtype), mask), y0))
    return dict(loss=losses, grad_norm=gnorms, final_loss=final_loss,
                final_param_norm=global_norm(p.values()))


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def main():
    torch.set_num_threads(1)  # reproducible reductions
    print("torch", torch.__version__)
    selftest = ref.self_test()
    print("self-test passed")

    for name, blocks in STRUCTURES:
        assert ref.make_mask(CFG, blocks) == EXPECTED_MASKS[name], name
        assert ref.pretty(CFG, EXPECTED_MASKS[name]) == EXPECTED_PRETTY[name], (name, ref.pretty(CFG, EXPECTED_MASKS[name]))
        assert [ref.block_gates(CFG, EXPECTED_MASKS[name], l) for l in range(CFG.L)] == \
            [([bool(g) for g in mg], bool(br)) for mg, br in blocks], name

    # --- initial weights, then data, from one seeded stream --------------
    torch.manual_seed(SEED)
    init = ref.init_params(CFG, torch.float32)
    batches = []
    for _ in range(BATCHES):
        x = torch.rand(BATCH_SIZE, CFG.in_dim, dtype=torch.float32)
        y = torch.randint(0, CFG.classes, (BATCH_SIZE,), dtype=torch.int64)
        batches.append((x, y))
    # perturbed copy (nonzero biases, non-unit norm affines) for forward checks
    gen = torch.Generator().manual_seed(PERTURB_SEED)
    pert32 = {n: t.to(torch.float32) for n, t in ref.perturb_params(CFG, init, gen, 0.2).items()}

    tensors = {n: init[n].contiguous() for n, _ in ref.param_shapes(CFG)}
    for n, _ in ref.param_shapes(CFG):
        tensors["perturbed." + n] = pert32[n].contiguous()
    for i, (x, y) in enumerate(batches):
        tensors[f"batch.{i}.x"] = x.contiguous()
        tensors[f"batch.{i}.y"] = y.contiguous()

    init64 = {n: t.double() for n, t in init.items()}
    pert64 = {n: t.double() for n, t in pert32.items()}
    x0_64, y0 = batches[0][0].double(), batches[0][1]
    with torch.no_grad():
        for name, _ in STRUCTURES:
            m = EXPECTED_MASKS[name]
            tensors[f"logits64.{hexm(m)}"] = ref.forward(CFG, init64, x0_64, m).contiguous()
            tensors[f"perturbed.logits64.{hexm(m)}"] = ref.forward(CFG, pert64, x0_64, m).contiguous()
        # batch-0 loss of every one of the 2^n masks, float64
        tensors["loss64.all_masks"] = torch.tensor(
            [float(ref.loss_fn(ref.forward(CFG, init64, x0_64, m), y0)) for m in range(1 << CFG.n)],
            dtype=torch.float64)
        tensors["perturbed.loss64.all_masks"] = torch.tensor(
            [float(ref.loss_fn(ref.forward(CFG, pert64, x0_64, m), y0)) for m in range(1 << CFG.n)],
            dtype=torch.float64)

    # --- training trajectories --------------------------------------------
    structures = []
    for name, blocks in STRUCTURES:
        m = EXPECTED_MASKS[name]
        r32 = train(init, batches, m, torch.float32)
        r64 = train(init, batches, m, torch.float64)
        drift = dict(
            loss_max_rel=max(rel(a, b) for a, b in zip(r32["loss"], r64["loss"])),
            grad_norm_max_rel=max(rel(a, b) for a, b in zip(r32["grad_norm"], r64["grad_norm"])),
            final_loss_rel=rel(r32["final_loss"], r64["final_loss"]),
            final_param_norm_rel=rel(r32["final_param_norm"], r64["final_param_norm"]))
        structures.append(dict(
            name=name, mask=m, mask_hex=hexm(m), structure=ref.pretty(CFG, m),
            canonical=ref.canonical(CFG, m), canonical_hex=hexm(ref.canonical(CFG, m)),
            **r32, float64=r64, float32_vs_float64=drift))
        print(f"{name:10s} {hexm(m)} {ref.pretty(CFG, m):28s} loss {r32['loss'][0]:.6f} -> "
              f"{r32['loss'][-1]:.6f}  final {r32['final_loss']:.6f}  |p| {r32['final_param_norm']:.6f}  "
              f"f32/f64 drift: loss {drift['loss_max_rel']:.1e} gnorm {drift['grad_norm_max_rel']:.1e} "
              f"final {drift['final_loss_rel']:.1e}")

    st_path = os.path.join(HERE, "mlp_golden.safetensors")
    save_file(tensors, st_path, metadata={"format": "additive-mlp-golden-1", "config": json.dumps(CFG.as_dict())})

    doc = dict(
        format="additive-mlp-golden-1",
        description="Golden fixture of the sharded MLP family, made by tests/golden/make_golden.py "
                    "from the independent PyTorch reference tests/golden/reference.py.",
        config=CFG.as_dict(),
        gate_numbering="block l owns bits [l*k,(l+1)*k); bit i<S-1 of a block = merge gate between "
                       "0-based shards i and i+1; bit S-1 = branch (residual) gate; set = active",
        parameters=[dict(name=n, shape=list(s), dtype="F32", weight_decay=n in decay_names(CFG))
                    for n, s in ref.param_shapes(CFG)],
        init=dict(seed=SEED, rule="torch.manual_seed(1234); for each linear weight in buffer order: "
                  "torch.randn(shape) * std, std = sqrt(1/fan_in), down.weight std = sqrt(1/(h*2L)); "
                  "biases 0, norm weights 1, norm biases 0; then the data batches from the same stream"),
        data=dict(batches=BATCHES, batch_size=BATCH_SIZE,
                  x="batch.{i}.x F32 (batch=16, in_dim=48) row-major = C++ (in_dim, batch) column-major; "
                    "torch.rand, uniform [0,1)",
                  y="batch.{i}.y I64 (16,), torch.randint(0, 10)",
                  order="for i in 0..3: x_i then y_i"),
        perturbed=dict(seed=PERTURB_SEED, rule="perturbed.{name}: init weights; every bias, norm weight "
                       "and norm bias plus 0.2 * N(0,1) (torch.Generator seeded 5678, buffer order)"),
        forward_checks=dict(
            logits64="logits64.{mask_hex} F64 (16,10): init weights cast to float64, batch 0 cast to float64",
            perturbed_logits64="perturbed.logits64.{mask_hex} F64 (16,10): perturbed weights, batch 0, float64",
            loss64_all_masks="loss64.all_masks F64 (256,): mean CE of batch 0 for mask = index, init weights, float64",
            perturbed_loss64_all_masks="perturbed.loss64.all_masks F64 (256,): same with the perturbed weights"),
        optimizer=dict(
            name="torch.optim.AdamW", lr=OPT["lr"], betas=list(OPT["betas"]), eps=OPT["eps"],
            weight_decay=OPT["weight_decay"], amsgrad=False, implementation="foreach=False, fused=False",
            param_groups="decay: embed.weight, blocks.*.up.weight, blocks.*.down.weight, head.weight; "
                         "no decay: all biases and all norm weights/biases",
            update="p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; "
                   "p -= (lr/(1-b1^t)) * m / (sqrt(v)/sqrt(1-b2^t) + eps), t = 1-based step",
            unused_parameters="exact zero gradient (a skipped block); decay and moments still update",
            steps=STEPS, batch_schedule="step t (0-based) uses batch t % 4"),
        recorded=dict(
            loss="per step, float32 training, mean CE on that step's batch BEFORE the update",
            grad_norm="per step, global L2 norm over all parameter gradients BEFORE the update "
                      "(no clipping; accumulated in float64)",
            final_loss="mean CE on batch 0 after the 10 steps (float32)",
            final_param_norm="global L2 norm of all parameters after the 10 steps",
            float64="the same 10 steps run entirely in float64 from the float32 init cast to float64",
            float32_vs_float64="relative drift of the float32 run from the float64 run: how much "
                               "float32 rounding alone moves these numbers"),
        structures=structures,
        self_test=selftest,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        torch_num_threads=1,
        command=".venv/bin/python tests/golden/make_golden.py",
        argv=sys.argv,
    )
    js_path = os.path.join(HERE, "mlp_golden.json")
    with open(js_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    for pth in (st_path, js_path):
        os.chmod(pth, 0o644)
        print(f"wrote {os.path.relpath(pth)}: {os.path.getsize(pth)} bytes")


if __name__ == "__main__":
    main()
