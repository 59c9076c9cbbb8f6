"""metrics.jsonl: one JSON object per event, cut back to the checkpoint's step on resume, and
benchmarks/plot_run.py, which draws a run from it."""
import json
import os
import time

import numpy as np
import pytest

from tests.conftest import error_lines, run_script
from src.logs import MetricsFile, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hand_written_run(directory):
    """A small RPG-like run: train events, two mask updates, an evaluation."""
    record = MetricsFile(str(directory))
    for step in range(1, 9):
        record({"event": "train", "step": step, "epoch": 1, "loss": 2.5 - 0.1 * step,
                "lr": 0.01 * step, "images_per_s": 100.0, "sparsity": 0.5 if step > 3 else 0.0})
        if step in (3, 6):
            record({"event": "mask_update", "method": "rpg", "update": step // 3, "updates": 2,
                    "step": step, "target_density": 0.5 if step == 3 else 0.1,
                    "sparsity": 0.5 if step == 3 else 0.9, "drop_fraction": 0.1, "regrown": 7})
    record({"event": "eval", "step": 8, "epoch": 1, "counted_as_best": True, "top1": 0.42,
            "top5": 0.9, "loss": 1.7, "sparsity": 0.9})
    return record.path


def test_one_json_line_per_event(tmp_path):
    record = MetricsFile(str(tmp_path))
    record({"event": "train", "step": 1, "loss": np.float32(0.5), "images_per_s": 10.0})
    record({"event": "eval", "step": 1, "top1": np.float64(0.25)})
    with open(record.path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {"event": "train", "step": 1, "loss": 0.5, "images_per_s": 10.0}
    assert second["top1"] == 0.25                        # NumPy scalars become plain numbers
    assert [e["event"] for e in read_metrics(str(tmp_path))] == ["train", "eval"]
    assert read_metrics(str(tmp_path), "eval") == [second]


def test_disabled_file_writes_nothing(tmp_path):
    record = MetricsFile(str(tmp_path), enabled=False)   # a data-parallel worker other than rank 0
    record({"event": "train", "step": 1})
    record.truncate_after(0)
    assert not os.path.exists(record.path)


def test_truncate_after_drops_the_events_of_later_steps(tmp_path):
    path = hand_written_run(tmp_path)
    record = MetricsFile(str(tmp_path))
    record.truncate_after(6)                              # resume from the checkpoint of step 6
    kept = read_metrics(str(tmp_path))
    assert max(e["step"] for e in kept) == 6
    assert [e["step"] for e in kept if e["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in kept if e["event"] == "mask_update"] == [3, 6]
    record({"event": "train", "step": 7})                 # the repeated part is appended again
    assert [e["step"] for e in read_metrics(str(tmp_path))][-2:] == [6, 7]
    assert not [name for name in os.listdir(tmp_path) if name != os.path.basename(path)]


def test_truncate_after_drops_what_happened_before_the_next_iteration(tmp_path):
    # a mask update "at step 6" runs before iteration 7, after the checkpoint of step 6: resuming
    # from that checkpoint repeats it (and RPG's layer_ranks event with it)
    record = MetricsFile(str(tmp_path))
    for step in (5, 6, 7):
        record({"event": "train", "step": step})
        record({"event": "mask_update", "step": step, "before_iteration": True})
        record({"event": "layer_ranks", "step": step, "before_iteration": True})
    record({"event": "eval", "step": 6, "before_iteration": False})
    record.truncate_after(6)
    assert [(e["event"], e["step"]) for e in read_metrics(str(tmp_path))] == [
        ("train", 5), ("mask_update", 5), ("layer_ranks", 5), ("train", 6), ("eval", 6)]


def test_plot_run_draws_a_png(tmp_path):
    hand_written_run(tmp_path)
    out = tmp_path / "picture.png"
    proc = run_script("-m", "benchmarks.plot_run", tmp_path, "--out", out, timeout=120)
    assert f"wrote {out}" in proc.stdout
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    run_script("-m", "benchmarks.plot_run", tmp_path, timeout=120)   # default: OUTPUT_DIR/run.png
    assert (tmp_path / "run.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "picture.png", "run.png"]


@pytest.mark.parametrize("case", ["no folder", "no file", "empty file", "not JSON"])
def test_plot_run_refuses_bad_input_in_one_line(tmp_path, case):
    run = tmp_path / "run"
    if case != "no folder":
        run.mkdir()
    if case in ("empty file", "not JSON"):
        (run / "metrics.jsonl").write_text("" if case == "empty file" else "step 1 loss 2.3\n")
    proc = run_script("-m", "benchmarks.plot_run", run, check=False, timeout=120)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run / "run.png").exists()


def test_a_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    """SIGKILL during a write leaves half a line; truncation drops it (its event is replayed) and
    the next event starts on its own line."""
    from src.logs import MetricsFile, read_metrics
    metrics = MetricsFile(str(tmp_path))
    metrics({"event": "train", "step": 4, "loss": 1.0})
    with open(metrics.path, "a", encoding="utf-8") as handle:
        handle.write('{"event": "mask_update", "step": 8, "befo')
    metrics.truncate_after(8)
    metrics({"event": "mask_update", "step": 8, "before_iteration": True})
    assert [(e["event"], e["step"]) for e in read_metrics(str(tmp_path))] == [("train", 4), ("mask_update", 8)]


def test_truncate_after_covers_the_epoch_end_events(tmp_path):
    # PSAP prunes (psap_step, bn_recalibration) and the loop evaluates at an epoch's end, before
    # that epoch's checkpoint: kept when resuming from it, dropped when resuming from an earlier one
    record = MetricsFile(str(tmp_path))
    for step in (4, 8):
        record({"event": "train", "step": step})
        record({"event": "psap_step", "step": step, "psap_step": step // 4, "final": step == 8})
        record({"event": "bn_recalibration", "step": step, "batches": 2, "asked": 50})
        record({"event": "eval", "step": step, "top1": 0.5})
    record.truncate_after(4)
    assert [(e["event"], e["step"]) for e in read_metrics(str(tmp_path))] == [
        ("train", 4), ("psap_step", 4), ("bn_recalibration", 4), ("eval", 4)]


def test_set_aside_names_the_abandoned_attempt(tmp_path):
    from src.logs import set_aside
    for attempt in ("first", "second"):
        (tmp_path / "metrics.jsonl").write_text(f'{{"event": "{attempt}", "step": 1}}\n')
        (tmp_path / "train.log").write_text(f"{attempt}\n")
        os.utime(tmp_path / "metrics.jsonl", (1e9, 1e9))    # both attempts last wrote at one time
        os.utime(tmp_path / "train.log", (1e9, 1e9))
        moved = set_aside(str(tmp_path), ("metrics.jsonl", "train.log", "absent.log"))
        assert [old for old, _ in moved] == ["metrics.jsonl", "train.log"]
        for old, new in moved:
            assert (tmp_path / new).read_text().count(attempt) == 1
    names = sorted(os.listdir(tmp_path))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(1e9))
    assert names == [f"metrics.abandoned-{stamp}-2.jsonl", f"metrics.abandoned-{stamp}.jsonl",
                     f"train.abandoned-{stamp}-2.log", f"train.abandoned-{stamp}.log"]
    assert set_aside(str(tmp_path), ("metrics.jsonl",)) == []


def damaged(directory):
    """Two good events, a blank line, then a torn one: the damage is on line 4 of the file."""
    hand_written_run(directory)
    lines = (directory / "metrics.jsonl").read_text().splitlines(keepends=True)
    (directory / "metrics.jsonl").write_text(lines[0] + lines[1] + "\n" + '{"event": "train", "st\n')


def test_read_errors_name_the_line_of_the_file(tmp_path):
    damaged(tmp_path)
    with pytest.raises(ValueError, match=r"^line 4, column 23: Invalid control character$"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"^line 2: not a JSON object"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_bytes(b'{"event": "train", "step": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=r"^line 2: not UTF-8"):
        read_metrics(str(tmp_path))


@pytest.mark.parametrize("script", ["benchmarks.plot_run", "benchmarks.layer_ranks_csv"])
def test_the_scripts_name_the_damaged_line(tmp_path, script):
    damaged(tmp_path)
    before = sorted(os.listdir(tmp_path))
    proc = run_script("-m", script, tmp_path, check=False, timeout=120)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tmp_path / 'metrics.jsonl'}" in lines[0] and ": line 4, column 23" in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == before
