"""Training runs of the accuracy benchmarks: train.py, eval.py and export.py as subprocesses.

- A run folder is reused (cached result, or an interrupted run continued with --resume_ckpt auto)
  only if its run.json records the recipe this command would train: another budget, seed or a
  changed recipe file is refused with one line naming the keys, never reported as if it matched.
- A failing or interrupted step ends the benchmark with one line, not a traceback; finished runs
  stay in the work folder and the same command continues.
"""
import json
import os
import subprocess
import sys

from benchmarks.common import ROOT
from src.config import parse_args
from src.errors import ConfigError
from src.outputs import OutputError
from src.run_record import describe_changes, read_run, recipe_changes


class BenchmarkError(Exception):
    """A benchmark step that cannot go on: one line for the user."""


def check_same_recipe(out, train_args):
    """BenchmarkError if ``out`` holds a run whose recipe differs from what ``train_args`` (the
    arguments after ``train.py``) give."""
    try:
        record = read_run(out)
        if record is None:
            return
        cfg, _ = parse_args([str(a) for a in train_args])
    except ConfigError as err:
        raise BenchmarkError(str(err)) from None
    changed = recipe_changes(record["recipe"], cfg, allowed=[])
    if changed:
        raise BenchmarkError(f"{out} holds a run with other settings "
                             f"({describe_changes(record['recipe'], cfg, changed)}): use another "
                             "--work_dir, or delete that folder to run it again")


def cached_result(out, train_args):
    """The result.json of the finished run in ``out`` (None if there is none yet); BenchmarkError
    if ``out`` holds a run of other settings (``check_same_recipe``)."""
    check_same_recipe(out, train_args)
    result_path = os.path.join(out, "result.json")
    if not os.path.exists(result_path):
        return None
    with open(result_path, encoding="utf-8") as handle:
        return json.load(handle)


def train(train_args, log_path=None):
    """``python train.py TRAIN_ARGS`` with --resume_ckpt auto: a run interrupted earlier continues
    from its newest checkpoint (call ``check_same_recipe`` first)."""
    call([sys.executable, "train.py", *train_args, "--resume_ckpt", "auto"], log_path)


def call(cmd, log_path=None):
    """Run ``cmd`` (python train.py/eval.py/export.py ...) from the repository root; its output
    goes to ``log_path`` (appended) or nowhere. BenchmarkError if it fails; KeyboardInterrupt if it
    was interrupted (Ctrl-C reaches the child first: train.py saves and exits 130)."""
    log = open(log_path, "a", encoding="utf-8") if log_path else None
    try:
        if log:
            log.write("$ " + " ".join(map(str, cmd)) + "\n")
            log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=log or subprocess.DEVNULL,
                                stderr=subprocess.STDOUT if log else None)
        try:
            proc.wait()
        except KeyboardInterrupt:
            # the child got the same Ctrl-C: let train.py finish its step and save (subprocess.run
            # would kill it after 0.25 s and lose the work since the last periodic checkpoint)
            proc.wait()
            raise
    finally:
        if log:
            log.close()
    if proc.returncode in (130, -2):
        raise KeyboardInterrupt
    if proc.returncode != 0:
        script = os.path.basename(str(cmd[1]))
        where = f"; its output: {log_path}" if log_path else ""
        raise BenchmarkError(f"{script} exited {proc.returncode}{where} (command: "
                             f"{' '.join(map(str, cmd[1:]))})")


def main_guard(main):
    """Run a benchmark's ``main``: one error line (exit 1) or the interrupted line (exit 130)."""
    try:
        main()
    except (BenchmarkError, OutputError) as err:   # OutputError: a result file that cannot be written
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept in the work folder; the same command continues",
              file=sys.stderr)
        sys.exit(130)
