#!/usr/bin/env bash
# The whole pipeline on built-in synthetic RegDB-layout data, on the CPU in a few minutes:
# generate a raw tree, prepare it at 64x32, stage 1 (random start: no ImageNet weights needed),
# stage 2 from stage 1's best model, then the test of both directions. Outputs go to $OUT (relative to the
# folder you run the script from). The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # python -m rpnr... imports this checkout from any folder

OUT=${OUT:-demo}
DEVICE=${DEVICE:-cpu}
HEIGHT=${HEIGHT:-64}
WIDTH=${WIDTH:-32}
EPOCHS=${EPOCHS:-5}           # per stage
ITERS=${ITERS:-10}
BATCH=${BATCH:-8}             # infrared images per batch (visible: half, in two views)
INSTANCES=${INSTANCES:-4}
EPS=${EPS:-0.4}               # from a random start, 0.3 leaves too few infrared clusters by epoch 4
SEED=${SEED:-1}

source "$ROOT/script_helpers.sh"
show_settings run_demo.sh OUT DEVICE HEIGHT WIDTH EPOCHS ITERS BATCH INSTANCES EPS SEED

# the demo replaces only a folder it made itself (marked by $OUT/.rpnr-demo); anything else is left alone
if [ -e "$OUT" ] && [ ! -e "$OUT/.rpnr-demo" ] && [ -n "$(ls -A "$OUT" 2>/dev/null || echo file)" ]; then
    echo "error: $OUT exists and was not made by run_demo.sh; it is left alone: pass OUT=another/folder" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT" && touch "$OUT/.rpnr-demo"
python -m rpnr.data.synthetic --dataset regdb --out "$OUT/raw_regdb" --seed "$SEED"
python "$ROOT/prepare_regdb.py" --data-dir "$OUT/raw_regdb" --output-dir "$OUT/regdb_${HEIGHT}x${WIDTH}" \
    --height "$HEIGHT" --width "$WIDTH"

COMMON=(--dataset regdb --trial 1 --data-dir "$OUT/regdb_${HEIGHT}x${WIDTH}" --device "$DEVICE"
        --height "$HEIGHT" --width "$WIDTH" --batch-size "$BATCH" --num-instances "$INSTANCES"
        --iters "$ITERS" --epochs "$EPOCHS" --eps "$EPS" --seed "$SEED" --workers 2)
python "$ROOT/train.py" "${COMMON[@]}" --stage baseline --no-imagenet --logs-dir "$OUT/s1"
python "$ROOT/train.py" "${COMMON[@]}" --stage rpnr --baseline "$OUT/s1/model_best.pth.tar" --logs-dir "$OUT/s2"
python "$ROOT/test.py" --dataset regdb --data-dir "$OUT/regdb_${HEIGHT}x${WIDTH}" \
    --checkpoint "$OUT/s2/model_best.pth.tar" --trials 1 --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" \
    --ranks-png "$OUT/ranks.png"

echo "stage 1 best: $(grep '^best model' "$OUT/s1/log.txt")"
echo "stage 2 best: $(grep '^best model' "$OUT/s2/log.txt")"
# the final test of each stage's best and last model side by side (report.py's table, Rank-1 and mAP rows)
python "$ROOT/report.py" "$OUT/s1" "$OUT/s2" | grep -E '^RegDB|test setting|Rank-1 |mAP '
echo "rank list of stage 2's best model: $OUT/ranks.png"
