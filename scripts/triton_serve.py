#!/usr/bin/env python3
"""Serves Triton model folders written by `nanoclass export --format triton` with a real Triton
Inference Server: the one PyPI `nvidia-pytriton` bundles (tritonserver 2.51, CPU), whose only
backend is `python`, so each model's `1/model.onnx` runs in onnxruntime inside a bound Python
function. Names, batch size and tensor shapes come from each folder's `config.pbtxt`, parsed with
Triton's own schema (`tritonclient.grpc.model_config_pb2`). The HTTP/REST (KServe v2) API is
Triton's: `nanoclass verify REPO/NAME --runtime triton-url http://127.0.0.1:PORT` talks to it as
to any Triton server.

Prints exactly `ready` on stdout once `/v2/health/ready` answers 200 (the server's own log goes
to stderr); SIGTERM or SIGINT stops the server cleanly.

Usage:
    VENV/bin/python scripts/triton_serve.py --http-port PORT REPO/NAME [REPO/NAME2 ...]
The venv (Debian's /usr/bin/python3, whose libpython the python backend loads):
    /usr/bin/python3 -m venv VENV
    VENV/bin/pip install nvidia-pytriton==0.7.0 onnxruntime==1.31.1 "numpy<2"
"""

import argparse
import os
import signal
import sys
import threading
import time
import urllib.request

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tritonclient.grpc import model_config_pb2 as mc


def load(folder: str):
    config = text_format.Parse(
        open(os.path.join(folder, "config.pbtxt")).read(), mc.ModelConfig()
    )
    if config.platform != "onnxruntime_onnx":
        sys.exit(f"{folder}: platform {config.platform!r}, expected onnxruntime_onnx")
    session = ort.InferenceSession(
        os.path.join(folder, "1", "model.onnx"), providers=["CPUExecutionProvider"]
    )
    i, o = config.input[0], config.output[0]

    @batch
    def infer(**inputs):
        x = np.ascontiguousarray(inputs[i.name], dtype=np.float32)
        return {o.name: session.run([o.name], {i.name: x})[0].astype(np.float32)}

    return config, infer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+", help="model folders REPO/NAME")
    p.add_argument("--http-port", type=int, required=True)
    a = p.parse_args()
    stdout, sys.stdout = sys.stdout, sys.stderr  # PyTriton prints the server's log
    triton = Triton(
        config=TritonConfig(
            http_address="127.0.0.1",
            http_port=a.http_port,
            allow_grpc=False,
            allow_metrics=False,
            exit_timeout_secs=5,
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for folder in a.models:
            config, infer = load(folder)
            i, o = config.input[0], config.output[0]
            triton.bind(
                model_name=config.name,
                infer_func=infer,
                inputs=[Tensor(name=i.name, dtype=np.float32, shape=tuple(i.dims))],
                outputs=[Tensor(name=o.name, dtype=np.float32, shape=tuple(o.dims))],
                config=ModelConfig(batching=True, max_batch_size=config.max_batch_size),
                strict=True,
            )
        triton.run()
        url = f"http://127.0.0.1:{a.http_port}/v2/health/ready"
        while not stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        print("ready", file=stdout, flush=True)
        while not stop.is_set():
            if not triton.is_alive():
                print("tritonserver exited", file=sys.stderr, flush=True)
                return 1
            stop.wait(0.5)
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
