# Sourced by run_train_sysu.sh and run_train_regdb.sh after their settings: the train.py command and the
# flags every stage shares. Reads DATASET DATA_DIR DEVICE HEIGHT WIDTH BATCH INSTANCES ITERS EPOCHS EPS
# MOMENTUM SEED BN_SPLITS EXTRA IMAGENET NPROC RESUME LOW_MEMORY; sets COMMON (shared flags), INIT (stage-1 start) and TRAIN,
# and defines continue_flag DIR (--resume for a stage whose folder holds a checkpoint, when RESUME=1).
COMMON=(--dataset "$DATASET" --data-dir "$DATA_DIR" --device "$DEVICE" --height "$HEIGHT" --width "$WIDTH"
        --batch-size "$BATCH" --num-instances "$INSTANCES" --iters "$ITERS" --epochs "$EPOCHS" --eps "$EPS"
        --momentum "$MOMENTUM" --seed "$SEED" --bn-splits "$BN_SPLITS")
read -r -a EXTRA_ARGS <<< "$EXTRA"
[ "${LOW_MEMORY:-0}" != 1 ] || COMMON+=(--low-memory)
COMMON+=("${EXTRA_ARGS[@]}")
INIT=(--imagenet "$IMAGENET")
[ "$IMAGENET" != none ] || INIT=(--no-imagenet)
if [ "$NPROC" -gt 1 ]; then
    TRAIN=(torchrun --standalone --nproc_per_node "$NPROC" train.py)
else
    TRAIN=(python train.py)
fi
continue_flag() {
    if [ "${RESUME:-0}" = 1 ] && [ -f "$1/checkpoint.pth.tar" ]; then echo --resume; fi
}
