#!/usr/bin/env python3
"""Loads a `.pth` written by `nanoclass export --format pth` into the reference PyTorch
architecture with `load_state_dict(sd, strict=True)` and compares its outputs with nanoclass's.

The reference architectures:
    resnet18 / resnet34 / resnet50   torchvision.models.resnetNN(num_classes=K)
    efficientnet_lite0               EfficientNet.from_name("efficientnet-lite0", num_classes=K)
                                     from PyPI efficientnet-lite-pytorch==0.1.0 (the port whose
                                     key names the released Lite0 weights use)

A regression model's state dict also holds its point head (`point.conv1.*`, `point.conv2.*`,
`point.offset.*`):
the reference model then gets the PyTorch module below as `point`, reading `layer2` (ResNets)
or `_blocks.4` (EfficientNet-Lite0), and outputs `(x, y)` per category, a spatial soft-argmax
over the heatmap cells (nanoclass's `model::point`), written here independently.

CASE.json is the one of scripts/onnx_parity.py, plus "arch" and "outputs" (K). The file is read
with `torch.load(..., weights_only=True)`, so it must hold nothing but tensors in an OrderedDict.
The model runs in eval mode on the batch; the largest difference must be within the tolerance.
Exits with status 1 on a mismatch or a strict-loading error.

Usage:
    /usr/bin/python3 scripts/pth_roundtrip.py MODEL.pth CASE.json
Needs Debian python3-torch and python3-torchvision; for efficientnet_lite0 also
    /usr/bin/python3 -m pip install --break-system-packages efficientnet-lite-pytorch==0.1.0
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torchvision


def fail(msg: str) -> None:
    print(f"pth_roundtrip: {msg}", file=sys.stderr)
    sys.exit(1)


def build(arch: str, outputs: int) -> torch.nn.Module:
    if arch in ("resnet18", "resnet34", "resnet50"):
        return getattr(torchvision.models, arch)(num_classes=outputs)
    if arch == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0", num_classes=outputs)
    fail(f"unknown arch {arch!r}")
    raise AssertionError


class PointHead(torch.nn.Module):
    """h = ReLU(Conv 3x3 (C -> 64, pad 1)); p = softmax over the H*W cells of Conv 1x1 (64 -> K);
    offsets = Conv 1x1 (64 -> 2K) * (2 / W, 2 / H), channel 2k = x and 2k + 1 = y of
    category k; point = sum p * (cell centre + offset), cell centres x_j = (2j + 1) / W - 1,
    y_i = (2i + 1) / H - 1 -> [N, 2K]."""

    def __init__(self, channels: int, categories: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, 64, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(64, categories, 1)
        self.offset = torch.nn.Conv2d(64, 2 * categories, 1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(m))
        logits = self.conv2(h)
        n, k, hh, ww = logits.shape
        p = torch.softmax(logits.reshape(n, k, hh * ww), dim=2)
        cx = (2 * torch.arange(ww, dtype=torch.float32) + 1) / ww - 1
        cy = (2 * torch.arange(hh, dtype=torch.float32) + 1) / hh - 1
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        off = self.offset(h).reshape(n, k, 2, hh * ww)
        x = (p * (gx.reshape(1, 1, -1) + off[:, :, 0] * (2 / ww))).sum(2)
        y = (p * (gy.reshape(1, 1, -1) + off[:, :, 1] * (2 / hh))).sum(2)
        return torch.stack([x, y], dim=2).reshape(n, 2 * k)


def tap(arch: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stride-8 map the point head reads."""
    if arch.startswith("resnet"):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        return model.layer2(model.layer1(x))
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:5]:
        x = block(x, drop_connect_rate=None)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .pth file")
    parser.add_argument("case", help="CASE.json with the inputs and nanoclass's outputs")
    args = parser.parse_args()

    with open(args.case, encoding="utf-8") as f:
        case = json.load(f)
    shape = case["shape"]
    raw = os.path.join(os.path.dirname(os.path.abspath(args.case)), case["input"])
    x = torch.from_numpy(np.fromfile(raw, dtype="<f4").reshape(shape).copy())
    expected = np.asarray(case["expected"], dtype=np.float64)
    tol = float(case["tolerance"])

    state = torch.load(args.model, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        fail(f"not a plain state dict: {type(state).__name__}")
    arch = case["arch"]
    point = "point.conv2.weight" in state
    if point:
        # the unused linear head keeps its shape in the file: [2K, C]
        model = build(arch, int(state["fc.weight" if arch.startswith("resnet") else "_fc.weight"].shape[0]))
        model.point = PointHead(state["point.conv1.weight"].shape[1], state["point.conv2.weight"].shape[0])
    else:
        model = build(arch, int(case["outputs"]))
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    model.eval()
    with torch.no_grad():
        out = (model.point(tap(arch, model, x)) if point else model(x)).double().numpy()
    if out.shape != expected.shape:
        fail(f"output shape {out.shape}, expected {expected.shape}")
    diff = float(np.abs(out - expected).max())
    print(
        f"torch {torch.__version__}: {case['arch']} loaded {len(state)} tensors with strict=True; "
        f"{shape[0]} images, max |torch - nanoclass| {diff:.2e} (tolerance {tol:g})"
    )
    if diff > tol:
        fail(f"difference above the tolerance {tol:g}")


if __name__ == "__main__":
    main()
