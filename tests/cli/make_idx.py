#!/usr/bin/env python3
"""Writes a small synthetic IDX dataset (the MNIST layout) for the CLI tests, valid or
broken in one named way, so each bad-input case derives its variant from a valid set.

    make_idx.py OUT_DIR [--train 64] [--test 32] [--raw] [--seed 1] [--corrupt MODE ...]

OUT_DIR receives {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (no .gz with --raw):
28x28 unsigned-byte images and labels 0..9 (every class present when the count allows).
Corruption modes (each touches the training split unless its name says otherwise):

    wrong-magic         train images file carries the labels magic 0x00000801
    truncate-labels     train labels .gz cut to half its bytes (ends inside the deflate data)
    truncate-trailer    train images .gz without its last 4 bytes (the gzip trailer)
    truncate-raw        train images (uncompressed) cut 100 bytes short of its pixel data
    count-mismatch      train labels file holds one label fewer than there are images
    label-range         train label at index 5 is 10 (out of range for 10 classes)
    missing-labels      no train labels file at all
    missing-test-images no t10k images file at all

Python standard library only.
"""
import argparse
import gzip
import os
import random
import struct
import sys

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
ROWS = COLS = 28

MODES = (
    "wrong-magic",
    "truncate-labels",
    "truncate-trailer",
    "truncate-raw",
    "count-mismatch",
    "label-range",
    "missing-labels",
    "missing-test-images",
)


def images_bytes(count, rng, magic=IMAGES_MAGIC):
    header = struct.pack(">IIII", magic, count, ROWS, COLS)
    return header + bytes(rng.randrange(256) for _ in range(count * ROWS * COLS))


def labels_bytes(labels):
    return struct.pack(">II", LABELS_MAGIC, len(labels)) + bytes(labels)


def write(path, data, gz):
    if gz:
        # mtime=0: the same arguments give the same bytes.
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=64, help="training images (default 64)")
    p.add_argument("--test", type=int, default=32, help="test images (default 32)")
    p.add_argument("--raw", action="store_true", help="write uncompressed files (no .gz)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--corrupt", action="append", default=[], choices=MODES, metavar="MODE",
                   help="one of: " + ", ".join(MODES) + " (repeatable)")
    a = p.parse_args()
    if a.train < 1 or a.test < 1:
        p.error("--train and --test must be >= 1")
    modes = set(a.corrupt)
    gz = not a.raw
    if "truncate-raw" in modes:
        gz = False
    if modes & {"truncate-labels", "truncate-trailer"} and not gz:
        p.error("truncate-labels and truncate-trailer need gzip files (drop --raw)")

    os.makedirs(a.out_dir, exist_ok=True)
    suffix = ".gz" if gz else ""
    rng = random.Random(a.seed)
    for prefix, count in (("train", a.train), ("t10k", a.test)):
        images_path = os.path.join(a.out_dir, f"{prefix}-images-idx3-ubyte{suffix}")
        labels_path = os.path.join(a.out_dir, f"{prefix}-labels-idx1-ubyte{suffix}")
        labels = [i % 10 for i in range(count)]
        rng.shuffle(labels)
        train = prefix == "train"

        magic = LABELS_MAGIC if train and "wrong-magic" in modes else IMAGES_MAGIC
        images = images_bytes(count, rng, magic)
        if train and "truncate-raw" in modes:
            images = images[:-100]
        if not (prefix == "t10k" and "missing-test-images" in modes):
            write(images_path, images, gz)
        if train and "truncate-trailer" in modes:
            with open(images_path, "rb") as f:
                data = f.read()
            with open(images_path, "wb") as f:
                f.write(data[:-4])

        if train and "label-range" in modes:
            labels[min(5, count - 1)] = 10
        if train and "count-mismatch" in modes:
            labels = labels[:-1]
        if not (train and "missing-labels" in modes):
            write(labels_path, labels_bytes(labels), gz)
        if train and "truncate-labels" in modes:
            with open(labels_path, "rb") as f:
                data = f.read()
            with open(labels_path, "wb") as f:
                f.write(data[: len(data) // 2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
