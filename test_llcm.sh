#!/usr/bin/env bash
# Ten-trial LLCM test of one checkpoint, both directions (visible to infrared, infrared to visible).
# Prepare the data first: python prepare_llcm.py --data-dir RAW --output-dir "$DATA_DIR"
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/llcm_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-logs/llcm_s2/model_best.pth.tar}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_llcm}

mkdir -p "$OUT_DIR"
python test.py --dataset llcm --data-dir "$DATA_DIR" --checkpoint "$CHECKPOINT" --trials 10 \
    --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" --json "$OUT_DIR/llcm.json" \
    | tee "$OUT_DIR/llcm.log"
