"""The accuracy benchmarks reuse a run folder only for the same recipe and budget, and end with
one line when a step fails or is interrupted (benchmarks/runs.py)."""
import os
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from benchmarks import extreme_sparsity, psap_benchmark, psap_report
from benchmarks.collapse_analysis import first_empty, mask_state, update_of
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
            psap_report.stored_report(os.path.join(results, name))


def test_the_committed_psap_ablation_rebuilds_its_report_and_plots_one_cut_by_method(tmp_path, monkeypatch):
    """--report_only: the committed Markdown is what the JSON gives; a single MACs cut is drawn
    with the methods side by side (one x position each, in the order run), not stacked on one x."""
    results = os.path.join(ROOT, "benchmarks", "results")
    data, text = psap_report.stored_report(os.path.join(results, "psap_resnet56_cut60_ablation.json"))
    with open(os.path.join(results, "psap_resnet56_cut60_ablation.md"), encoding="utf-8") as handle:
        assert text.rstrip() + "\n" == handle.read()
    drawn = []
    draw = psap_report._plot_methods
    monkeypatch.setattr(psap_report, "_plot_methods",
                        lambda ax, group: (drawn.append([r["label"] for r in group]), draw(ax, group)))
    png = tmp_path / "ablation.png"
    psap_report.plot(data["rows"], data["args"]["nets"], data["args"]["starts"], str(png))
    assert drawn == [["SFP", "PSAP-BN", "PSAP-L2", "PSAP-BN-NP", "PSAP-BN-NA"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _ablation_json():
    with open(os.path.join(ROOT, "benchmarks", "results", "psap_resnet56_cut60_ablation.json"), encoding="utf-8") as f:
        return f.read()


def _digests(folder):
    import hashlib
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir") for p in folder.iterdir()}


@pytest.mark.parametrize("case,message", [
    ("truncated", "as a results file"), ("binary", "as a results file"), ("folder", "as a results file"),
    ("png-elsewhere", None), ("md-is-a-folder", "is not a file"), ("png-is-a-folder", "is not a file"),
    ("rows-of-another-kind", "holds a value this script did not write")])
def test_report_only_bad_results_are_one_line_and_change_nothing(tmp_path, case, message):
    """--report_only never follows a path stored in the JSON (its "png" once pointed a copied file
    at docs/API.md), never draws the plot when the Markdown cannot be written, and a corrupt JSON
    is one line."""
    text = _ablation_json()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "API.md").write_text("# the API\n")
    results = tmp_path / "results"
    results.mkdir()
    name = "r"
    (results / "other.png").write_bytes(b"another result's plot")
    if case == "truncated":
        (results / "r.json").write_text(text[:5000])
    elif case == "binary":
        (results / "r.json").write_bytes(b"\xff\xfe\x00junk")
    elif case == "folder":
        (results / "r.json").mkdir()
    elif case == "png-elsewhere":
        (results / "r.json").write_text(text.replace('"png": "psap_resnet56_cut60_ablation.png"',
                                                     '"png": "../docs/API.md"'))
    elif case == "md-is-a-folder":
        (results / "r.json").write_text(text)
        (results / "r.png").write_bytes(b"an earlier plot")
        (results / "r.md").mkdir()
    elif case == "png-is-a-folder":
        (results / "r.json").write_text(text)
        (results / "r.png").mkdir()
    elif case == "rows-of-another-kind":
        (results / "r.json").write_text(text.replace('"rows": [', '"rows": [7, ', 1))
    before = _digests(results), _digests(tmp_path / "docs")
    if message is None:   # the plot goes to r.png beside r.json, whatever the file says
        psap_report.report_only(str(results), name)
        assert _digests(tmp_path / "docs") == before[1] and (results / "r.png").read_bytes()[:4] == b"\x89PNG"
        assert (results / "other.png").read_bytes() == b"another result's plot"
        return
    with pytest.raises(BenchmarkError, match=message) as err:
        psap_report.report_only(str(results), name)
    assert "\n" not in str(err.value)
    assert (_digests(results), _digests(tmp_path / "docs")) == before


def test_the_stream_method_of_the_psap_benchmark_trains_the_recipe_it_names():
    cmd = ["--config_path", os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml"),
           "--data_path", "somewhere", *psap_benchmark.method_overrides("PSAP-BN-S", "bn_l2",
                                                                       (0.5, 0.0, 0.25))]
    cfg, _ = parse_args(cmd)
    assert cfg.psap_stream_ratios == [0.5, 0.0, 0.25] and cfg.filter_score == "bn_l2"


def test_the_psap_ablations_train_the_recipe_they_name():
    base = ["--config_path", os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml"),
            "--data_path", "somewhere"]
    no_protect, _ = parse_args(base + psap_benchmark.method_overrides("PSAP-BN-NP", "bn_l2"))
    no_adaptive, _ = parse_args(base + psap_benchmark.method_overrides("PSAP-BN-NA", "bn_l2"))
    full, _ = parse_args(base + psap_benchmark.method_overrides("PSAP-BN", "bn_l2"))
    assert (full.psap_protect, full.psap_adaptive) == (True, True)
    assert (no_protect.psap_protect, no_protect.psap_adaptive) == (False, True)
    assert (no_adaptive.psap_protect, no_adaptive.psap_adaptive) == (True, False)
    assert no_protect.filter_score == no_adaptive.filter_score == "bn_l2"


def _psap_args(tmp_path, **changes):
    import argparse
    values = {"keep_committed": "psap_resnet56_cut60", "train_samples": 10000, "epochs": 6,
              "eval_samples": 0, "bn_score": "bn_l2", "pretrained_lr": 0.01,
              "work_dir": str(tmp_path), **changes}
    return argparse.Namespace(**values)


def test_committed_psap_rows_are_reused_without_their_run_folders_and_marked(tmp_path):
    committed = psap_benchmark.committed_records(_psap_args(tmp_path))
    setting = {"net": "resnet56", "seed": 43, "start": "scratch", "cut": 0.6, "method": "SFP",
               "multiple": 1}
    record = psap_benchmark.run_or_committed(_psap_args(tmp_path), setting, True, committed)
    assert record["committed"] == "psap_resnet56_cut60" and record["top1"] == 0.7617
    assert record["mindir"] == {}                       # its exports are gone: not timed
    rows = psap_benchmark.aggregate([record], {})
    assert "(committed)" in psap_report._row_line(rows[0])
    with pytest.raises(BenchmarkError, match=r"made with epochs 6, this command has 5"):
        psap_benchmark.committed_records(_psap_args(tmp_path, epochs=5))


def test_the_extreme_sparsity_benchmark_trains_the_shipped_resnet32x2_recipe_when_asked():
    shipped = extreme_sparsity.recipe_for("rpg", "resnet32x2", 99.5, "shipped")
    assert shipped.endswith("config/rpg_resnet32x2_fashion_mnist_s995.yaml")
    assert extreme_sparsity.recipe_for("rpg", "resnet32x2", 99.5).endswith("rpg_resnet20_fashion_mnist_s98.yaml")
    assert extreme_sparsity.recipe_for("rigl_erk", "resnet32x2", 99.5, "shipped").endswith(
        "rigl_erk_resnet20_fashion_mnist_s90.yaml")


def test_the_collapse_analysis_names_emptied_layers_and_the_fc_classes_left_without_weight():
    fc = np.zeros((10, 64), np.float32)
    fc[0, 3] = fc[1, 3] = fc[2, 5] = 1
    params = {"pruning_mask.conv1.weight": np.zeros((16, 1, 3, 3), np.float32),
              "pruning_mask.layer1.0.conv1.weight": np.ones((16, 16, 3, 3), np.float32),
              "pruning_mask.fc.weight": fc, "conv1.weight": np.ones((16, 1, 3, 3), np.float32)}
    state = mask_state(params)
    assert state["empty_layers"] == ["conv1.weight"] and state["stem_density"] == 0.0
    assert (state["fc_weights"], state["fc_classes_without_weight"], state["fc_inputs_read"]) == (3, 7, 2)
    updates = [{"update": 1, "step": 16}, {"update": 2, "step": 32}]
    # an update at step t runs after the checkpoint of step t
    assert update_of(16, updates) is None and update_of(32, updates)["update"] == 1
    assert update_of(None, updates)["update"] == 2
    rows = [{"step": 16, "update": 0, "empty_layers": []},
            {"step": 32, "update": 1, "empty_layers": ["conv1.weight"]}]
    assert first_empty(rows) == {"step": 32, "update": 1, "layers": ["conv1.weight"]}
    with pytest.raises(BenchmarkError, match="no pruning masks"):
        mask_state({"conv1.weight": np.ones((2, 1, 3, 3))})


def test_an_erk_label_of_the_extreme_benchmark_is_refused_while_rpg_ignores_the_key():
    from src.pruning.masks.rpg.pruner import RPGPruner
    reads = any("density_distribution" in getattr(c, "keys", {}) for c in RPGPruner.__mro__)
    extreme_sparsity.check_density_distribution("RPG", [])            # no ERK: nothing to check
    if reads:   # after the density merge the label trains what it names
        extreme_sparsity.check_density_distribution("RPG-ERK", extreme_sparsity.METHODS["RPG-ERK"][1])
    else:
        with pytest.raises(BenchmarkError, match="would train plain RPG"):
            extreme_sparsity.check_density_distribution("RPG-ERK", extreme_sparsity.METHODS["RPG-ERK"][1])
