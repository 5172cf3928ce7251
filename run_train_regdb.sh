#!/usr/bin/env bash
# RegDB: for each trial 1..10, stage 1 (baseline) then stage 2 (RPNR) from that trial's stage-1 model;
# then the mean over the trials of both directions, best-on-test and last-epoch models side by side. Paper defaults; change the
# variables below or set them in the environment.
# Prepare the data first: python prepare_regdb.py --data-dir RAW --output-dir "$DATA_DIR"
# GPUS="0 1 2 3" trains the trials concurrently, one process per GPU (trials go to the GPUs in turn;
# each GPU runs its trials one after the other); logs of each trial in $S1_DIR/<trial>/ and $S2_DIR/<trial>/,
# console output of GPU g in $S2_DIR/gpu<g>.out. NPROC=2 instead trains each trial with torchrun on 2 GPUs.
# BN_SPLITS=2 (default) normalises each half of the batch on its own, as the release's two-GPU
# nn.DataParallel did; 1 = the whole batch. Relative paths are relative to the folder you run the script from.
# The settings in effect are printed first.
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "$0")" >/dev/null && pwd)  # the repository (train.py, script_helpers.sh)

DATA_DIR=${DATA_DIR:-data/regdb_288x144}              # prepared folder
IMAGENET=${IMAGENET:-torchvision}                  # torchvision (its cache), a ResNet-50 file, or none (random)
DEVICE=${DEVICE:-cuda}
HEIGHT=${HEIGHT:-288}
WIDTH=${WIDTH:-144}
SEED=${SEED:-1}
SEEDS=${SEEDS:-}                                      # e.g. "1 2 3": every trial once per seed, in <dir>/seed{N}
STAGES=${STAGES:-"1 2"}                               # 2: stage 2 alone, from the stage-1 models in S1_DIR
TRIALS=${TRIALS:-"1 2 3 4 5 6 7 8 9 10"}
S1_DIR=${S1_DIR:-baseline/regdb_s1}                   # stage 1 output: $S1_DIR/<trial>/
S2_DIR=${S2_DIR:-logs/regdb_s2}                       # stage 2 output: $S2_DIR/<trial>/
BATCH=${BATCH:-128}                                   # infrared images per batch (visible: half, two views)
INSTANCES=${INSTANCES:-16}
ITERS=${ITERS:-100}
EPOCHS=${EPOCHS:-50}
EPS=${EPS:-0.3}
MOMENTUM=${MOMENTUM:-0.1}
GPUS=${GPUS:-}                                        # e.g. "0 1 2 3": trials in parallel, one per GPU
NPROC=${NPROC:-1}                                     # torchrun processes per trial (not with GPUS)
BN_SPLITS=${BN_SPLITS:-$(( NPROC > 1 ? NPROC : 2 ))}   # batch-norm slices (a multiple of NPROC)
EXTRA=${EXTRA:-}                                      # any other train.py flags, e.g. "--k1 20 --no-amp"
S2_EXTRA=${S2_EXTRA:-}                                # flags of stage 2 alone, e.g. an ablation: --no-nrl
RESUME=${RESUME:-0}                                   # 1: continue each stage that has a checkpoint
LOW_MEMORY=${LOW_MEMORY:-0}                           # 1: --low-memory (exact; one batch-norm slice in memory)
DATASET=regdb

source "$ROOT/script_helpers.sh"
show_settings run_train_regdb.sh DATA_DIR IMAGENET DEVICE HEIGHT WIDTH SEED SEEDS STAGES TRIALS S1_DIR S2_DIR BATCH \
    INSTANCES ITERS EPOCHS EPS MOMENTUM GPUS NPROC BN_SPLITS EXTRA S2_EXTRA RESUME LOW_MEMORY
train_commands  # COMMON, INIT, TRAIN (and STAGES checked)

train_trial() {  # stage 1 then stage 2 of one job: SEED/TRIAL (seed{N}/ folders only with SEEDS)
    local trial=${1#*/} sub
    SEED=${1%/*}
    sub=${SEEDS:+/seed$SEED}
    case " $STAGES " in *" 1 "*) train_stage baseline "$S1_DIR$sub/$trial" --trial "$trial" ;; esac
    case " $STAGES " in *" 2 "*) train_stage rpnr "$S2_DIR$sub/$trial" "$S1_DIR$sub/$trial/model_best.pth.tar" \
                                     --trial "$trial" ;; esac
}
JOBS=()
for N in ${SEEDS:-$SEED}; do for TRIAL in $TRIALS; do JOBS+=("$N/$TRIAL"); done; done

if [ -z "$GPUS" ]; then
    for JOB in "${JOBS[@]}"; do train_trial "$JOB"; done
else
    [ "$NPROC" -eq 1 ] || { echo "error: GPUS runs one process per trial; leave NPROC at 1" >&2; exit 1; }
    read -r -a GPU_LIST <<< "$GPUS"
    TRIAL_LIST=("${JOBS[@]}")
    mkdir -p "$S2_DIR"
    PIDS=()
    for I in "${!GPU_LIST[@]}"; do
        GPU=${GPU_LIST[$I]}
        MINE=()
        for J in "${!TRIAL_LIST[@]}"; do
            (( J % ${#GPU_LIST[@]} == I )) && MINE+=("${TRIAL_LIST[$J]}")
        done
        [ "${#MINE[@]}" -gt 0 ] || continue
        if [ -n "$SEEDS" ]; then SHOWN="seed/trial ${MINE[*]}"; else SHOWN="trials ${MINE[*]#*/}"; fi
        echo "GPU $GPU: $SHOWN (output in $S2_DIR/gpu$GPU.out)"
        ( export CUDA_VISIBLE_DEVICES=$GPU; for TRIAL in "${MINE[@]}"; do train_trial "$TRIAL"; done ) \
            > "$S2_DIR/gpu$GPU.out" 2>&1 &
        PIDS+=($!)
    done
    FAILED=0
    for PID in "${PIDS[@]}"; do wait "$PID" || FAILED=1; done
    [ "$FAILED" -eq 0 ] || { echo "error: a trial failed; see $S2_DIR/gpu*.out" >&2; exit 1; }
fi
# each trial's train.py ends with the test of both directions, for its best-on-test and its last-epoch
# model (test.json); report.py shows the mean (and sd) over these trials of both, side by side (summary.txt),
# and writes them as CSV (summary.csv).
RUNS=()
for JOB in "${JOBS[@]}"; do
    SEED=${JOB%/*}
    case " $STAGES " in *" 2 "*) RUNS+=("$S2_DIR${SEEDS:+/seed$SEED}/${JOB#*/}") ;;
                        *) RUNS+=("$S1_DIR${SEEDS:+/seed$SEED}/${JOB#*/}") ;; esac
done
OUT=$( case " $STAGES " in *" 2 "*) echo "$S2_DIR" ;; *) echo "$S1_DIR" ;; esac )
python "$ROOT/report.py" "${RUNS[@]}" --csv "$OUT/summary.csv" | tee "$OUT/summary.txt"
