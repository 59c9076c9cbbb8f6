"""The accuracy benchmarks reuse a run folder only for the same recipe and budget, and end with
one line when a step fails or is interrupted (benchmarks/runs.py)."""
import os
import sys

import pytest

from tests.conftest import ROOT

from benchmarks import psap_benchmark
from benchmarks.runs import BenchmarkError, call, check_same_recipe
from src.config import parse_args
from src.run_record import recipe_of, write_run

RECIPE = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s98.yaml")


def _train_args(out, **changes):
    values = {"epoch_size": 4, "train_samples": 8000, "seed": 1, "delta": 16, **changes}
    args = ["--config_path", RECIPE, "--data_path", "somewhere", "--output_dir", str(out)]
    return args + [x for k, v in values.items() for x in (f"--{k}", str(v))]


def test_a_run_of_the_same_recipe_is_reused_and_another_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "run"
    check_same_recipe(out, _train_args(out))          # nothing there yet: fine
    cfg, _ = parse_args(_train_args(out))
    write_run(str(out), "abc", recipe_of(cfg))
    check_same_recipe(out, _train_args(out))          # the same settings
    # operational keys (where the data is, logging) do not make another run
    check_same_recipe(out, _train_args(out) + ["--log_interval", "7"])
    with pytest.raises(BenchmarkError, match=r"epoch_size \(4 -> 3\).*train_samples \(8000 -> 512\)"):
        check_same_recipe(out, _train_args(out, epoch_size=3, train_samples=512))
    with pytest.raises(BenchmarkError, match=r"crop_padding \(0 -> 2\)"):   # a changed recipe file
        check_same_recipe(out, _train_args(out, crop_padding=2))


def test_a_failing_step_is_one_error_and_an_interrupted_one_an_interrupt(tmp_path):
    log = tmp_path / "steps.log"
    call([sys.executable, "-c", "print('fine')"], str(log))
    assert "fine" in log.read_text()
    with pytest.raises(BenchmarkError, match=r"exited 3; its output: .*steps.log"):
        call([sys.executable, "-c", "import sys; sys.exit(3)"], str(log))
    with pytest.raises(KeyboardInterrupt):                 # train.py's exit after Ctrl-C
        call([sys.executable, "-c", "import sys; sys.exit(130)"])


def test_psap_report_only_explains_a_results_file_it_cannot_rebuild_in_one_line():
    results = os.path.join(ROOT, "benchmarks", "results")
    cases = {"psap_width_latency.json": "is not a result of this script (written by "
                                        "benchmarks/psap_width_latency.py)",
             "psap_benchmark.json": "written by an older version of this script",
             "no_such_result.json": "no results file"}
    for name, message in cases.items():
        with pytest.raises(BenchmarkError, match=message.replace("(", r"\(").replace(")", r"\)")):
            psap_benchmark.stored_report(os.path.join(results, name))


def test_the_stream_method_of_the_psap_benchmark_trains_the_recipe_it_names():
    cmd = ["--config_path", os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml"),
           "--data_path", "somewhere", *psap_benchmark.method_overrides("PSAP-BN-S", "bn_l2",
                                                                       (0.5, 0.0, 0.25))]
    cfg, _ = parse_args(cmd)
    assert cfg.psap_stream_ratios == [0.5, 0.0, 0.25] and cfg.filter_score == "bn_l2"
