"""The reference's layerwise_ranks.csv, from a run's metrics.jsonl: one row per RPG mask update,
one column per conv layer, holding the k the rank loss kept (empty: the layer was not in the
loss, e.g. below ``sparsity_thres``), or with ``--value rank`` the numerical rank recorded with
``record_layer_ranks: true``.

    python -m benchmarks.layer_ranks_csv OUTPUT_DIR [--value k|rank] [--out CSV] [--overwrite true]

Default output OUTPUT_DIR/layerwise_ranks.csv (the reference's name). Bad input (no folder, no
metrics.jsonl, no layer_ranks events, no recorded rank, an existing CSV without --overwrite): one
error line, exit 2; the earlier CSV is left as it was.
"""
import csv
import io
import os
import sys

from benchmarks.plot_run import BadRun, load_events, write_reported
from src.cli import OneLineParser
from src.outputs import OutputExists, add_overwrite_option, refuse_existing, write_text_atomic


def layer_ranks_table(events, value="k"):
    """CSV text: columns update, step and one per layer (in the event's order), rows per update."""
    updates = [e for e in events if e.get("event") == "layer_ranks"]
    if not updates:
        raise BadRun("no layer_ranks events (they come from prune_method rpg with lamb > 0 or "
                     "record_layer_ranks: true)")
    if value == "rank" and not all("rank" in row for e in updates for row in e["layers"]):
        raise BadRun("the run did not record numerical ranks (train with record_layer_ranks: true)")
    names = [row["name"] for row in updates[0]["layers"]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["update", "step"] + names)
    for event in updates:
        cells = {row["name"]: row.get(value) for row in event["layers"]}
        writer.writerow([event["update"], event["step"]] +
                        ["" if cells.get(n) is None else cells[n] for n in names])
    return out.getvalue()


def main(argv=None):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="a train.py output folder (with metrics.jsonl)")
    parser.add_argument("--value", choices=["k", "rank"], default="k")
    parser.add_argument("--out", help="the CSV to write (default OUTPUT_DIR/layerwise_ranks.csv)")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    out = args.out or os.path.join(args.output_dir, "layerwise_ranks.csv")
    try:
        refuse_existing(out, args.overwrite, "--out" if args.out else "")
        text = layer_ranks_table(load_events(args.output_dir), args.value)
    except (BadRun, OutputExists) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return write_reported(lambda: write_text_atomic(text, out, args.overwrite), out)


if __name__ == "__main__":
    sys.exit(main())
