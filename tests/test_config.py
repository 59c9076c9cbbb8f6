"""Recipe parsing: overrides, typos, types and ranges, and the one-line CLI error."""
import glob
import os

import pytest

from src.config import build_config, load_yaml, parse_args
from src.errors import ConfigError
from tests.conftest import ROOT, error_lines, run_script

RECIPE = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")


def test_every_recipe_parses():
    recipes = sorted(glob.glob(os.path.join(ROOT, "config", "*.yaml")))
    assert recipes
    for path in recipes:
        cfg, _ = parse_args(["--config_path", path])
        assert cfg.config_path == path


def test_overrides_are_typed():
    cfg, _ = parse_args(["--config_path", RECIPE, "--batch_size", "32", "--lr_max=0.05",
                         "--zero_init_residual", "true", "--lr_decay_epochs", "[3, 6]"])
    assert cfg.batch_size == 32 and cfg.lr_max == 0.05 and cfg.zero_init_residual is True
    assert cfg.lr_decay_epochs == [3, 6]


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'batch_szie'.*batch_size"):
        parse_args(["--config_path", RECIPE, "--batch_szie", "3"])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("net: resnet20\nsparsty: 0.9\n")
    with pytest.raises(ConfigError, match=r"'sparsty' in .*bad.yaml.*sparsity"):
        parse_args(["--config_path", str(path)])


@pytest.mark.parametrize("key,value,expected", [
    ("sparsity", "1.2", r"'sparsity'.*\[0.0, 1.0\)"),
    ("batch_size", "-4", r"'batch_size'.*\[1, 65536\]"),
    ("batch_size", "abc", r"'batch_size'.*int"),
    ("net", "resnet19", r"'net'.*one of"),
    ("lr_max", "0", r"'lr_max'"),
])
def test_bad_values_name_key_and_range(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_args(["--config_path", RECIPE, f"--{key}", value])


def test_yaml_values_checked_too():
    with pytest.raises(ConfigError, match="'epoch_size'"):
        build_config({"epoch_size": 0}, {})
    assert load_yaml(RECIPE)["net"] == "resnet20"


def test_cli_error_is_one_line_exit_2():
    proc = run_script("train.py", "--config_path", RECIPE, "--sparsity", "1.2", check=False)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "sparsity" in lines[0] and "Traceback" not in proc.stderr


def test_keys_of_other_methods_are_named():
    """--prune_method gmp on an RPG recipe: its RPG keys would silently do nothing; train.py warns
    naming them (SparseTraining refuses them)."""
    from src.config import keys_of_other_methods
    cfg = build_config({"prune_method": "rpg", "lamb": 2.0, "delta": 5}, {"prune_method": "gmp"})
    assert keys_of_other_methods(cfg) == ["delta", "lamb"]
    assert keys_of_other_methods(build_config({"prune_method": "rpg", "lamb": 2.0}, {})) == []
    assert keys_of_other_methods(build_config({"prune_method": "gmp", "T_end_percent": 0.8}, {})) == []
    # base pruning keys a method does not read: PSAP's target is its MACs cut, not a sparsity
    psap = build_config({"prune_method": "psap", "sparsity": 0.9, "prune_exclude": ["fc*"]}, {})
    assert keys_of_other_methods(psap) == ["prune_exclude", "sparsity"]
    assert keys_of_other_methods(build_config({"prune_method": "gmp", "sparsity": 0.9,
                                               "prune_exclude": ["fc*"]}, {})) == []


def test_sparsity_on_a_psap_run_is_not_silently_ignored(fashion_dir, tmp_path):
    """train.py warns naming it; SparseTraining and PruningAlgorithm refuse it in one line."""
    from src.pruning.api import PruningAlgorithm
    # (8 images give no batch of 128: the run ends right after the warning, before any training)
    proc = run_script("train.py", "--config_path", os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml"),
                      "--sparsity", "0.9", "--data_path", fashion_dir, "--train_samples", "8",
                      "--output_dir", str(tmp_path / "run"), check=False)
    assert "sparsity are not read by prune_method psap and are ignored" in proc.stdout + proc.stderr
    with pytest.raises(ConfigError, match="^'sparsity' is not a key of method psap$"):
        PruningAlgorithm("psap", steps_per_epoch=4, sparsity=0.9)


def test_train_help_names_every_registered_method():
    from src.pruning.core.registry import METHODS
    header = open(os.path.join(ROOT, "train.py"), encoding="utf-8").read().split("\n\n")[0]
    assert all(f" {name} " in header.replace("|", " ").replace(";", " ") for name in METHODS), header


def test_resume_from_a_checkpoint_of_another_recipe_is_refused_naming_the_keys():
    """The recipe check on resume (src/run_record.check_recipe), for a key nothing else guards."""
    from src.run_record import check_recipe, recipe_of
    saved = build_config({"prune_method": "rpg", "lr_max": 0.1}, {})
    now = build_config({"prune_method": "rpg", "lr_max": 0.5}, {})
    check_recipe("a.ckpt", {"recipe": recipe_of(saved)}, saved)      # the same recipe continues
    with pytest.raises(ConfigError, match=r"a.ckpt was made with another recipe: lr_max \(0.1 -> 0.5\); "
                                          r".*--resume_allow_changes lr_max$"):
        check_recipe("a.ckpt", {"recipe": recipe_of(saved)}, now)
