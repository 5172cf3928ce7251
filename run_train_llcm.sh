#!/usr/bin/env bash
# LLCM: stage 1 (baseline), stage 2 (RPNR) from stage 1's best model, then the ten-trial test of both
# directions (visible to infrared, infrared to visible) of stage 2's best-on-test and last-epoch models.
# The release has no LLCM recipe: SYSU-MM01's settings (DESIGN.md section 9). Change the variables below
# or set them in the environment; NPROC, BN_SPLITS, DEVICE, SEED, ... as in run_train_sysu.sh, which runs it.
# Prepare the data first: python prepare_llcm.py --data-dir RAW --output-dir "$DATA_DIR"
# Relative paths are relative to the folder you run the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository

export DATASET=llcm
export DATA_DIR=${DATA_DIR:-data/llcm_288x144}               # prepared folder
export IMAGENET=${IMAGENET:-torchvision}                  # torchvision (its cache), a ResNet-50 file, or none
export S1_DIR=${S1_DIR:-baseline/llcm_s1}                    # stage 1 output (stage 2 starts from its model_best)
export S2_DIR=${S2_DIR:-logs/llcm_s2}
export HEIGHT=${HEIGHT:-288}
export WIDTH=${WIDTH:-144}
export BATCH=${BATCH:-128}                                   # infrared images per batch
export INSTANCES=${INSTANCES:-16}
export ITERS=${ITERS:-200}
export EPOCHS=${EPOCHS:-50}
export EPS=${EPS:-0.6}
export MOMENTUM=${MOMENTUM:-0.1}

export RPNR_SCRIPT=run_train_llcm.sh  # the name run_train_sysu.sh's warnings give

exec bash "$ROOT/run_train_sysu.sh"
