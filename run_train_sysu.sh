#!/usr/bin/env bash
# SYSU-MM01: stage 1 (baseline), stage 2 (RPNR) from stage 1's best model, then the ten-trial test
# (all-search and indoor-search) of stage 2's best-on-test and last-epoch models. Paper defaults; change the variables below or set them in the environment.
# Prepare the data first: python prepare_sysu.py --data-dir RAW --output-dir "$DATA_DIR"
# NPROC=4 trains with torchrun on 4 GPUs of this machine (one process each; same model as one process
# with --bn-splits 4). BN_SPLITS=2 (default) normalises each half of the batch on its own, as the
# release's two-GPU nn.DataParallel did; 1 = the whole batch.
set -euo pipefail
cd "$(dirname "$0")"

DATASET=${DATASET:-sysu}                              # run_train_llcm.sh runs this script with llcm
DATA_DIR=${DATA_DIR:-data/sysu_288x144}               # prepared folder
IMAGENET=${IMAGENET:-torchvision}                  # torchvision (its cache), a ResNet-50 file, or none (random)
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
SEED=${SEED:-1}
S1_DIR=${S1_DIR:-baseline/sysu_s1}                    # stage 1 output (stage 2 starts from its model_best)
S2_DIR=${S2_DIR:-logs/sysu_s2}
BATCH=${BATCH:-128}                                   # infrared images per batch
INSTANCES=${INSTANCES:-16}
ITERS=${ITERS:-200}
EPOCHS=${EPOCHS:-50}
EPS=${EPS:-0.6}
MOMENTUM=${MOMENTUM:-0.1}
NPROC=${NPROC:-1}                                     # processes (GPUs) of this machine
BN_SPLITS=${BN_SPLITS:-$(( NPROC > 1 ? NPROC : 2 ))}   # batch-norm slices (a multiple of NPROC)
EXTRA=${EXTRA:-}                                      # any other train.py flags, e.g. "--k1 20 --no-amp"
RESUME=${RESUME:-0}                                   # 1: continue each stage that has a checkpoint
LOW_MEMORY=${LOW_MEMORY:-0}                           # 1: --low-memory (exact; one batch-norm slice in memory)

source ./train_command.sh  # COMMON, INIT and TRAIN

"${TRAIN[@]}" "${COMMON[@]}" --stage baseline "${INIT[@]}" --logs-dir "$S1_DIR" $(continue_flag "$S1_DIR")
"${TRAIN[@]}" "${COMMON[@]}" --stage rpnr --baseline "$S1_DIR/model_best.pth.tar" --logs-dir "$S2_DIR" \
    $(continue_flag "$S2_DIR")
# train.py ends with the ten-trial test (SYSU: all and indoor; LLCM: both directions) of the best-on-test
# model and of the last epoch's model (test.json); the summary shows both side by side.
python -m rpnr.results "$S2_DIR/test.json" --json "$S2_DIR/summary.json" | tee "$S2_DIR/summary.txt"
