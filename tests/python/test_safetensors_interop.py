#!/usr/bin/env python3
"""Files exchanged between io/safetensors.hpp and the Python safetensors package.

Runs doctest cases of the C++ test binary `test_safetensors`: "*interop*" writes
`$ADDITIVE_BINARY_DIR/interop_cpp.safetensors` (the script points ADDITIVE_BINARY_DIR at
a private temporary directory for that run, so parallel ctest runs never share the
file), which this script reads with `safetensors.safe_open(..., framework="numpy")`;
"*reads python*" runs with ADDITIVE_INTEROP_FILE pointing at a file this script wrote
with `safetensors.numpy.save_file`. The binary is
`$ADDITIVE_BINARY_DIR/tests/test_safetensors` (or found below ADDITIVE_BINARY_DIR), or
the path given with --binary.

Usage: test_safetensors_interop.py [--binary PATH]; exits non-zero on any failure.
"""

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
               "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def find_binary(explicit):
    if explicit:
        return Path(explicit)
    build = os.environ.get("ADDITIVE_BINARY_DIR")
    if not build:
        raise RuntimeError("set ADDITIVE_BINARY_DIR (the CMake build directory) or pass --binary")
    direct = Path(build) / "tests" / "test_safetensors"
    if direct.is_file():
        return direct
    for candidate in sorted(Path(build).rglob("test_safetensors")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"no test_safetensors binary under {build}")


def run_case(binary, pattern, extra_env):
    """Runs the doctest cases matching `pattern`; returns (cases run, assertions run)."""
    env = dict(os.environ)
    env.update(extra_env)
    proc = subprocess.run([str(binary), f"--test-case={pattern}"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{binary} --test-case={pattern} exited with {proc.returncode}:\n{out}")
    cases = re.search(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", out)
    asserts = re.search(r"assertions:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", out)
    if not cases or not asserts:
        raise AssertionError(f"no doctest summary in the output of {binary}:\n{out}")
    return int(cases.group(2)), int(asserts.group(2))


def cpp_file(binary, directory):
    """Has the C++ test write interop_cpp.safetensors into `directory`; returns its path."""
    cases, _ = run_case(binary, "*interop*", {"ADDITIVE_BINARY_DIR": str(directory)})
    assert cases == 1, f"expected one C++ interop case to run, {cases} ran"
    path = Path(directory) / "interop_cpp.safetensors"
    assert path.is_file(), f"the C++ test did not write {path}"
    return path


def test_python_reads_cpp_file(binary, tmp):
    path = cpp_file(binary, tmp)
    expected = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": 0.5 * np.arange(4, dtype=np.float64),
        "c": np.array(-42, dtype=np.int64),
        "d": np.array([1, 2, 255], dtype=np.uint8),
        "e": np.array([[-2, -1], [0, 1]], dtype=np.int32),
        "z": np.zeros((0,), dtype=np.float32),
    }
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"hello": "world", "unicode": "grüße"}, f.metadata()
        assert sorted(f.keys()) == sorted(expected), list(f.keys())
        for name, want in expected.items():
            got = f.get_tensor(name)
            assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
            assert got.shape == want.shape, (name, got.shape, want.shape)
            assert np.array_equal(got, want), (name, got, want)
    # The whole-file loader validates the layout too.
    assert sorted(load_file(str(path))) == sorted(expected)


def test_cpp_file_layout(binary, tmp):
    data = cpp_file(binary, tmp).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0, f"header length {n} is not a multiple of 8"
    header_text = data[8:8 + n].decode("utf-8")
    assert header_text.rstrip(" ").endswith("}"), "header padding must be spaces"
    header = json.loads(header_text)
    assert header.pop("__metadata__") == {"hello": "world", "unicode": "grüße"}
    ranges = sorted((info["data_offsets"][0], info["data_offsets"][1], name, info) for name, info in header.items())
    position = 0
    for begin, end, name, info in ranges:
        assert begin == position, f"tensor {name} starts at {begin}, expected {position}"
        size = DTYPE_SIZES[info["dtype"]]
        assert (end - begin) == size * int(np.prod(info["shape"], dtype=np.int64)), name
        assert (8 + n + begin) % size == 0, f"tensor {name} is not aligned to its element size"
        position = end
    assert 8 + n + position == len(data), "the data buffer must end with the last tensor"


def test_cpp_reads_python_file(binary, tmp):
    tensors = {
        "x": (np.arange(6, dtype=np.float32) * 1.5 - 2).reshape(3, 2),
        "y": np.array([0.1, -2.5, 1e-300, 1e300], dtype=np.float64).reshape(2, 1, 2),
        "idx": np.array([-7, 3, 2**40, 0, -(2**62)], dtype=np.int64),
        "mask": np.array([[0, 1], [255, 7]], dtype=np.uint8),
        "i32": np.array([-2**31, 0, 2**31 - 1], dtype=np.int32),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float64),
    }
    path = Path(tmp) / "interop_python.safetensors"
    save_file(tensors, str(path), metadata={"source": "numpy", "note": "grüße"})
    cases, assertions = run_case(binary, "*reads python*", {"ADDITIVE_INTEROP_FILE": str(path)})
    assert cases == 1, f"expected one C++ case to run, {cases} ran"
    assert assertions > 10, f"the C++ case made {assertions} checks: it must not have skipped"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", help="path of the test_safetensors binary")
    args = parser.parse_args()
    tests = [test_python_reads_cpp_file, test_cpp_file_layout, test_cpp_reads_python_file]
    passed = failed = 0
    try:
        binary = find_binary(args.binary)
    except RuntimeError as e:
        print(f"error: {e}")
        print(f"0 passed, {len(tests)} failed")
        return 1
    for test in tests:
        try:
            with tempfile.TemporaryDirectory(prefix="additive_interop_") as tmp:
                test(binary, tmp)
            passed += 1
            print(f"PASS {test.__name__}")
        except Exception:  # noqa: BLE001 - report every failure, then go on
            failed += 1
            print(f"FAIL {test.__name__}")
            traceback.print_exc(file=sys.stdout)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
