# Sourced by every top-level script once its settings are set. show_settings SCRIPT NAME... prints the
# settings in effect as one block ("settings: NAME=value ...", before anything runs) and, on stderr, one
# warning line per environment variable whose name is one edit away from a setting's name (a letter added,
# dropped, changed or two neighbours swapped, any case) without being one: EPOCH=1 while the script reads
# EPOCHS. A warning does not stop the script. Plain bash and awk.

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
