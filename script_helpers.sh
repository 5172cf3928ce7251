# Sourced by every top-level script once its settings are set (ROOT = the repository folder); plain bash and awk.
# show_settings SCRIPT NAME...: the settings in effect as one block ("settings: NAME=value ...", before anything
#     runs) and, on stderr, one warning per environment variable one edit away from a setting's name (a letter
#     added, dropped, changed or two neighbours swapped, any case): EPOCH=1 while the script reads EPOCHS.
# train_commands: the train.py command and the flags every stage shares (COMMON, INIT, TRAIN) from DATASET
#     DATA_DIR DEVICE HEIGHT WIDTH BATCH INSTANCES ITERS EPOCHS EPS MOMENTUM BN_SPLITS EXTRA IMAGENET NPROC
#     LOW_MEMORY; refuses a STAGES other than "1 2", 1 or 2. train_stage runs one stage (below).
# test_checkpoint: test.py's ten-trial test of CHECKPOINT on DATA_DIR, once per mode in MODES (or once).

# environment variables never compared, besides names shorter than 4 letters: the shell's and the system's own
SETTINGS_IGNORED=" PATH HOME PWD OLDPWD SHELL USER LOGNAME LANG LANGUAGE TERM HOSTNAME SHLVL TMPDIR DISPLAY \
EDITOR MAIL PAGER COLUMNS LINES "

# one_edit A B: true when A and B (upper case) are equal or one edit apart
one_edit() {
    local a=$1 b=$2 t i
    [ "$a" != "$b" ] || return 0
    if [ "${#a}" -gt "${#b}" ]; then t=$a; a=$b; b=$t; fi
    [ $(( ${#b} - ${#a} )) -le 1 ] || return 1
    for (( i = 0; i < ${#a}; i++ )); do [ "${a:i:1}" = "${b:i:1}" ] || break; done
    if [ "${#a}" -lt "${#b}" ]; then
        [ "${a:i}" = "${b:i+1}" ]                                              # a letter added or dropped
    else
        [ "${a:i+1}" = "${b:i+1}" ] && return 0                                # a letter changed
        [ "${a:i:1}${a:i+1:1}" = "${b:i+1:1}${b:i:1}" ] && [ "${a:i+2}" = "${b:i+2}" ]  # neighbours swapped
    fi
}

# show_settings SCRIPT NAME...: the block of settings (wrapped at about 110 characters), then the warnings
show_settings() {
    local script=$1 line="settings:" name value env upper setting near
    shift
    for name in "$@"; do
        value=${!name}
        case $value in '' | *[[:space:]]*) value="\"$value\"" ;; esac
        if [ $(( ${#line} + ${#name} + ${#value} + 2 )) -gt 110 ] && [ "$line" != "settings:" ]; then
            echo "$line"
            line="         "
        fi
        line+=" $name=$value"
    done
    echo "$line"
    while read -r env upper; do
        case " $* $SETTINGS_IGNORED" in *" $env "*) continue ;; esac
        [ "${#env}" -ge 4 ] || continue
        near=
        for setting in "$@"; do
            if one_edit "$upper" "$setting"; then near+="${near:+ or }$setting"; fi
        done
        [ -z "$near" ] || echo "warning: $env=${!env} is not a setting of $script; did you mean $near?" >&2
    done < <(compgen -e | awk '/^[A-Za-z_][A-Za-z0-9_]*$/ { print $0, toupper($0) }')
}

train_commands() {
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

}

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

test_checkpoint() {
    show_settings "test_$DATASET.sh" DATA_DIR CHECKPOINT DEVICE HEIGHT WIDTH OUT_DIR ${MODES:+MODES}
    mkdir -p "$OUT_DIR"
    local mode
    for mode in ${MODES:-$DATASET}; do
        python "$ROOT/test.py" --dataset "$DATASET" --data-dir "$DATA_DIR" --checkpoint "$CHECKPOINT" \
            ${MODES:+--mode "$mode"} --trials 10 --height "$HEIGHT" --width "$WIDTH" --device "$DEVICE" \
            --json "$OUT_DIR/$mode.json" | tee "$OUT_DIR/$mode.log"
    done
}
