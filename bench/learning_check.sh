#!/usr/bin/env bash
# Does training learn? Stage 1 then stage 2 on synthetic RegDB at the small settings of issue 4's
# acceptance (64x32, batch 16, 4 instances, 10 iterations, 10 epochs per stage, eps 0.3), from a
# pretrained trunk, for a few seeds; prints visible-to-thermal Rank-1 of both stages' best models.
#   bash bench/learning_check.sh /path/to/resnet50.pth [seeds...]     # CPU, ~5 min per seed
# Without ImageNet weights, bench/proxy_trunk.py makes a stand-in trunk.
set -euo pipefail
cd "$(dirname "$0")/.."
TRUNK=${1:?usage: bash bench/learning_check.sh TRUNK.pth [SEED ...]}
shift
SEEDS=("${@:-1 2 3}")
OUT=${OUT:-/tmp/rpnr_learning_check}
DEVICE=${DEVICE:-cpu}
for SEED in ${SEEDS[@]}; do
    D="$OUT/seed$SEED"
    rm -rf "$D"
    python -m rpnr.data.synthetic --dataset regdb --out "$D/raw" --seed "$SEED" > /dev/null
    python prepare_regdb.py --data-dir "$D/raw" --output-dir "$D/data" --height 64 --width 32 > /dev/null
    C=(--dataset regdb --trial 1 --data-dir "$D/data" --device "$DEVICE" --height 64 --width 32 --batch-size 16
       --num-instances 4 --iters 10 --epochs 10 --eps 0.3 --seed "$SEED" --test-trials 1)
    python train.py "${C[@]}" --stage baseline --imagenet "$TRUNK" --logs-dir "$D/s1" > "$D/s1.log" 2>&1
    python train.py "${C[@]}" --stage rpnr --baseline "$D/s1/model_best.pth.tar" --logs-dir "$D/s2" > "$D/s2.log" 2>&1
    python - "$D" "$SEED" <<'PY'
import json, sys
d, seed = sys.argv[1], sys.argv[2]
s1, s2 = (json.load(open(f"{d}/{s}/test.json"))["visible_to_thermal"]["rank1"] for s in ("s1", "s2"))
e1 = json.load(open(f"{d}/s1/metrics.json"))[0]["rank1"]
print(f"seed {seed}: visible-to-thermal Rank-1 after epoch 1 {e1:.2f}, stage 1 best {s1:.2f}, stage 2 best {s2:.2f}")
PY
done
