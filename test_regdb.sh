#!/usr/bin/env bash
# Ten-trial RegDB test, both directions; trial t uses the checkpoint of trial t ({trial} is replaced).
# Prepare the data first: python prepare_regdb.py --data-dir RAW --output-dir "$DATA_DIR"
# Relative paths are relative to the folder you run the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (test.py, script_helpers.sh)

DATASET=regdb
DATA_DIR=${DATA_DIR:-data/regdb_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-'logs/regdb_s2/{trial}/model_best.pth.tar'}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_regdb}
source "$ROOT/script_helpers.sh"
test_checkpoint
