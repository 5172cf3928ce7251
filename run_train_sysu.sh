#!/usr/bin/env bash
# SYSU-MM01: stage 1 (baseline), stage 2 (RPNR) from stage 1's best model, then the ten-trial test
# (all-search and indoor-search) of stage 2's best-on-test and last-epoch models. Paper defaults; change the variables below or set them in the environment.
# Prepare the data first: python prepare_sysu.py --data-dir RAW --output-dir "$DATA_DIR"
# NPROC=4 trains with torchrun on 4 GPUs of this machine (one process each; same model as one process
# with --bn-splits 4). BN_SPLITS=2 (default) normalises each half of the batch on its own, as the
# release's two-GPU nn.DataParallel did; 1 = the whole batch. Relative paths are relative to the folder you run
# the script from. The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (train.py, script_helpers.sh)

DATASET=${DATASET:-sysu}                              # run_train_llcm.sh runs this script with llcm
DATA_DIR=${DATA_DIR:-data/sysu_288x144}               # prepared folder
IMAGENET=${IMAGENET:-torchvision}                  # torchvision (its cache), a ResNet-50 file, or none (random)
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
SEED=${SEED:-1}
SEEDS=${SEEDS:-}                                      # e.g. "1 2 3": the recipe once per seed, in <dir>/seed{N}
STAGES=${STAGES:-"1 2"}                               # 2: stage 2 alone, from the stage-1 models in S1_DIR
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
S2_EXTRA=${S2_EXTRA:-}                                # flags of stage 2 alone, e.g. an ablation: --no-nrl
RESUME=${RESUME:-0}                                   # 1: continue each stage that has a checkpoint
LOW_MEMORY=${LOW_MEMORY:-0}                           # 1: --low-memory (exact; one batch-norm slice in memory)

source "$ROOT/script_helpers.sh"
show_settings "${RPNR_SCRIPT:-run_train_sysu.sh}" DATASET DATA_DIR IMAGENET DEVICE HEIGHT WIDTH SEED SEEDS STAGES \
    S1_DIR S2_DIR BATCH INSTANCES ITERS EPOCHS EPS MOMENTUM NPROC BN_SPLITS EXTRA S2_EXTRA RESUME LOW_MEMORY
train_commands  # COMMON, INIT, TRAIN (and STAGES checked)

RUNS=()
for SEED in ${SEEDS:-$SEED}; do  # stage 2 of seed N starts from stage 1 of seed N
    SUB=${SEEDS:+/seed$SEED}
    case " $STAGES " in *" 1 "*) train_stage baseline "$S1_DIR$SUB" ;; esac
    case " $STAGES " in *" 2 "*) train_stage rpnr "$S2_DIR$SUB" "$S1_DIR$SUB/model_best.pth.tar" ;; esac
    RUNS+=("$S2_DIR$SUB")
done
OUT=$S2_DIR
case " $STAGES " in *" 2 "*) ;; *) RUNS=("$S1_DIR"); OUT=$S1_DIR ;; esac
# train.py ends with the ten-trial test (SYSU: all and indoor; LLCM: both directions) of the best-on-test
# model and of the last epoch's model (test.json); report.py shows both side by side, mean ± sd over the seeds
# (summary.txt), and writes them as CSV (summary.csv).
python "$ROOT/report.py" "${RUNS[@]}" --csv "$OUT/summary.csv" | tee "$OUT/summary.txt"
