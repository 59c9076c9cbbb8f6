"""PSAP command contract: train -> last.ckpt + last_compact.ckpt -> eval (params/FLOPs of both
networks) -> export of the genuinely smaller network."""
import json
import os

import numpy as np
import mindspore as ms

from src.logs import read_metrics
from tests.conftest import ROOT, TINY_NET, run_script

PSAP = os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml")


def test_psap_contract(fashion_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_script("train.py", "--config_path", PSAP, "--data_path", fashion_dir, "--output_dir", out,
                      "--epoch_size", "2", "--train_samples", "512", "--eval_samples", "256",
                      "--batch_size", "32", *TINY_NET)
    assert (out / "last.ckpt").exists() and (out / "last_compact.ckpt").exists()
    # the loop gave the method the training batches it declared: 16 of the recipe's 50 asked
    assert [e["batches"] for e in read_metrics(str(out), "bn_recalibration")] == [16]

    result_path = tmp_path / "r.json"
    proc = run_script("eval.py", "--config_path", PSAP, "--ckpt", out / "last_compact.ckpt",
                      "--data_path", fashion_dir, "--json_out", result_path, "--eval_samples", "256",
                      "--report_png", tmp_path / "widths.png", *TINY_NET)
    result = json.loads(result_path.read_text())
    for key in ("top1", "top5", "loss", "params", "flops", "dense_params", "dense_flops"):
        assert key in result, key
    cut = 1 - result["flops"] / result["dense_flops"]
    assert abs(cut - 0.4) <= 0.01, cut          # recipe: psap_target flops, psap_ratio 0.4
    assert result["params"] < result["dense_params"]
    assert (tmp_path / "widths.png").stat().st_size > 1000

    # The compact network computes what the masked one computes.
    dense = run_script("eval.py", "--config_path", PSAP, "--ckpt", out / "last.ckpt", "--data_path",
                       fashion_dir, "--json_out", tmp_path / "d.json", "--eval_samples", "256", *TINY_NET)
    assert dense.returncode == 0
    masked = json.loads((tmp_path / "d.json").read_text())
    assert abs(masked["top1"] - result["top1"]) < 1e-9

    proc = run_script("export.py", "--config_path", PSAP, "--ckpt", out / "last_compact.ckpt",
                      "--file_format", "MINDIR", "--file_name", tmp_path / "small", *TINY_NET)
    assert "compact widths" in proc.stdout
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "small.mindir")))
    assert graph(ms.Tensor(np.zeros((1, 1, 28, 28), np.float32))).shape == (1, 10)
    # genuinely smaller: the file is nearer the compact network's float32 parameter bytes than the
    # dense one's (a dense export holds at least 4 * dense_params bytes: 0.3 MB here)
    midway = 4 * (result["params"] + result["dense_params"]) / 2
    assert (tmp_path / "small.mindir").stat().st_size < midway
