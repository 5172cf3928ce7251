#!/usr/bin/env bash
# Ten-trial SYSU-MM01 test (all-search and indoor-search) of one checkpoint.
# Prepare the data first: python prepare_sysu.py --data-dir RAW --output-dir "$DATA_DIR"
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/sysu_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-logs/sysu_s2/model_best.pth.tar}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_sysu}

mkdir -p "$OUT_DIR"
for MODE in all indoor; do
    python test.py --dataset sysu --data-dir "$DATA_DIR" --checkpoint "$CHECKPOINT" --mode "$MODE" \
        --trials 10 --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" --json "$OUT_DIR/$MODE.json" \
        | tee "$OUT_DIR/$MODE.log"
done
