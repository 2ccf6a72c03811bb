"""A grid's records without its weights: save them to carry a long grid to another
machine or session, restore them to resume it there, or report from them alone.

    python tools/grid_records.py save --workdir=workdir --to=docs/figure_grid/records
    python tools/grid_records.py restore --workdir=workdir --to=docs/figure_grid/records
    python -m kt_transfer.main --mode=grid --workdir=workdir ...   # resumes
    python tools/grid_records.py from-table --to=/tmp/old --table=docs/figure_grid/results.md
    python tools/plot_results.py --workdir=/tmp/old --paper   # today's analysis, old grid

A record is a run's metrics.json and config.json (about 12 kB), under the same
<dataset>/<split>/<experiment>/<run> path as in the workdir; the networks themselves
(about 5 MB each) stay behind. After a restore the grid skips every finished cell; a
transfer that still has to train and finds its base without weights trains the base
again first, to the same weights (a base's training is deterministic under one config:
the fingerprint in its log repeats), so the restored transfers stay paired with it.
Reports (--mode=grid's findings, tools/plot_results.py) need the records only; an older
grid whose results.md table is all that was kept becomes records again with from-table
(metrics.json with the table's columns only: no evaluations, no timings).
--config.grid.records_dir does save and restore as the grid runs (runs/records.py).
"""

import json
import os
import sys

from absl import app, flags

os.environ.setdefault("_KT_TRANSFER_NO_KERAS", "1")  # records are JSON: no Keras to load
from kt_transfer.runs.records import copy_records  # noqa: E402

flags.DEFINE_string("workdir", "workdir", "the grid's --workdir")
flags.DEFINE_string("to", "", "the records directory (e.g. docs/figure_grid/records)")
flags.DEFINE_string("table", "", "from-table: a results.md written by a grid's report")
FLAGS = flags.FLAGS


def records_from_table(table_path, dest_root):
    """Writes a record (metrics.json) per row of a results.md table; returns the count."""
    with open(table_path) as f:
        lines = [line.strip() for line in f if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    count = 0
    for line in lines[2:]:
        row = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        metrics = {"mode": row["mode"], "n": int(row["n"]), "status": row["status"]}
        for key in ("top1", "top5", "mean_highest_top1"):
            metrics[key] = float(row[key]) if row.get(key) else None
        if row.get("train_seconds"):
            metrics["seconds"] = float(row["train_seconds"])
        if row["status"] != "finished":
            metrics["reason"] = row.get("note", "")
        target = os.path.join(
            dest_root, row["dataset"], row["split"], row["experiment"], row["run"]
        )
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        count += 1
    return count


def main(argv):
    if len(argv) == 2 and argv[1] == "from-table" and FLAGS.table and FLAGS.to:
        if not os.path.exists(FLAGS.table):
            sys.exit(f"error: --table={FLAGS.table} does not exist")
        print(f"wrote {records_from_table(FLAGS.table, FLAGS.to)} records to {FLAGS.to}")
        return
    if len(argv) != 2 or argv[1] not in ("save", "restore") or not FLAGS.to:
        sys.exit(
            "error: usage: grid_records.py save|restore --workdir=DIR --to=RECORDS_DIR, "
            "or from-table --table=results.md --to=DIR"
        )
    if argv[1] == "save":
        if not os.path.isdir(FLAGS.workdir):
            sys.exit(f"error: --workdir={FLAGS.workdir} does not exist: nothing to save")
        copied, _ = copy_records(FLAGS.workdir, FLAGS.to, overwrite=True)
        print(f"saved the records of {copied} runs from {FLAGS.workdir} to {FLAGS.to}")
    else:
        if not os.path.isdir(FLAGS.to):
            sys.exit(f"error: --to={FLAGS.to} does not exist: no records to restore")
        copied, skipped = copy_records(FLAGS.to, FLAGS.workdir, overwrite=False)
        print(
            f"restored the records of {copied} runs to {FLAGS.workdir} "
            f"({skipped} already there, kept)"
        )


if __name__ == "__main__":
    app.run(main)
