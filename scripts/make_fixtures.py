#!/usr/bin/env python3
"""Writes torchvision reference fixtures for nanoclass's parity tests.

usage: make_fixtures.py OUT_DIR ARCH [ARCH ...]     (ARCH: resnet18 resnet34 resnet50)

For each ARCH, a torchvision model with a fixed seed (random weights; BatchNorm running statistics
measured on random batches, so eval-mode BatchNorm is exercised) is saved in every file form nanoclass reads:

  ARCH.zip.pth          torch.save(state_dict)                     (zip format, torch >= 1.6)
  ARCH.legacy.pth       torch.save(..., _use_new_zipfile_serialization=False)  (legacy pickle)
  ARCH.safetensors      the same tensors in safetensors layout (written here, no extra package)
  ARCH.checkpoint.pth   {"epoch": 3, "arch": ARCH, "state_dict": {"module.<key>": ...},
                         "best_acc1": 0.5, "optimizer": {...}}  (a training checkpoint, DataParallel)
  ARCH.cuda.pth         zip format whose storages are tagged "cuda:0" (as saved from a GPU)
  ARCH.input.bin        float32 [2, 3, 224, 224] input, little-endian
  ARCH.logits.bin       float32 [2, 1000] eval-mode logits of that input

For resnet18 also, the same state dict in other float types and a partly prefixed copy:

  resnet18.DT.zip.pth, resnet18.DT.legacy.pth, resnet18.DT.safetensors
                        every float tensor cast to DT (f16, bf16, f64; `tensor.to(dtype)`,
                        round to nearest even; the f64 values then scaled by 1 + 3 * 2^-26, which
                        puts them between two float32 numbers), num_batches_tracked left int64
  resnet18.DT.expected.safetensors
                        the float32 values PyTorch gives those DT tensors (`tensor.float()`):
                        exact for f16 and bf16, rounded to nearest even for f64
  resnet18.f16.logits.bin
                        float32 [2, 1000] eval-mode logits of ARCH.input.bin through resnet18
                        holding the f16 weights as float32 (`model.half().float()`)
  resnet18.partial_module.pth
                        the state dict with `module.` in front of the layer3, layer4 and fc keys
                        only (an inconsistent nn.DataParallel state dict)

Every BatchNorm's num_batches_tracked is 4 (the four calibration batches below).

Run with Debian's python3-torch / python3-torchvision (/usr/bin/python3).
"""
import json
import os
import struct
import sys

import torch
import torchvision


def write_safetensors(path, tensors):
    header = {}
    offset = 0
    blobs = []
    dtypes = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
    }
    for name, t in tensors.items():
        t = t.contiguous()
        # numpy has no bfloat16: its bytes are those of the same-sized int16 view.
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}


def write_dtype_variants(out, arch, model, sd, x):
    """The resnet18-only files of the docstring: other float types and a partial prefix."""
    # `sd` shares storage with the model: keep a copy to restore after the f16 logits.
    sd = {k: v.clone() for k, v in sd.items()}
    for name, dtype in DTYPES.items():
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        if dtype == torch.float64:
            # Values between two float32 numbers (0.375 to 0.75 of a float32 step away from zero
            # from the original), so loading must round them to nearest: truncating keeps them all.
            cast = {k: v * (1 + 3 * 2**-26) if v.is_floating_point() else v for k, v in cast.items()}
        torch.save(cast, os.path.join(out, f"{arch}.{name}.zip.pth"))
        torch.save(
            cast,
            os.path.join(out, f"{arch}.{name}.legacy.pth"),
            _use_new_zipfile_serialization=False,
        )
        write_safetensors(os.path.join(out, f"{arch}.{name}.safetensors"), cast)
        expected = {k: v.float() if v.is_floating_point() else v for k, v in cast.items()}
        write_safetensors(os.path.join(out, f"{arch}.{name}.expected.safetensors"), expected)
        if name == "f16":
            model.load_state_dict(expected)
            with torch.no_grad():
                y = model(x)
            y.numpy().astype("<f4").tofile(os.path.join(out, f"{arch}.f16.logits.bin"))
            model.load_state_dict(sd)
    partial = {
        ("module." + k if k.split(".")[0] in ("layer3", "layer4", "fc") else k): v
        for k, v in sd.items()
    }
    torch.save(partial, os.path.join(out, f"{arch}.partial_module.pth"))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for arch in sys.argv[2:]:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None)
        # Realistic BatchNorm statistics, as in trained weights: random affine parameters,
        # then running statistics measured on random batches (cumulative average), so that
        # activations stay normalised through every stage and logits have the scale of a
        # trained model's.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.0)
                    m.bias.uniform_(-0.1, 0.1)
                    m.reset_running_stats()
                    m.momentum = None
            model.train()
            calib = torch.Generator().manual_seed(2)
            for _ in range(4):
                model(torch.randn(8, 3, 224, 224, generator=calib))
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.1
        model.eval()
        sd = model.state_dict()
        torch.save(sd, os.path.join(out, f"{arch}.zip.pth"))
        torch.save(sd, os.path.join(out, f"{arch}.legacy.pth"), _use_new_zipfile_serialization=False)
        write_safetensors(os.path.join(out, f"{arch}.safetensors"), sd)
        ckpt = {
            "epoch": 3,
            "arch": arch,
            "state_dict": {"module." + k: v for k, v in sd.items()},
            "best_acc1": 0.5,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
        }
        torch.save(ckpt, os.path.join(out, f"{arch}.checkpoint.pth"))
        original = torch.serialization.location_tag
        torch.serialization.location_tag = lambda storage: "cuda:0"
        try:
            torch.save(sd, os.path.join(out, f"{arch}.cuda.pth"))
        finally:
            torch.serialization.location_tag = original
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, 224, 224, generator=g)
        with torch.no_grad():
            y = model(x)
        x.numpy().astype("<f4").tofile(os.path.join(out, f"{arch}.input.bin"))
        y.numpy().astype("<f4").tofile(os.path.join(out, f"{arch}.logits.bin"))
        if arch == "resnet18":
            write_dtype_variants(out, arch, model, sd, x)
        print(f"{arch}: {len(sd)} tensors written to {out}")


if __name__ == "__main__":
    main()
