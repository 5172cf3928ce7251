#!/usr/bin/env bash
# Ten-trial SYSU-MM01 test (all-search and indoor-search) of one checkpoint.
# Prepare the data first: python prepare_sysu.py --data-dir RAW --output-dir "$DATA_DIR"
# Relative paths are relative to the folder you run the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (test.py, script_helpers.sh)

DATASET=sysu
DATA_DIR=${DATA_DIR:-data/sysu_288x144}          # prepared folder
CHECKPOINT=${CHECKPOINT:-logs/sysu_s2/model_best.pth.tar}
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
OUT_DIR=${OUT_DIR:-logs/test_sysu}
MODES=${MODES:-"all indoor"}                     # the settings test.py tests one at a time
source "$ROOT/script_helpers.sh"
test_checkpoint
