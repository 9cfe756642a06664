#!/usr/bin/env python3
"""Time of the studio's instant-model update per capture, through the real server.

Starts `nanoclass studio` on a free port with an empty data folder, creates a two-category task
and uploads real photos one at a time (alternating categories, as a user capturing would). After
each upload it reads `GET /api/tasks/{task}/instant`, whose `update` gives the time embedding the
new image (`embed_ms`) and the rest of the update (`update_ms`: listing the folders, refitting the
instant model, bookkeeping; `fit_ms` of it the refit). Prints them by image count.

    python3 scripts/instant_update_bench.py ../shared/data/hymenoptera --images 200

NANOCLASS_BIN selects the binary (default target/release/nanoclass).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def call(method, url, body=None, ctype="application/json"):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read() or b"null")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="ImageFolder with train/<class>/ (two classes used)")
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    binary = os.environ.get("NANOCLASS_BIN", "target/release/nanoclass")
    classes = sorted(d for d in (args.data / "train").iterdir() if d.is_dir())[:2]
    files = [sorted(p for p in c.iterdir() if p.is_file()) for c in classes]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NANOCLASS_FEATURE_CACHE=str(Path(tmp) / "cache"))
        server = subprocess.Popen(
            [binary, "studio", "--data", str(Path(tmp) / "studio"), "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/api"
        try:
            for _ in range(100):
                try:
                    call("GET", f"{base}/info")
                    break
                except OSError:
                    time.sleep(0.1)
            call("POST", f"{base}/tasks", json.dumps({"name": "bench"}).encode())
            for c in classes:
                call("POST", f"{base}/tasks/bench/categories", json.dumps({"name": c.name}).encode())
            rows = []
            for i in range(args.images):
                c = i % 2
                photo = files[c][(i // 2) % len(files[c])]
                call("POST", f"{base}/tasks/bench/categories/{classes[c].name}/images",
                     photo.read_bytes(), "image/jpeg")
                st = call("GET", f"{base}/tasks/bench/instant")
                u = st["update"]
                rows.append((st["images"], st["head"], u["embed_ms"], u["update_ms"], u["fit_ms"]))
        finally:
            server.terminate()
            server.wait()
    print("| images | head | embed ms | update ms (beyond embedding) | of it refit ms |")
    print("|---|---|---|---|---|")
    for n, head, e, u, f in rows:
        if n in (2, 4, 6, 10, 20, 50, 100, 150, 200, 500, 1000, 1500, 2000) or n == rows[-1][0]:
            print(f"| {n} | {head} | {e:.1f} | {u:.1f} | {f:.1f} |")
    ready = [r for r in rows if r[1] is not None]
    print(f"update ms beyond embedding over {len(ready)} updates: "
          f"median {statistics.median(r[3] for r in ready):.1f}, max {max(r[3] for r in ready):.1f}; "
          f"embedding median {statistics.median(r[2] for r in ready):.1f} ms")
    last = ready[-100:]
    print(f"last {len(last)} updates ({last[0][0]}-{last[-1][0]} images): update ms beyond "
          f"embedding median {statistics.median(r[3] for r in last):.1f}, "
          f"max {max(r[3] for r in last):.1f}")


if __name__ == "__main__":
    main()
