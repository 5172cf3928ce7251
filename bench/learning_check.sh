#!/usr/bin/env bash
# Does training learn? The demo's recipe (run_demo.sh: synthetic RegDB-layout identities, the stand-in start, stage 1,
# stage 2) once per seed; prints visible-to-thermal Rank-1 / mAP of both stages' last models and whether stage 2 is
# above stage 1 (issue 29's goal: for seed 1 and for at least two of seeds 1, 2, 3). About 5 min a seed on 2 cores.
#   bash bench/learning_check.sh [SEED ...]                   # default: 1 2 3
#   START=resnet50-0676ba61.pth bash bench/learning_check.sh  # ImageNet weights instead of the stand-in start
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rpnr_learning_check}
mkdir -p "$OUT"
for SEED in ${@:-1 2 3}; do
    OUT="$OUT/seed$SEED" SEED=$SEED bash run_demo.sh > "$OUT/seed$SEED.log" 2>&1 || {
        echo "seed $SEED: run_demo.sh failed; see $OUT/seed$SEED.log" >&2
        exit 1
    }
    python - "$OUT/seed$SEED" "$SEED" <<'PY'
import json, sys
folder, seed = sys.argv[1:]
last = [json.load(open(f"{folder}/{stage}/test.json"))["last"]["visible_to_thermal"] for stage in ("s1", "s2")]
above = all(last[1][m] > last[0][m] for m in ("rank1", "mAP"))
print(f"seed {seed}: visible to thermal, last model, Rank-1 / mAP: stage 1 {last[0]['rank1']:.2f} / "
      f"{last[0]['mAP']:.2f}, stage 2 {last[1]['rank1']:.2f} / {last[1]['mAP']:.2f} "
      f"({'stage 2 above' if above else 'stage 2 NOT above'}; chance 5.00)")
PY
done
