#!/usr/bin/env bash
# RegDB: for each trial 1..10, stage 1 (baseline) then stage 2 (RPNR) from that trial's stage-1 model;
# then the ten-trial test in both directions (each trial with its own model). Paper defaults; change the
# variables below or set them in the environment.
# Prepare the data first: python prepare_regdb.py --data-dir RAW --output-dir "$DATA_DIR"
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/regdb_288x144}              # prepared folder
IMAGENET=${IMAGENET:-pretrained/resnet50-19c8e357.pth} # torchvision ResNet-50 ImageNet weights
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
SEED=${SEED:-1}
TRIALS=${TRIALS:-"1 2 3 4 5 6 7 8 9 10"}
S1_DIR=${S1_DIR:-baseline/regdb_s1}                   # stage 1 output: $S1_DIR/<trial>/
S2_DIR=${S2_DIR:-logs/regdb_s2}                       # stage 2 output: $S2_DIR/<trial>/
BATCH=${BATCH:-128}                                   # infrared images per batch (visible: half, two views)
INSTANCES=${INSTANCES:-16}
ITERS=${ITERS:-100}
EPOCHS=${EPOCHS:-50}
EPS=${EPS:-0.3}
MOMENTUM=${MOMENTUM:-0.1}

COMMON=(--dataset regdb --data-dir "$DATA_DIR" --device "$DEVICE" --height "$HEIGHT" --width "$WIDTH"
        --batch-size "$BATCH" --num-instances "$INSTANCES" --iters "$ITERS" --epochs "$EPOCHS" --eps "$EPS"
        --momentum "$MOMENTUM" --seed "$SEED")

for TRIAL in $TRIALS; do
    python train.py "${COMMON[@]}" --trial "$TRIAL" --stage baseline --imagenet "$IMAGENET" \
        --logs-dir "$S1_DIR/$TRIAL"
    python train.py "${COMMON[@]}" --trial "$TRIAL" --stage rpnr \
        --baseline "$S1_DIR/$TRIAL/model_best.pth.tar" --logs-dir "$S2_DIR/$TRIAL"
done
NUM_TRIALS=$(wc -w <<< "$TRIALS")
python test.py --dataset regdb --data-dir "$DATA_DIR" --checkpoint "$S2_DIR/{trial}/model_best.pth.tar" \
    --trials "$NUM_TRIALS" --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" \
    --json "$S2_DIR/test.json" | tee "$S2_DIR/test.log"
