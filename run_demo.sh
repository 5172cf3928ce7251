#!/usr/bin/env bash
# RPNR learning, offline on the CPU in 5 to 6 minutes on 2 cores, on synthetic stand-ins (no claim about real data):
# 1. a synthetic RegDB-layout tree of colour-grid identities (thermal: each grid's luminance raised to a gamma of its
#    own), prepared at HEIGHTxWIDTH; 2. a stand-in start in place of ImageNet weights (a ResNet-50 taught to tell
#    other synthetic identities apart: python -m rpnr.tools.stand_in); 3. stage 1 from it; 4. stage 2 from stage 1's
#    best model; 5. the report of both stages' final tests and their last models' rank lists. Outputs go to $OUT.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # python -m rpnr... imports this checkout from any folder

OUT=${OUT:-demo}
DEVICE=${DEVICE:-cpu}
SEED=${SEED:-1}
START=${START:-}                 # empty: train the stand-in start; or a weights file for --imagenet (ImageNet's)
START_STEPS=${START_STEPS:-150}  # the stand-in start's training steps
HEIGHT=${HEIGHT:-32}
WIDTH=${WIDTH:-16}
S1_EPOCHS=${S1_EPOCHS:-4}       # stage 1 gives stage 2 its start (on these identities it peaks early)
S2_EPOCHS=${S2_EPOCHS:-10}
ITERS=${ITERS:-10}
BATCH=${BATCH:-16}              # infrared images per batch (visible: half in stage 1, all in stage 2, in two views)
INSTANCES=${INSTANCES:-4}
EPS=${EPS:-0.3}

source "$ROOT/script_helpers.sh"
show_settings run_demo.sh OUT DEVICE SEED START START_STEPS HEIGHT WIDTH S1_EPOCHS S2_EPOCHS ITERS BATCH INSTANCES EPS

if [ -n "$START" ] && [ ! -f "$START" ]; then
    echo "error: START=$START is not a file: give ImageNet ResNet-50 weights, or leave START empty for the stand-in" >&2
    exit 1
fi
# the demo replaces only a folder it made itself (marked by $OUT/.rpnr-demo); anything else is left alone
if [ -e "$OUT" ] && [ ! -e "$OUT/.rpnr-demo" ] && [ -n "$(ls -A "$OUT" 2>/dev/null || echo file)" ]; then
    echo "error: $OUT exists and was not made by run_demo.sh; it is left alone: pass OUT=another/folder" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT" && touch "$OUT/.rpnr-demo"
python -m rpnr.data.synthetic --dataset regdb --out "$OUT/raw_regdb" --seed "$SEED"
python "$ROOT/prepare_regdb.py" --data-dir "$OUT/raw_regdb" --output-dir "$OUT/regdb_${HEIGHT}x${WIDTH}" \
    --height "$HEIGHT" --width "$WIDTH" 2>&1 | grep -v "a subset is fine"
if [ -z "$START" ]; then
    START=$OUT/stand_in_start.pth
    python -m rpnr.tools.stand_in --out "$START" --steps "$START_STEPS" --height "$HEIGHT" --width "$WIDTH" \
        --seed "$SEED"
fi

COMMON=(--dataset regdb --trial 1 --data-dir "$OUT/regdb_${HEIGHT}x${WIDTH}" --device "$DEVICE" --height "$HEIGHT"
        --width "$WIDTH" --batch-size "$BATCH" --num-instances "$INSTANCES" --iters "$ITERS" --eps "$EPS" --k1 10
        --k2 3 --seed "$SEED" --test-trials 1 --workers 2)
ranks() {  # stage $1's last model: a visible query per test identity and its ten nearest thermal images (training
           # draws its best model's); the full test it also runs is not shown
    python "$ROOT/test.py" --dataset regdb --data-dir "$OUT/regdb_${HEIGHT}x${WIDTH}" --height "$HEIGHT" \
        --width "$WIDTH" --device "$DEVICE" --trials 1 --checkpoint "$OUT/s$1/checkpoint.pth.tar" \
        --ranks-png "$OUT/ranks_stage$1_last.png" --ranks-queries 20 > /dev/null
}
python "$ROOT/train.py" "${COMMON[@]}" --stage baseline --epochs "$S1_EPOCHS" --imagenet "$START" \
    --logs-dir "$OUT/s1" | grep -E "^epoch .*(clusters|Rank-1)|^best model"
python "$ROOT/train.py" "${COMMON[@]}" --stage rpnr --epochs "$S2_EPOCHS" --baseline "$OUT/s1/model_best.pth.tar" \
    --logs-dir "$OUT/s2" | grep -E "^epoch .*(clusters|NPC|Rank-1)|^best model"
ranks 1  # one at a time: two PyTorch processes on two cores slow each other down far more than twice
ranks 2
# the final test of each stage's best and last model side by side (report.py's table, Rank-1 and mAP rows)
python "$ROOT/report.py" "$OUT/s1" "$OUT/s2" | grep -E '^RegDB|test setting|Rank-1 |mAP '
echo "chance: Rank-1 5.00% (20 test identities); the last models' rank lists: $OUT/ranks_stage1_last.png," \
     "$OUT/ranks_stage2_last.png (green: the query's identity)"
