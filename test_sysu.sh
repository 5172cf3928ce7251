#!/usr/bin/env bash
# Ten-trial SYSU-MM01 test (all-search and indoor-search) of one checkpoint.
# Prepare the data first: python prepare_sysu.py --data-dir RAW --output-dir "$DATA_DIR"
# Relative paths are relative to the folder you run the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (test.py)

DATA_DIR=${DATA_DIR:-data/sysu_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-logs/sysu_s2/model_best.pth.tar}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_sysu}

source "$ROOT/script_settings.sh"
show_settings test_sysu.sh DATA_DIR CHECKPOINT DEVICE HEIGHT WIDTH OUT_DIR

mkdir -p "$OUT_DIR"
for MODE in all indoor; do
    python "$ROOT/test.py" --dataset sysu --data-dir "$DATA_DIR" --checkpoint "$CHECKPOINT" --mode "$MODE" \
        --trials 10 --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" --json "$OUT_DIR/$MODE.json" \
        | tee "$OUT_DIR/$MODE.log"
done
