# Sourced by run_train_sysu.sh and run_train_regdb.sh after their settings (ROOT = the repository folder): the
# train.py command and the flags every stage shares. Reads DATASET DATA_DIR DEVICE HEIGHT WIDTH BATCH INSTANCES
# ITERS EPOCHS EPS MOMENTUM SEED BN_SPLITS EXTRA S2_EXTRA IMAGENET NPROC RESUME LOW_MEMORY; sets COMMON (shared flags),
# INIT (stage-1 start) and TRAIN, and defines train_stage.
read -r -a STAGE_LIST <<< "$STAGES"
case "${STAGE_LIST[*]}" in
    "1 2" | 1 | 2) STAGES="${STAGE_LIST[*]}" ;;
    *) echo "error: STAGES=\"$STAGES\" is not one of \"1 2\" (both stages, the default), 1 (stage 1 alone) and 2" \
            "(stage 2 alone, from the stage-1 models in S1_DIR)" >&2
       exit 1 ;;
esac
COMMON=(--dataset "$DATASET" --data-dir "$DATA_DIR" --device "$DEVICE" --height "$HEIGHT" --width "$WIDTH"
        --batch-size "$BATCH" --num-instances "$INSTANCES" --iters "$ITERS" --epochs "$EPOCHS" --eps "$EPS"
        --momentum "$MOMENTUM" --bn-splits "$BN_SPLITS")
read -r -a EXTRA_ARGS <<< "$EXTRA"
[ "${LOW_MEMORY:-0}" != 1 ] || COMMON+=(--low-memory)
COMMON+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
INIT=(--imagenet "$IMAGENET")
[ "$IMAGENET" != none ] || INIT=(--no-imagenet)
if [ "$NPROC" -gt 1 ]; then
    TRAIN=(torchrun --standalone --nproc_per_node "$NPROC" "$ROOT/train.py")
else
    TRAIN=(python "$ROOT/train.py")
fi

# train_stage baseline LOGS_DIR [FLAGS...]: stage 1 into LOGS_DIR, from INIT (ImageNet weights or none);
# train_stage rpnr LOGS_DIR STAGE1_MODEL [FLAGS...]: stage 2 into LOGS_DIR, from STAGE1_MODEL (--baseline), with
# S2_EXTRA's flags. Both train with seed SEED (read at the call, so a loop over seeds can set it).
# With RESUME=1 a stage whose LOGS_DIR holds a checkpoint continues instead (--resume, without INIT or
# --baseline: the run keeps the start weights its run.json and checkpoint name). With NPROC > 1 plain python
# first checks the settings, the data, the start weights and the folder (train.py --check, with torchrun's
# WORLD_SIZE, writing nothing); a problem stops the script there with its one `error:` line, instead of under
# torchrun's traceback. Stage 2 is checked right before it starts, once stage 1 has written its model.
train_stage() {
    local stage=$1 logs=$2
    local -a start args stage_flags
    shift 2
    if [ "$stage" = rpnr ]; then
        start=(--baseline "$1")
        shift
        read -r -a stage_flags <<< "${S2_EXTRA:-}"  # flags of stage 2 alone, e.g. an ablation switch
        set -- "$@" ${stage_flags[@]+"${stage_flags[@]}"}
    else
        start=("${INIT[@]}")
    fi
    if [ "${RESUME:-0}" = 1 ] && [ -f "$logs/checkpoint.pth.tar" ]; then start=(--resume); fi
    args=("${COMMON[@]}" --seed "$SEED" "$@" --stage "$stage" --logs-dir "$logs" "${start[@]}")
    if [ "$NPROC" -gt 1 ]; then
        WORLD_SIZE=$NPROC python "$ROOT/train.py" "${args[@]}" --check || exit $?
    fi
    "${TRAIN[@]}" "${args[@]}"
}
