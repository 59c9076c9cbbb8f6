# Sourced by the launchers (ROOT set). The Python they and msrun's workers run is the project's
# virtual environment when it exists, else the `python` on PATH; without MindSpore: one line and
# exit 1, not a ModuleNotFoundError. PRUNE_VENV=DIR names another environment; PRUNE_VENV= (empty)
# takes the `python` on PATH as it is.
if [ -n "${PRUNE_VENV:-}" ] && [ ! -x "$PRUNE_VENV/bin/python" ]; then   # named, not there: say so
    echo "error: PRUNE_VENV=$PRUNE_VENV has no bin/python: create it with" \
         "'PRUNE_VENV=$PRUNE_VENV source scripts/setup_env.sh', or unset PRUNE_VENV for the project's .venv" >&2
    exit 1
fi
PRUNE_VENV="${PRUNE_VENV-$ROOT/.venv}"
if [ -n "$PRUNE_VENV" ] && [ -x "$PRUNE_VENV/bin/python" ]; then
    PATH="$PRUNE_VENV/bin:$PATH"  # msrun starts its workers as `python`, found on PATH
    export PATH
fi
if ! python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("mindspore") is None)' \
        >/dev/null 2>&1; then
    echo "error: MindSpore is not importable by $(command -v python || echo "python (none on PATH)"):" \
         "create the project's environment with 'source scripts/setup_env.sh' (or name yours with PRUNE_VENV=DIR)" >&2
    exit 1
fi

# resume_command LAUNCHER ARG...: the same command line with `--resume_ckpt auto` (given once)
resume_command() {
    local words=(bash "$1") line
    shift
    while [ $# -gt 0 ]; do
        if [ "$1" = --resume_ckpt ]; then shift $(( $# > 1 ? 2 : 1 )); else words+=("$1"); shift; fi
    done
    printf -v line '%q ' "${words[@]}" --resume_ckpt auto
    echo "${line% }"
}

# interrupted_report LINE LAUNCHER ARG...: train.py's "interrupted at step N/T; saved FILE; resume
# with --resume_ckpt auto" with the launcher's resume command, if FILE exists (else LINE as it is)
interrupted_report() {
    local line="$1" saved
    shift
    saved="$(sed -n 's/^interrupted at step [0-9/]*; saved \(.*\); resume with.*/\1/p' <<< "$line")"
    if [ -n "$saved" ] && [ -f "$saved" ]; then
        line="${line%%; resume with*}; resume with: $(resume_command "$@")"
    elif [ -n "$saved" ]; then  # multi-node: rank 0 wrote it on its node
        line="${line%%; resume with*} (not on this node: resume where rank 0 wrote it)"
    fi
    echo "${line:-interrupted before a checkpoint was written: nothing to resume from yet}"
}

# say_done OUTPUT_DIR: "done: OUTPUT_DIR/last.ckpt", only if training wrote it (else one line, exit 1)
say_done() {
    if [ ! -f "$1/last.ckpt" ]; then
        echo "error: training ended without writing $1/last.ckpt" >&2
        exit 1
    fi
    echo "done: $1/last.ckpt"
}
