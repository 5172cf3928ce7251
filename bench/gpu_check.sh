#!/usr/bin/env bash
# All GPU checks in one go (a lent GPU machine is short-lived): CUDA against CPU, the pseudo-label
# stage at the SYSU sizes, training throughput at the real size, and one short real-size stage-1 +
# stage-2 run on synthetic SYSU data. Logs and JSON go to $OUT (default gpu_out).
#   bash bench/gpu_check.sh                                      # on a CUDA machine
#   DEVICE=cpu SMALL=1 bash bench/gpu_check.sh                   # dry run of the script on the CPU
#   STEPS="check_cuda real_run" ITERS=100 bash bench/gpu_check.sh  # some steps; iterations per epoch
#   STEPS="bench_step_compile" bash bench/gpu_check.sh             # opt-in: bench_step with --compile too
# Python packages missing there can travel as wheels in .whl/ (installed to /tmp/site first).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sklearn, ot, numpy; print('torch', torch.__version__, 'sklearn', sklearn.__version__, \
'POT', ot.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())"

STEPS=${STEPS:-check_cuda bench_step bench_pseudo bench_train real_run torchrun_one bench_epoch bench_epoch_low bench_memory \
check_compile}
step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, show its tail
    local name=$1 limit=$2 start rc
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "=== $name: exit $rc after $(( $(date +%s) - start )) s"
    tr '\r' '\n' < "$OUT/$name.log" | grep -av 'it/s\]\|s/it\]\|img/s\]\|args {\|^ *$' | tail -n "${TAIL:-30}"
}

if [ "$SMALL" = 1 ]; then
    N=(1500 3000); HW=(64 32); TRAIN=(--batch 16 --iters 2 --warmup 1); IDS=(--train-ids 12 --val-ids 4 --test-ids 6)
    BATCH=(--batch-size 8 --num-instances 4); RAW=(--height 64 --width 32)  # 2 clusters fill a batch
else
    N=(11909 22258); HW=(288 144); TRAIN=(--iters 10 --warmup 3); IDS=(--train-ids 80 --val-ids 20 --test-ids 10)
    BATCH=(--batch-size 128 --num-instances 16); RAW=(--height 288 --width 144)
fi

step check_cuda 90 python3 bench/check_cuda.py --device "$DEVICE" --height "${HW[0]}" --width "${HW[1]}"
# one iteration part by part (issue 24): CUDA events per part, references, the profiler's top ops
if [ "$SMALL" = 1 ]; then STEP=(--height 64 --width 32 --ir 16 --rgb 8 --warmup 0 --iters 1); else STEP=(); fi
TAIL=70 step bench_step 240 python3 bench/bench_step.py --device "$DEVICE" "${STEP[@]}" --profile \
    --json "$OUT/bench_step.json"
TAIL=40 step bench_step_compile 480 python3 bench/bench_step.py --device "$DEVICE" "${STEP[@]}" --compile \
    --warmup 3 --json "$OUT/bench_step_compile.json"
step bench_pseudo 120 python3 bench/bench_pseudo_labels.py --device "$DEVICE" --n "${N[@]}" --ref-n 0 --repeats 3 \
    --no-memory --json "$OUT/bench_pseudo.json"
step bench_train 150 python3 bench/bench_train.py --device "$DEVICE" --height "${HW[0]}" --width "${HW[1]}" "${TRAIN[@]}"

# one short real-size run: synthetic SYSU tree, prepare, stage 1 from random weights, stage 2
real_run() {
    local data=/tmp/rpnr_gpu_check eps
    rm -rf "$data"
    python3 -m rpnr.data.synthetic --dataset sysu --out "$data/raw" "${RAW[@]}" "${IDS[@]}" || return 1
    python3 prepare_sysu.py --data-dir "$data/raw" --output-dir "$data/prepared" --height "${HW[0]}" --width "${HW[1]}" \
        || return 1
    local common=(--dataset sysu --data-dir "$data/prepared" --device "$DEVICE" --height "${HW[0]}" --width "${HW[1]}"
                  "${BATCH[@]}" --iters "${ITERS:-30}" --epochs 1 --seed 1 --test-trials 1 --workers 4)
    # random start: the paper's 0.6 may leave too few clusters to fill a batch; try a few
    for eps in 0.5 0.4 0.6 0.3; do
        python3 train.py "${common[@]}" --stage baseline --no-imagenet --eps "$eps" --logs-dir "$data/s1" \
            --overwrite && break
    done || return 1
    for eps in 0.5 0.4 0.6 0.3; do
        python3 train.py "${common[@]}" --stage rpnr --eps "$eps" --baseline "$data/s1/model_best.pth.tar" \
            --logs-dir "$data/s2" --overwrite && break
    done || return 1
    cp "$data/s1/metrics.json" "$OUT/s1_metrics.json"
    cp "$data/s2/metrics.json" "$OUT/s2_metrics.json"
}
TAIL=45 step real_run 200 bash -c "$(declare -f real_run); $(declare -p DEVICE OUT RAW IDS HW BATCH); ITERS=${ITERS:-30}; real_run"
# the torchrun code path (NCCL, DDP, gathers) with one process on one GPU: stage 1 of the real run again
torchrun_one() {
    local data=/tmp/rpnr_gpu_check
    [ -d "$data/prepared" ] || { echo "run real_run first"; return 1; }
    local eps
    for eps in 0.5 0.4 0.6 0.3; do  # random start, as in real_run
        python3 -m torch.distributed.run --standalone --nproc_per_node 1 train.py --dataset sysu --data-dir \
            "$data/prepared" --device "$DEVICE" --height "${HW[0]}" --width "${HW[1]}" "${BATCH[@]}" --iters 20 \
            --epochs 1 --seed 1 --test-trials 1 --stage baseline --no-imagenet --eps "$eps" \
            --logs-dir "$data/s1_torchrun" --overwrite && return 0
    done
    return 1
}
step torchrun_one 150 bash -c "$(declare -f torchrun_one); $(declare -p DEVICE HW BATCH); torchrun_one"
# one full-size synthetic SYSU stage-2 epoch, seconds per phase (writes ~5 GB under /tmp)
if [ "$SMALL" = 1 ]; then EPOCH=(--small); else EPOCH=(); fi
TAIL=20 step bench_epoch 420 python3 bench/bench_epoch.py --device "$DEVICE" "${EPOCH[@]}" --json "$OUT/bench_epoch.json"
TAIL=20 step bench_epoch_low 420 python3 bench/bench_epoch.py --device "$DEVICE" "${EPOCH[@]}" --low-memory \
    --json "$OUT/bench_epoch_low.json"
# peak memory and time of one iteration per flag set (the release's SYSU stage-2 batch on a GPU)
if [ "$SMALL" = 1 ]; then MEM=(--height 64 --width 32 --ir 16 --rgb 8); else MEM=(--height 288 --width 144 --ir 128 --rgb 128); fi
TAIL=20 step bench_memory 420 python3 bench/bench_memory.py --device "$DEVICE" "${MEM[@]}" --json "$OUT/bench_memory.json"
# a torch.compile'd stage-2 step against the eager one (compilation takes minutes; --compile stays off until this
# passes and bench_step_compile shows it faster)
step check_compile 420 python3 bench/check_cuda.py --device "$DEVICE" --only-compile --height "${HW[0]}" \
    --width "${HW[1]}"
for f in "$OUT"/s1_metrics.json "$OUT"/s2_metrics.json; do
    [ -f "$f" ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1]))[-1]; \
print(sys.argv[1].split('/')[-1], {k: r[k] for k in r if k.startswith(('sec', 'time', 'rank1', 'clusters'))})" "$f"
done
