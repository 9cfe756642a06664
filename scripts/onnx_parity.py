#!/usr/bin/env python3
"""Runs an ONNX model written by `nanoclass export --format onnx` in onnxruntime and compares its
outputs with nanoclass's own.

CASE.json (written by crates/nanoclass/tests/export_parity.rs, or by hand):
    {
      "input": "inputs.f32",        raw little-endian float32 [n, 3, S, S], relative to CASE.json
      "shape": [n, 3, S, S],
      "expected": [[...], ...],     n rows of nanoclass's outputs (logits, probabilities, points)
      "tolerance": 1e-4,            largest allowed absolute difference
      "metadata": {"key": "value"}  metadata_props the model must carry (a subset)
    }

Checks, in order: the input is `input_0` with a symbolic first dimension and the output is
`output_0`; the metadata entries equal the expected ones; the outputs of the whole batch and of
each image run alone are within the tolerance of `expected`. Prints one line with the largest
differences, and exits with status 1 on any mismatch.

Usage:
    /usr/bin/python3 scripts/onnx_parity.py MODEL.onnx CASE.json
Needs onnxruntime from PyPI (numpy comes with it):
    /usr/bin/python3 -m pip install --break-system-packages onnxruntime==1.31.1
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def fail(msg: str) -> None:
    print(f"onnx_parity: {msg}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("case", help="CASE.json with the inputs and nanoclass's outputs")
    args = parser.parse_args()

    with open(args.case, encoding="utf-8") as f:
        case = json.load(f)
    shape = case["shape"]
    raw = os.path.join(os.path.dirname(os.path.abspath(args.case)), case["input"])
    x = np.fromfile(raw, dtype="<f4").reshape(shape)
    expected = np.asarray(case["expected"], dtype=np.float64)
    tol = float(case["tolerance"])

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != ["input_0"] or [o.name for o in outputs] != ["output_0"]:
        fail(f"names: inputs {[i.name for i in inputs]}, outputs {[o.name for o in outputs]}")
    if isinstance(inputs[0].shape[0], int):
        fail(f"input batch dimension is fixed: {inputs[0].shape}")
    if list(inputs[0].shape[1:]) != list(shape[1:]):
        fail(f"input shape {inputs[0].shape}, expected [batch, {shape[1:]}]")

    meta = session.get_modelmeta().custom_metadata_map
    for key, want in case.get("metadata", {}).items():
        if meta.get(key) != want:
            fail(f"metadata {key!r} is {meta.get(key)!r}, expected {want!r}")

    batch = session.run(["output_0"], {"input_0": x})[0].astype(np.float64)
    if batch.shape != expected.shape:
        fail(f"output shape {batch.shape}, expected {expected.shape}")
    single = np.concatenate(
        [session.run(["output_0"], {"input_0": x[i : i + 1]})[0] for i in range(shape[0])]
    ).astype(np.float64)
    d_batch = float(np.abs(batch - expected).max())
    d_single = float(np.abs(single - expected).max())
    d_self = float(np.abs(batch - single).max())
    print(
        f"onnxruntime {ort.__version__}: {shape[0]} images, max |onnx - nanoclass| "
        f"batch {d_batch:.2e}, one by one {d_single:.2e}; max |batch - one by one| {d_self:.2e} "
        f"(tolerance {tol:g})"
    )
    if max(d_batch, d_single, d_self) > tol:
        fail(f"difference above the tolerance {tol:g}")


if __name__ == "__main__":
    main()
