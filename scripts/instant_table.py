#!/usr/bin/env python3
"""Held-out top-1 of `nanoclass train --mode instant` with few training images per class.

For each size N and seed, a training folder with N images per class is drawn (seeded) from the
dataset's train/ split and linked beside the full val/ split; `nanoclass train --mode instant`
is run with each head (auto, prototypes, linear) and its held-out top-1 is read from the run's
metrics.jsonl. Prints the mean and standard deviation over the seeds.

    python3 scripts/instant_table.py ../shared/data/hymenoptera --sizes 5 10 --seeds 10
    python3 scripts/instant_table.py ../shared/data/clocks --sizes 5 10 40 --seeds 10

NANOCLASS_BIN selects the binary (default target/release/nanoclass). Features come from the
feature cache after the first run, so each run takes about a second.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HEADS = ["auto", "prototypes", "linear"]


def images(folder: Path):
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def draw(src: Path, dst: Path, n: int, seed: int):
    rng = random.Random(seed)
    for cls in sorted(d for d in (src / "train").iterdir() if d.is_dir()):
        files = images(cls)
        pick = files if n >= len(files) else rng.sample(files, n)
        out = dst / "train" / cls.name
        out.mkdir(parents=True)
        for f in pick:
            (out / f.name).symlink_to(f.resolve())
    (dst / "val").symlink_to((src / "val").resolve())


def top1(binary: str, data: Path, run: Path, head: str, arch: str) -> tuple[float, str]:
    cmd = [binary, "train", str(data), "--arch", arch, "--mode", "instant",
           "--instant-head", head, "--out", str(run), "--force"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    m = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    chosen = json.loads((run / "instant.json").read_text())["head"]
    return m["val_top1"], chosen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="ImageFolder with train/ and val/")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--arch", default="efficientnet_lite0")
    args = ap.parse_args()
    binary = os.environ.get("NANOCLASS_BIN", "target/release/nanoclass")
    print(f"# {args.data} ({args.arch}), held-out top-1 over {args.seeds} seeded draws")
    print("| images per class | auto | prototypes | linear | auto chose linear |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            scores = {h: [] for h in HEADS}
            linear_chosen = 0
            for seed in range(args.seeds):
                data = Path(tmp) / f"n{n}-s{seed}"
                draw(args.data, data, n, seed)
                for h in HEADS:
                    s, chosen = top1(binary, data, Path(tmp) / "run", h, args.arch)
                    scores[h].append(s)
                    if h == "auto" and chosen == "linear":
                        linear_chosen += 1
            cells = [f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}"
                     for v in (scores[h] for h in HEADS)]
            print(f"| {n} | {' | '.join(cells)} | {linear_chosen}/{args.seeds} |", flush=True)


if __name__ == "__main__":
    main()
