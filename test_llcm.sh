#!/usr/bin/env bash
# Ten-trial LLCM test of one checkpoint, both directions (visible to infrared, infrared to visible).
# Prepare the data first: python prepare_llcm.py --data-dir RAW --output-dir "$DATA_DIR"
# Relative paths are relative to the folder you run the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (test.py)

DATA_DIR=${DATA_DIR:-data/llcm_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-logs/llcm_s2/model_best.pth.tar}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_llcm}

source "$ROOT/script_settings.sh"
show_settings test_llcm.sh DATA_DIR CHECKPOINT DEVICE HEIGHT WIDTH OUT_DIR

mkdir -p "$OUT_DIR"
python "$ROOT/test.py" --dataset llcm --data-dir "$DATA_DIR" --checkpoint "$CHECKPOINT" --trials 10 \
    --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" --json "$OUT_DIR/llcm.json" \
    | tee "$OUT_DIR/llcm.log"
