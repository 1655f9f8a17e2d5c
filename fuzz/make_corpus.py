#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/fuzz_<target>.cpp): small valid
files, so that the fuzzer starts deep inside each reader, and files broken in one named
way each, so that it starts next to every refusal.

    make_corpus.py [OUT_DIR]       (default: fuzz/corpus next to this script)
    make_corpus.py --check         exit 1 unless fuzz/corpus holds exactly these bytes

OUT_DIR/<target>/ receives the seeds: `ok-*` must be accepted, `bad-*` refused (the
corpus replay test checks both), other names carry no expectation (one of the target's
readers accepts them, another refuses). Files this script does not write are left alone:
the inputs a fuzzer found, kept as regressions (`bad-found-<what>.<ext>`, as found). The output is
deterministic (seeded, gzip mtime 0). Python standard library only.
"""
import gzip
import json
import os
import random
import struct
import sys
import zlib

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def gz(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


# --------------------------------------------------------------------------------------
# IDX (data/idx.hpp)
# --------------------------------------------------------------------------------------
def idx_images(count, rows, cols, rng, magic=IMAGES_MAGIC):
    return struct.pack(">IIII", magic, count, rows, cols) + bytes(rng.randrange(256) for _ in range(count * rows * cols))


def idx_labels(labels, magic=LABELS_MAGIC):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


def idx_corpus():
    rng = random.Random(18)
    images = idx_images(3, 4, 5, rng)  # 76 bytes
    labels = idx_labels([rng.randrange(10) for _ in range(10)])
    images_gz = gz(idx_images(4, 6, 6, rng))
    half = len(images) // 2
    out = {
        "ok-images-raw.idx": images,
        "ok-labels-raw.idx": labels,
        "ok-images.idx.gz": images_gz,
        "ok-labels.idx.gz": gz(labels),
        # Concatenated gzip members (as `gzip -c a b` writes) are one stream.
        "ok-images-two-members.idx.gz": gz(images[:half]) + gz(images[half:]),
        "ok-images-28x28.idx": idx_images(1, 28, 28, rng),
        "bad-empty.idx": b"",
        "bad-short-header.idx": images[:6],
        "bad-wrong-magic.idx": idx_images(3, 4, 5, rng, magic=0x00000802),
        "bad-images-truncated.idx": images[:-7],
        "bad-images-trailing-byte.idx": images + b"\x00",
        "bad-labels-truncated.idx": labels[:-1],
        "bad-labels-trailing-bytes.idx": labels + b"\x01\x02",
        "bad-zero-count.idx": struct.pack(">IIII", IMAGES_MAGIC, 0, 4, 5),
        "bad-zero-labels.idx": struct.pack(">II", LABELS_MAGIC, 0),
        "bad-huge-image.idx": struct.pack(">IIII", IMAGES_MAGIC, 1, 65536, 65536) + images[16:],
        "bad-huge-count.idx": struct.pack(">IIII", IMAGES_MAGIC, 0xFFFFFFFF, 28, 28) + images[16:],
        "bad-huge-labels.idx": struct.pack(">II", LABELS_MAGIC, 0xFFFFFFFF) + labels[8:],
        "bad-truncated.idx.gz": images_gz[: len(images_gz) // 2],
        "bad-no-trailer.idx.gz": images_gz[:-4],
        "bad-garbage-after.idx.gz": images_gz + b"not gzip",
        # A flipped bit in the last deflate byte (the header inflates fine, the CRC fails).
        "bad-corrupt.idx.gz": images_gz[:-9] + bytes([images_gz[-9] ^ 0x01]) + images_gz[-8:],
        # A valid labels file, then a megabyte and more of zeros in the same stream: refused
        # after counting 1 MiB of trailing bytes, without inflating the rest.
        "bad-labels-then-bomb.idx.gz": gz(labels + bytes(2 << 20)),
    }
    return out


# --------------------------------------------------------------------------------------
# safetensors (io/safetensors.hpp)
# --------------------------------------------------------------------------------------
def safetensors(header, data=b"", pad=True):
    """A file from a header (a dict, dumped compactly, or the header text) and data bytes."""
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"), sort_keys=True)
    raw = text.encode()
    if pad:
        raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def tensors(specs, metadata=None):
    """specs: [(name, dtype, shape, bytes)] laid out in order: (header dict, data)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, payload in specs:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    return header, data


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def safetensors_corpus():
    one, one_data = tensors([("w", "F32", [2, 3], f32([0.5, -1, 2, 3.25, 0, 1e-3]))], {"note": "fuzz seed"})
    mixed, mixed_data = tensors(
        [
            ("double", "F64", [2], struct.pack("<2d", 1.5, -2.0)),
            ("index", "I64", [3], struct.pack("<3q", 1, -2, 1 << 40)),
            ("float", "F32", [2, 2], f32([1, 2, 3, 4])),
            ("half", "BF16", [3], b"\x80\x3f\x00\x40\x40\x40"),
            ("scalar", "F32", [], f32([7])),
            ("bytes", "U8", [5], b"abcde"),
            ("flags", "BOOL", [2], b"\x01\x00"),
            ("empty", "F32", [0, 3], b""),
        ],
        {"format": "pt", "k": ""},
    )
    out = {
        "ok-one-tensor.safetensors": safetensors(one, one_data),
        "ok-mixed-dtypes.safetensors": safetensors(mixed, mixed_data),
        "ok-no-tensors.safetensors": safetensors({}),
        "ok-null-metadata.safetensors": safetensors('{"__metadata__":null}'),
        "ok-unpadded.safetensors": safetensors(one, one_data, pad=False),
        "bad-empty.safetensors": b"",
        "bad-short.safetensors": b"\x08\x00\x00\x00",
        "bad-length-past-end.safetensors": struct.pack("<Q", 1000) + b"{}      ",
        "bad-absurd-length.safetensors": struct.pack("<Q", 1 << 62) + b"{}      ",
        "bad-not-json.safetensors": safetensors('{"w": {"dtype": "F32",'),
        "bad-not-object.safetensors": safetensors("[1, 2, 3]"),
        "bad-deep.safetensors": safetensors('{"__metadata__":' + "[" * 65 + "]" * 65 + "}"),
        "bad-duplicate-key.safetensors": safetensors(
            '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
            f32([1]),
        ),
        "bad-overlap.safetensors": safetensors(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            f32([1, 2, 3]),
        ),
        "bad-gap.safetensors": safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, f32([1, 2])),
        "bad-trailing-bytes.safetensors": safetensors(one, one_data + b"\x00" * 4),
        "bad-past-buffer.safetensors": safetensors(one, one_data[:-4]),
        "bad-shape-mismatch.safetensors": safetensors(
            {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}, one_data
        ),
        "bad-shape-overflow.safetensors": safetensors(
            {"w": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 24]}}, one_data
        ),
        "bad-negative-shape.safetensors": safetensors(
            '{"w":{"dtype":"F32","shape":[-2,-3],"data_offsets":[0,24]}}', one_data
        ),
        "bad-float-offsets.safetensors": safetensors(
            '{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0.0,24.0]}}', one_data
        ),
        "bad-reversed-offsets.safetensors": safetensors(
            {"w": {"dtype": "F32", "shape": [0], "data_offsets": [24, 0]}}, one_data
        ),
        "bad-unknown-dtype.safetensors": safetensors({"w": {"dtype": "F4", "shape": [48], "data_offsets": [0, 24]}}, one_data),
        "bad-unknown-field.safetensors": safetensors(
            {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "stride": [3, 1]}}, one_data
        ),
        "bad-metadata-not-string.safetensors": safetensors({"__metadata__": {"step": 3}}),
        "bad-entry-not-object.safetensors": safetensors({"w": [0, 24]}, one_data),
        "bad-number-overflow.safetensors": safetensors(
            '{"w":{"dtype":"F32","shape":[2,3e999],"data_offsets":[0,24]}}', one_data
        ),
    }
    return out


# --------------------------------------------------------------------------------------
# checkpoints (io/checkpoint.hpp, as Trainer::resume reads them; fuzz/fuzz_checkpoint.cpp)
# --------------------------------------------------------------------------------------
# The model of fuzz_checkpoint.cpp: MlpFamily<2, 1>, in_dim = d = h = classes = 2, mask 0x3,
# default TrainOptions. These strings are what Trainer writes (nlohmann's compact dump).
CKPT_FAMILY = "mlp S=2 L=1 merge_and_branch"
CKPT_MODEL = '{"classes":2,"d":2,"h":2,"in_dim":2,"norm_eps":1e-05}'
CKPT_TRAIN = (
    '{"batch":128,"epochs":1,"lr":0.001,"min_lr":0.0,"momentum":0.9,"nesterov":false,'
    '"optimizer":"adamw","seed":0,"warmup":0.05,"weight_decay":0.01}'
)
CKPT_LAYOUT = [
    ("embed.weight", [2, 2]),
    ("embed.bias", [2]),
    ("blocks.0.norm.weight", [2]),
    ("blocks.0.norm.bias", [2]),
    ("blocks.0.up.weight", [2, 2]),
    ("blocks.0.up.bias", [2]),
    ("blocks.0.down.weight", [2, 2]),
    ("blocks.0.down.bias", [2]),
    ("final_norm.weight", [2]),
    ("final_norm.bias", [2]),
    ("head.weight", [2, 2]),
    ("head.bias", [2]),
]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def rng_state(rng, small):
    """A std::mt19937_64 state as libstdc++ writes it: 312 words, then the position."""
    words = [i + 1 for i in range(312)] if small else [rng.getrandbits(64) for _ in range(312)]
    return " ".join(str(w) for w in words) + " 312"


def checkpoint(rng, step=0, small_rng=True, meta=None, drop=(), tweak=None, dtype="F32", extra=()):
    """A checkpoint of the fuzz model: parameters, AdamW's m and v (v >= 0), metadata.
    meta: metadata entries to set (None: remove); drop: tensor names to leave out;
    tweak(name, values): may change a tensor's values (a list of floats); extra: more
    tensors, (name, dtype, shape, bytes)."""
    metadata = {
        "format": "additive-checkpoint-1",
        "dtype": dtype,
        "step": str(step),
        "epoch": "0",
        "rng": rng_state(rng, small_rng),
        "epoch_seed": "0" if step == 0 else str(rng.getrandbits(64)),
        "epoch_loss_sum": "0" if step == 0 else "%.17g" % (step * 0.69),
        "family": CKPT_FAMILY,
        "mask": "0x3",
        "structure": "[12] res=1",
        "model": CKPT_MODEL,
        "train": CKPT_TRAIN,
    }
    for k, v in (meta or {}).items():
        if v is None:
            metadata.pop(k, None)
        else:
            metadata[k] = v
    specs = []
    for prefix, lo in (("", -1.0), ("optim.m.", -0.1), ("optim.v.", 0.0)):
        for name, shape in CKPT_LAYOUT:
            full = prefix + name
            if full in drop:
                continue
            values = [round(rng.uniform(lo, 1.0), 3) for _ in range(numel(shape))]
            if tweak:
                values = tweak(full, values) or values
            if dtype == "F64":
                payload = struct.pack("<%dd" % len(values), *values)
            else:
                payload = f32(values)
            specs.append((full, dtype, shape, payload))
    header, data = tensors(specs + list(extra), metadata)
    return safetensors(header, data)


def set_value(target, index, value):
    def tweak(name, values):
        if name == target:
            values[index] = value
        return values

    return tweak


def checkpoint_corpus():
    rng = random.Random(42)
    out = {
        "ok-step0.safetensors": checkpoint(rng),
        "ok-step5-full-rng.safetensors": checkpoint(rng, step=5, small_rng=False),
        "bad-format.safetensors": checkpoint(rng, meta={"format": "additive-checkpoint-0"}),
        "bad-no-format.safetensors": checkpoint(rng, meta={"format": None}),
        "bad-dtype-f64.safetensors": checkpoint(rng, dtype="F64"),
        "bad-family.safetensors": checkpoint(rng, meta={"family": "mlp S=4 L=2 merge_only"}),
        "bad-model.safetensors": checkpoint(rng, meta={"model": CKPT_MODEL.replace('"h":2', '"h":4')}),
        "bad-mask.safetensors": checkpoint(rng, meta={"mask": "0x1"}),
        "bad-train.safetensors": checkpoint(rng, meta={"train": CKPT_TRAIN.replace("0.001", "0.01")}),
        "bad-gating.safetensors": checkpoint(rng, meta={"gating": '{"p":0.5,"p_end":null,"per_sample":false}'}),
        "bad-step-huge.safetensors": checkpoint(rng, meta={"step": str(1 << 60)}),
        "bad-step-text.safetensors": checkpoint(rng, meta={"step": "12abc"}),
        "bad-epoch-seed.safetensors": checkpoint(rng, meta={"epoch_seed": "-1"}),
        "bad-loss-sum.safetensors": checkpoint(rng, meta={"epoch_loss_sum": "nan"}),
        "bad-rng-short.safetensors": checkpoint(rng, meta={"rng": "1 2 3"}),
        "bad-rng-zero.safetensors": checkpoint(rng, meta={"rng": " ".join(["0"] * 312) + " 312"}),
        "bad-rng-overflow.safetensors": checkpoint(rng, meta={"rng": "18446744073709551616 " + rng_state(rng, True)[2:]}),
        "bad-missing-tensor.safetensors": checkpoint(rng, drop=("head.bias",)),
        "bad-missing-moment.safetensors": checkpoint(rng, drop=("optim.v.embed.weight",)),
        "bad-nan.safetensors": checkpoint(rng, tweak=set_value("blocks.0.up.weight", 1, float("nan"))),
        "bad-inf-moment.safetensors": checkpoint(rng, tweak=set_value("optim.m.head.weight", 0, float("inf"))),
        "bad-negative-v.safetensors": checkpoint(rng, tweak=set_value("optim.v.embed.bias", 1, -0.25)),
        "bad-stray-tensor.safetensors": checkpoint(rng, extra=[("stray", "F32", [1], f32([1]))]),
        "bad-stray-state.safetensors": checkpoint(rng, extra=[("optim.x.nothing", "F32", [1], f32([1]))]),
        "bad-model-number-overflow.safetensors": checkpoint(rng, meta={"model": CKPT_MODEL.replace("1e-05", "1e999")}),
    }
    return out


# --------------------------------------------------------------------------------------
# search results (exp/results_file.hpp, exp/stochastic.hpp: load_search_accuracies)
# --------------------------------------------------------------------------------------
RESULTS_FAMILY = "mlp S=4 L=2 merge_only"


def results(rng, masks=(0, 5, 63), seeds=2, long_top=1, equivalent=None):
    runs = []
    entries = []
    for m in masks:
        accs = []
        for r in range(seeds):
            acc = round(rng.uniform(0.5, 0.9), 4)
            accs.append(acc)
            runs.append(
                {
                    "phase": "short",
                    "mask": m,
                    "seed": r,
                    "epochs": 1,
                    "val_accuracy": acc,
                    "val_loss": round(rng.uniform(0.2, 1.5), 6),
                    "train_loss": round(rng.uniform(0.2, 1.5), 6),
                    "seconds": round(rng.uniform(0.1, 3), 3),
                }
            )
        entries.append(
            {
                "mask": m,
                "mask_hex": hex(m),
                "equivalent": (equivalent or {}).get(m, []),
                "runs": seeds,
                "acc_mean": sum(accs) / len(accs),
                "acc_std": 0.01,
                "loss_mean": 0.5,
                "loss_std": 0.01,
                "pareto": False,
            }
        )
    entries.sort(key=lambda e: -e["acc_mean"])
    for i, e in enumerate(entries):
        e["rank"] = i + 1
    for m in masks[:long_top]:
        runs.append(
            {"phase": "long", "mask": m, "seed": 0, "epochs": 2, "val_accuracy": 0.8, "val_loss": 0.4,
             "train_loss": 0.3}
        )
    return {
        "format": "additive-search-1",
        "family": RESULTS_FAMILY,
        "model": {"classes": 10, "d": 16, "h": 32, "in_dim": 784, "norm_eps": 1e-05},
        "search": {"dedupe": True, "long_epochs": 0, "long_top": long_top, "sample": 3, "sample_seed": 1,
                   "seeds": seeds, "top_k": 8},
        "runs": runs,
        "complete": True,
        "report": {"family": RESULTS_FAMILY, "candidates": len(masks), "trained": len(masks), "top_k": 8,
                   "entries": entries, "trust": None},
    }


def correct_hex(bits):
    """Per-image correctness as the search writes it: hex digit k holds images 4k..4k+3,
    the lowest bit first."""
    return "".join("%x" % sum(bits[4 * k + i] << i for i in range(4) if 4 * k + i < len(bits))
                   for k in range((len(bits) + 3) // 4))


def with_correct_bits(j, rng, images=16):
    """Gives each run record an accuracy k/images and the bits of k right images."""
    for r in j["runs"]:
        right = rng.randrange(images + 1)
        bits = [1] * right + [0] * (images - right)
        rng.shuffle(bits)
        r["val_accuracy"] = right / images
        r["correct"] = correct_hex(bits)
    return j


def dumps(j, indent=None):
    """Compact JSON (ok-complete.json is indented as the search writes it)."""
    separators = None if indent else (",", ":")
    return (json.dumps(j, indent=indent, separators=separators) + "\n").encode()


def results_corpus():
    rng = random.Random(7)
    good = results(rng)

    def changed(edit):
        j = json.loads(json.dumps(good))
        edit(j)
        return dumps(j)

    def dup(j):
        j["runs"].append(dict(j["runs"][0], val_accuracy=0.123))

    out = {
        "ok-complete.json": dumps(good, indent=1),
        "ok-equivalents.json": dumps(results(rng, masks=(1, 2), seeds=1, equivalent={1: [3, 9], 2: [17]})),
        "ok-no-runs.json": changed(lambda j: j.pop("runs")),
        "ok-same-record-twice.json": changed(lambda j: j["runs"].append(j["runs"][0])),
        # Per-image bits of 16 validation images (fuzz_results.cpp reads them as the search does).
        "ok-correct-bits.json": changed(lambda j: with_correct_bits(j, rng)),
        "bad-correct-not-string.json": changed(lambda j: j["runs"][0].update(correct=12)),
        # Accepted without the bits (load_search_accuracies), refused with them: no expectation.
        "correct-bits-disagree.json": changed(
            lambda j: with_correct_bits(j, rng)["runs"][0].update(correct="ffff", val_accuracy=0.5)
        ),
        "correct-bits-too-long.json": changed(lambda j: with_correct_bits(j, rng)["runs"][1].update(correct="00000")),
        "bad-empty.json": b"",
        "bad-not-json.json": b'{"format": "additive-search-1", "runs": [',
        "bad-not-object.json": b"[1, 2, 3]\n",
        "bad-deep.json": changed(lambda j: j.update(extra=json.loads("[" * 70 + "]" * 70))),
        "bad-format.json": changed(lambda j: j.update(format="additive-search-0")),
        "bad-family.json": changed(lambda j: j.update(family="mlp S=4 L=2 merge_and_branch")),
        "bad-incomplete.json": changed(lambda j: j.update(complete=False)),
        "bad-no-report.json": changed(lambda j: j.pop("report")),
        "bad-seeds-setting.json": changed(lambda j: j["search"].update(seeds=0)),
        "bad-runs-object.json": changed(lambda j: j.update(runs={"a": 1})),
        "bad-record-not-object.json": changed(lambda j: j["runs"].append(3)),
        "bad-acc-7.5.json": changed(lambda j: j["runs"][0].update(val_accuracy=7.5)),
        # A literal beyond a double's range (nlohmann: out_of_range, not parse_error).
        "bad-acc-1e999.json": changed(lambda j: j["runs"][0].update(val_accuracy=7.5)).replace(b"7.5", b"1e999"),
        "bad-acc-null.json": changed(lambda j: j["runs"][1].update(val_accuracy=None)),
        "bad-loss-negative.json": changed(lambda j: j["runs"][0].update(val_loss=-0.5)),
        "bad-seconds-text.json": changed(lambda j: j["runs"][0].update(seconds="3")),
        "bad-mask-64.json": changed(lambda j: j["runs"][0].update(mask=64)),
        "bad-mask-negative.json": changed(lambda j: j["runs"][0].update(mask=-1)),
        "bad-mask-float.json": changed(lambda j: j["runs"][0].update(mask=1.5)),
        "bad-seed-2.json": changed(lambda j: j["runs"][0].update(seed=2)),
        "bad-long-seed-1.json": changed(lambda j: j["runs"][-1].update(seed=1)),
        "bad-phase.json": changed(lambda j: j["runs"][0].update(phase="medium")),
        "bad-epochs-0.json": changed(lambda j: j["runs"][0].update(epochs=0)),
        "bad-epochs-float.json": changed(lambda j: j["runs"][0].update(epochs=1.5)),
        # A raced search: seed indices up to the largest rung's (load_search_accuracies reads "race").
        "ok-race.json": changed(lambda j: (j["search"].update(race=[[1, 1], [3, 2]], eta=4),
                                           j["runs"].append(dict(j["runs"][0], seed=2, epochs=2)))[0]),
        "bad-missing-field.json": changed(lambda j: j["runs"][0].pop("train_loss")),
        "bad-duplicate-run.json": changed(dup),
        "bad-entries-missing.json": changed(lambda j: j["report"].pop("entries")),
        "bad-entry-acc.json": changed(lambda j: j["report"]["entries"][0].update(acc_mean=1.5)),
        "bad-entry-equivalent.json": changed(lambda j: j["report"]["entries"][0].update(equivalent=[70])),
        "bad-entry-equivalent-not-list.json": changed(lambda j: j["report"]["entries"][0].update(equivalent=5)),
        "bad-entry-conflict.json": changed(
            lambda j: j["report"]["entries"][1].update(equivalent=[j["report"]["entries"][0]["mask"]])
        ),
    }
    return out


CORPORA = {
    "idx": idx_corpus,
    "safetensors": safetensors_corpus,
    "checkpoint": checkpoint_corpus,
    "results": results_corpus,
}


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    out_dir = args[0] if args else os.path.join(here, "corpus")
    stale = []
    for target, make in CORPORA.items():
        directory = os.path.join(out_dir, target)
        os.makedirs(directory, exist_ok=True)
        for name, data in sorted(make().items()):
            path = os.path.join(directory, name)
            if check:
                try:
                    with open(path, "rb") as f:
                        same = f.read() == data
                except FileNotFoundError:
                    same = False
                if not same:
                    stale.append(path)
                continue
            with open(path, "wb") as f:
                f.write(data)
        if not check:
            print("%s: %d seeds in %s" % (target, len(make()), directory))
    if check and stale:
        print("out of date (run fuzz/make_corpus.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
