#!/usr/bin/env bash
# Ten-trial LLCM test of one checkpoint, both directions (visible to infrared, infrared to visible).
# Prepare the data first: python prepare_llcm.py --data-dir RAW --output-dir "$DATA_DIR"
# Relative paths are relative to the folder you run the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (test.py, script_helpers.sh)

DATASET=llcm
DATA_DIR=${DATA_DIR:-data/llcm_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-logs/llcm_s2/model_best.pth.tar}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_llcm}
source "$ROOT/script_helpers.sh"
test_checkpoint
