"""PSAP benchmark matrix on Fashion-MNIST: dense, SFP, FPGM, PSAP with L2 and with a BN-aware
score, with and without width rounding, at several MACs cuts, from scratch and from a dense
pre-trained checkpoint, on ResNet-20 and ResNet-56, over seeds.

    python -m benchmarks.psap_benchmark --data_path DIR [--nets resnet20 resnet56]
        [--cuts 0.4 0.6] [--starts scratch pretrained] [--seeds 42 43 44]
        [--methods dense SFP FPGM PSAP-L2 PSAP-BN] [--round_methods PSAP-L2 PSAP-BN]
        [--multiple 8] [--bn_score bn_l2] [--train_samples 10000] [--epochs 6]

Runs (every one is ``train.py`` then ``eval.py --json_out``; the same training images, epochs,
learning-rate schedule and seed for all methods of a cell):
- dense: config/resnet20_fashion_mnist.yaml (with --net); its last.ckpt of the same seed is the
  pre-trained checkpoint of the ``pretrained`` start;
- SFP: config/psap_resnet20_fashion_mnist.yaml with ``--psap_adaptive false --psap_protect false``
  (soft pruning on the same ASFP-shaped schedule and MACs target, uniform layer ratios, L2 score,
  no protection); FPGM: the same with ``--filter_score fpgm``;
- PSAP-L2: the PSAP recipe as it is (adaptive ratios, protection, L2 score); PSAP-BN: the same
  with ``--filter_score BN_SCORE`` (default bn_l2); PSAP-BN-S: PSAP-BN with the residual streams
  pruned too (``--psap_stream_ratios`` from --stream_ratios, default 0.5 0 0.25: 8/32/48);
  PSAP-BN-SU: PSAP-BN-S with uniform inner ratios (``--psap_adaptive false``: even widths);
  ablations of PSAP-BN: PSAP-BN-NP without protection (``--psap_protect false``), PSAP-BN-NA
  without adaptive per-layer ratios (``--psap_adaptive false``); PSAP-L2 is PSAP-BN without the
  BN-aware score;
- methods in --round_methods also run with ``--psap_width_multiple N`` (label suffix +RN);
- every pruned run: ``--psap_target flops --psap_ratio CUT``; ``pretrained``: additionally
  ``--pre_trained DENSE/last.ckpt --lr_max --pretrained_lr --warmup_epochs 0``.
Results are read from the files the runs write: eval.json (top-1, params, MACs, inner widths)
and metrics.jsonl (per pruning step: protection outcome, regrown filters kept to the end). The
first seed's networks are exported to MINDIR at batch 1 and 32 and timed in one process per
network (``measure_latency``: models interleaved, after waiting for a quiet machine).

Results: benchmarks/results/psap_matrix.{json,md,png} (--name). Finished runs are kept under
--work_dir and reused when the script is started again, only if made with the same settings
(else one error line); an interrupted run continues from its newest checkpoint; --report_only
rewrites the report and its plot from the JSON. --keep_committed NAME takes the runs of
benchmarks/results/NAME.json that this command would train (same settings and budget) from that
file instead of training them again (their run folders need not exist): they are marked
"(committed)" in the report and not timed.
"""
import argparse
import json
import os
import sys
import time

from benchmarks.common import ROOT, machine_info, result_name, write_results
from benchmarks.latency import BATCHES, measure_latency, wait_until_quiet
from benchmarks.psap_report import aggregate, cell_key, markdown, plot, report_only, stored_report
from benchmarks.runs import BenchmarkError, call, check_same_recipe, main_guard, train
from src.cli import OneLineParser
from src.config import parse_args as parse_recipe
from src.errors import ConfigError
from src.logs import MetricsFile, read_metrics

DENSE_RECIPE = "resnet20_fashion_mnist.yaml"
PSAP_RECIPE = "psap_resnet20_fashion_mnist.yaml"
NO_PSAP = ["--psap_adaptive", "false", "--psap_protect", "false"]


def method_overrides(method, bn_score, stream_ratios=(0.5, 0.0, 0.25)):
    """Overrides of the PSAP recipe that make ``method`` (None for dense)."""
    streams = "[" + ",".join(str(r) for r in stream_ratios) + "]"
    table = {"dense": None,
             "SFP": NO_PSAP + ["--filter_score", "l2"],
             "FPGM": NO_PSAP + ["--filter_score", "fpgm"],
             "PSAP-L2": ["--filter_score", "l2"],
             "PSAP-BN": ["--filter_score", bn_score],
             # ablations of PSAP-BN: one part off at a time (PSAP-L2 is the one without the BN score)
             "PSAP-BN-NP": ["--filter_score", bn_score, "--psap_protect", "false"],
             "PSAP-BN-NA": ["--filter_score", bn_score, "--psap_adaptive", "false"],
             "PSAP-BN-S": ["--filter_score", bn_score, "--psap_stream_ratios", streams],
             "PSAP-BN-SU": ["--filter_score", bn_score, "--psap_stream_ratios", streams,
                            "--psap_adaptive", "false"]}
    if method not in table:
        raise ValueError(f"unknown method '{method}'; choose from {', '.join(table)}")
    return table[method]


def _recipe(name):
    return os.path.join(ROOT, "config", name)


def label_of(method, multiple):
    return method if multiple <= 1 else f"{method}+R{multiple}"


def settings(args):
    """Every (net, seed, start, cut, method, multiple) of the matrix, dense first per seed."""
    out = []
    for net in args.nets:
        for seed in args.seeds:
            if "dense" in args.methods or "pretrained" in args.starts:
                out.append({"net": net, "seed": seed, "start": "scratch", "cut": 0.0,
                            "method": "dense", "multiple": 1})
            for start in args.starts:
                for cut in args.cuts:
                    for method in (m for m in args.methods if m != "dense"):
                        multiples = [1] + ([args.multiple] if method in args.round_methods
                                           and args.multiple > 1 else [])
                        out += [{"net": net, "seed": seed, "start": start, "cut": cut,
                                 "method": method, "multiple": k} for k in multiples]
    return out


def run_dir(work_dir, s):
    base = os.path.join(work_dir, s["net"], f"seed{s['seed']}")
    if s["method"] == "dense":
        return os.path.join(base, "dense")
    # no '+' in paths: ms.export rejects file names outside [0-9a-zA-Z@_-.:/\\]
    return os.path.join(base, s["start"], f"cut{round(100 * s['cut'])}",
                        label_of(s["method"], s["multiple"]).replace("+", "_"))


def train_command(args, s, out):
    """The train.py command line of one setting."""
    extra = method_overrides(s["method"], args.bn_score, args.stream_ratios)
    recipe = DENSE_RECIPE if extra is None else PSAP_RECIPE
    cmd = [sys.executable, "train.py", "--config_path", _recipe(recipe), "--net", s["net"],
           "--data_path", args.data_path, "--output_dir", out, "--epoch_size", str(args.epochs),
           "--train_samples", str(args.train_samples), "--seed", str(s["seed"]),
           "--log_interval", "50", "--eval_interval", "0"]
    if extra is None:
        return cmd, recipe
    cmd += extra + ["--psap_target", "flops", "--psap_ratio", str(s["cut"])]
    if s["multiple"] > 1:
        cmd += ["--psap_width_multiple", str(s["multiple"])]
    if s["start"] == "pretrained":
        dense = run_dir(args.work_dir, dict(s, method="dense", start="scratch", cut=0.0,
                                            multiple=1))
        cmd += ["--pre_trained", os.path.join(dense, "last.ckpt"), "--lr_max",
                str(args.pretrained_lr), "--warmup_epochs", "0"]
    return cmd, recipe


def _train(cmd, out, ckpt, log):
    seconds_path = os.path.join(out, "train_seconds.json")
    if not os.path.exists(ckpt):
        start = time.time()
        train(cmd[2:], log)
        with open(seconds_path, "w", encoding="utf-8") as handle:
            json.dump(time.time() - start, handle)
    if os.path.exists(seconds_path):
        with open(seconds_path, encoding="utf-8") as handle:
            return json.load(handle)
    return None


BUDGET_KEYS = ("train_samples", "epochs", "eval_samples", "bn_score", "pretrained_lr")
SETTING_KEYS = ("net", "seed", "start", "cut", "method", "multiple")


def committed_records(args):
    """{setting: record} of benchmarks/results/NAME.json (--keep_committed) made with this
    command's budget (BenchmarkError: one line if another), marked with the file they came from."""
    if not args.keep_committed:
        return {}
    name = args.keep_committed
    data, _ = stored_report(os.path.join(ROOT, "benchmarks", "results", f"{name}.json"))
    other = [k for k in BUDGET_KEYS if data["args"].get(k) != getattr(args, k)]
    if other:
        k = other[0]
        raise BenchmarkError(f"--keep_committed {name}: its runs were made with {k} "
                             f"{data['args'].get(k)}, this command has {getattr(args, k)}: "
                             "give the same budget")
    # their MINDIR files went with their run folders: not timed again
    return {tuple(r[k] for k in SETTING_KEYS): dict(r, mindir={}, committed=name)
            for r in data["runs"]}


def run_or_committed(args, s, export, committed):
    """A committed record of ``s`` unless --work_dir holds a finished run of it; else ``run``."""
    key = tuple(s[k] for k in SETTING_KEYS)
    if key in committed and not os.path.exists(os.path.join(run_dir(args.work_dir, s), "record.json")):
        return committed[key]
    return run(args, s, export)


def run(args, s, export):
    """Train + evaluate (+ export) one setting; returns its record (cached in its directory)."""
    out = run_dir(args.work_dir, s)
    cmd, recipe = train_command(args, s, out)
    check_same_recipe(out, cmd[2:])   # a cached run is reused only with the same settings
    record_path = os.path.join(out, "record.json")
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        if not export or record.get("mindir"):
            return record
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "commands.log")
    ckpt = os.path.join(out, "last.ckpt" if s["method"] == "dense" else "last_compact.ckpt")
    seconds = _train(cmd, out, ckpt, log)
    config = ["--config_path", _recipe(recipe), "--net", s["net"]]
    eval_json = os.path.join(out, "eval.json")
    samples = ["--eval_samples", str(args.eval_samples)] if args.eval_samples else []
    # --overwrite: a rerun after a failure between the steps replaces their partial outputs
    call([sys.executable, "eval.py", *config, "--data_path", args.data_path, "--ckpt", ckpt,
          "--json_out", eval_json, "--overwrite", "true", *samples], log)
    exports = {}
    for batch in BATCHES if export else ():
        name = os.path.join(out, f"model_b{batch}")
        call([sys.executable, "export.py", *config, "--ckpt", ckpt, "--file_format", "MINDIR",
              "--file_name", name, "--export_batch", str(batch), "--overwrite", "true"], log)
        exports[str(batch)] = name + ".mindir"
    with open(eval_json, encoding="utf-8") as handle:
        result = json.load(handle)
    record = dict(s, label=label_of(s["method"], s["multiple"]), train_seconds=seconds,
                  mindir=exports, checkpoint=ckpt,
                  train_command=" ".join(["python"] + cmd[1:]).replace(ROOT + "/", ""))
    record.update({k: result[k] for k in ("top1", "top5", "loss", "params", "flops",
                                          "dense_params", "dense_flops", "inner_widths",
                                          "stage_widths")
                   if k in result})
    record["pruning_steps"], record["regrowth"] = pruning_log(out)
    with open(record_path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    os.replace(record_path + ".tmp", record_path)
    print(f"{out}: top1 {record['top1']:.4f} MACs {record['flops']:,} params "
          f"{record['params']:,}", flush=True)
    return record


# the record's name of each field of a per-step row: the "psap_step" event's key for it
STEP_FIELDS = {"step": "psap_step", "epoch": "epoch", "zeroed": "zeroed_filters",
               "filters": "filters", "protected": "protected",
               "newly_protected": "newly_protected", "regrew": "outcome_regrew",
               "protected_before": "outcome_protected_before", "kept": "outcome_kept",
               "still_protected": "outcome_still_protected", "won": "outcome_won",
               "competed": "outcome_competed"}


def pruning_log(out):
    """(per pruning step: zeroed, protected, regrew and the outcome of the previous step's
    protection; {regrown, survived} after the final step) from the run's metrics.jsonl."""
    if not os.path.exists(os.path.join(out, MetricsFile.NAME)):
        return [], None
    events = read_metrics(out, "psap_step")
    steps = []
    for event in events:
        steps.append({name: event[key] for name, key in STEP_FIELDS.items()})
    # the compact network keeps the final step's filters: its regrowth is the run's
    final = [e for e in events if e["final"]]
    regrowth = ({"regrown": final[-1]["regrowth_regrown"],
                 "survived": final[-1]["regrowth_survived"]} if final else None)
    return steps, regrowth


def time_networks(args, records):
    """Latency of the first seed's exports, one interleaved measurement per network."""
    latency, loads = {}, {}
    for net in args.nets:
        timed = [dict(r, label=cell_key(r)) for r in records
                 if r["net"] == net and r.get("mindir")]
        if not timed:
            continue
        reason, _ = wait_until_quiet(args.max_load, args.max_wait)
        loads[net] = list(os.getloadavg()) + [reason]
        latency.update(measure_latency(timed, {1: args.repeats_b1, 32: args.repeats_b32},
                                       args.warmup, args.rounds, args.seeds[0]))
    return latency, loads


def parse_args():
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="", help="required unless --report_only")
    parser.add_argument("--nets", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.4, 0.6])
    parser.add_argument("--starts", nargs="+", default=["scratch", "pretrained"],
                        choices=["scratch", "pretrained"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--methods", nargs="+",
                        default=["dense", "SFP", "FPGM", "PSAP-L2", "PSAP-BN"])
    parser.add_argument("--round_methods", nargs="*", default=["PSAP-L2", "PSAP-BN"],
                        help="methods also run with --psap_width_multiple --multiple")
    parser.add_argument("--multiple", type=int, default=8)
    parser.add_argument("--bn_score", default="bn_l2", help="filter_score of PSAP-BN")
    parser.add_argument("--stream_ratios", type=float, nargs=3, default=[0.5, 0.0, 0.25],
                        help="psap_stream_ratios of PSAP-BN-S (residual streams pruned too)")
    parser.add_argument("--train_samples", type=int, default=10000)
    parser.add_argument("--eval_samples", type=int, default=0, help="0 = the full test set")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pretrained_lr", type=float, default=0.01,
                        help="lr_max of the runs that start from the dense checkpoint")
    parser.add_argument("--repeats_b1", type=int, default=50)
    parser.add_argument("--repeats_b32", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max_load", type=float, default=1.5)
    parser.add_argument("--max_wait", type=float, default=40, help="minutes")
    parser.add_argument("--work_dir", default="")
    parser.add_argument("--name", default="psap_matrix", type=result_name, help="results file name")
    parser.add_argument("--keep_committed", default="",
                        help="results name whose runs of this command are taken as they are "
                             "instead of trained again (marked committed in the report)")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite the report and its plot from the stored results JSON (no runs)")
    args = parser.parse_args()
    if not args.data_path and not args.report_only:
        parser.error("--data_path is required (unless --report_only)")
    for method in args.methods + args.round_methods:
        try:
            method_overrides(method, args.bn_score, args.stream_ratios)
        except ValueError as err:
            parser.error(str(err))
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(ROOT, "output", "bench_psap_matrix"))
    if not args.report_only:
        check_recipes(args, parser)
    return args


def check_recipes(args, parser):
    """Every run's train.py settings, checked before the first run starts (a bad --bn_score or
    --stream_ratios would otherwise surface hours later, in a log)."""
    for s in settings(args):
        cmd, _ = train_command(args, dict(s, start="scratch"), os.path.join(args.work_dir, "x"))
        try:
            parse_recipe(cmd[2:])
        except ConfigError as err:
            parser.error(f"{label_of(s['method'], s['multiple'])} on {s['net']}: {err}")


def command_line(args):
    parts = ["python -m benchmarks.psap_benchmark --data_path DIR"]
    for key in ("nets", "cuts", "starts", "seeds", "methods", "round_methods"):
        parts.append(f"--{key} " + " ".join(map(str, getattr(args, key))))
    for key in ("multiple", "bn_score", "train_samples", "eval_samples", "epochs",
                "pretrained_lr"):
        parts.append(f"--{key} {getattr(args, key)}")
    if any(m.endswith(("-S", "-SU")) for m in args.methods):
        parts.append("--stream_ratios " + " ".join(map(str, args.stream_ratios)))
    if args.keep_committed:
        parts.append(f"--keep_committed {args.keep_committed}")
    return " ".join(parts)


def main():
    args = parse_args()
    results = os.path.join(ROOT, "benchmarks", "results")
    if args.report_only:
        report_only(results, args.name)
        return
    committed = committed_records(args)
    records = [run_or_committed(args, s, s["seed"] == args.seeds[0], committed)
               for s in settings(args)]
    latency, loads = time_networks(args, records)
    rows = aggregate(records, latency)
    png = os.path.join(results, f"{args.name}.png")
    os.makedirs(results, exist_ok=True)
    plot(rows, args.nets, args.starts, png)
    data = {"machine": machine_info(), "command": command_line(args),
            "args": dict(vars(args), data_path="DIR", work_dir=os.path.relpath(args.work_dir, ROOT)),
            "load_before_timing": loads, "png": os.path.basename(png), "rows": rows,
            "runs": records}
    write_results(args.name, data, markdown(data))


if __name__ == "__main__":
    main_guard(main)
