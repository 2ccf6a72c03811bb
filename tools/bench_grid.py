"""Grid throughput: cells per hour of a fixed grid, where each cell's time goes, and each
cell's top-1, for comparing two versions of the code on the same machine.

    python tools/bench_grid.py --out=/tmp/new.json                  # this checkout
    python tools/bench_grid.py --code=/tmp/old --out=/tmp/old.json  # another checkout
    python tools/bench_grid.py --compare=/tmp/old.json,/tmp/new.json

The grid is random0 and its seeded replicate random0.s1 (same halves, other seeds), A -> B,
both bases and every treatment at n = 1 and 4: 24 cells. It runs through the CLI in a
fresh workdir, as a user would, timed from start to exit (start-up, base loading,
validation, export included). The embedded dataset is generated before the timing.

The two replicates give the run-to-run spread of a cell's top-1 within one version: the
same network trained again with other seeds. --compare prints cells/hour of both, the
ratio, the mean of every timing phase per cell, and the top-1 difference between the
versions cell by cell against that spread.
"""

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("code", "", "checkout whose kt_transfer runs (default: this one)")
flags.DEFINE_list("splits", ["random0", "random0.s1"], "grid.splits")
flags.DEFINE_list("ns", ["1", "4"], "grid.ns")
flags.DEFINE_string("out", "", "write the figures here as JSON (for --compare)")
flags.DEFINE_list("compare", [], "two JSON files written by --out: old,new")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code():
    return os.path.abspath(FLAGS.code or REPO)


def _environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = _code()  # and each run starts in it: `-m` puts the cwd first
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _cli(*args):
    return [sys.executable, "-m", "kt_transfer.main", *args]


def run(extra):
    root = tempfile.mkdtemp(prefix="bench_grid_")
    env = _environment()
    subprocess.run(  # untimed: generates the embedded dataset, warms the file cache
        _cli(
            "--mode=baseA",
            f"--workdir={os.path.join(root, 'warmup')}",
            "--config.verbose=0",
            "--config.train.total_steps=10",
            "--config.train.steps_per_epoch=10",
            *extra,
        ),
        check=True,
        capture_output=True,
        env=env,
        cwd=_code(),
    )
    workdir = os.path.join(root, "grid")
    args = _cli(
        "--mode=grid",
        f"--workdir={workdir}",
        f"--config.grid.splits=({','.join(repr(s) for s in FLAGS.splits)},)",
        "--config.grid.directions=('AtoB',)",
        f"--config.grid.ns=({','.join(FLAGS.ns)},)",
        "--config.verbose=0",
        *extra,
    )
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=_code())
    seconds = time.monotonic() - started
    if done.returncode:
        sys.exit(f"the grid failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    cells = {}
    for path in glob.glob(os.path.join(workdir, "**", "metrics.json"), recursive=True):
        with open(path) as f:
            metrics = json.load(f)
        run = os.path.dirname(path)
        split = os.path.basename(os.path.dirname(os.path.dirname(run)))
        name = os.path.basename(run)
        cells[f"{split}/{name}"] = {
            "top1": metrics.get("top1"),
            "timings": metrics.get("timings", {}),
            "seconds": metrics.get("seconds"),
        }
    return {"seconds": seconds, "cells": cells, "cpus": os.cpu_count(), "workdir": workdir}


def _replicate_pairs(cells):
    """{cell name without split: (top-1 of random0, of random0.s1)} where both exist."""
    by_name = {}
    for key, cell in cells.items():
        split, name = key.split("/", 1)
        by_name.setdefault(name, {})[split.split(".")[0] + ("s" if ".s" in split else "")] = cell
    return {
        name: (pair["random0"]["top1"], pair["random0s"]["top1"])
        for name, pair in by_name.items()
        if "random0" in pair and "random0s" in pair
    }


def _phases(cells):
    names = sorted({p for c in cells.values() for p in c["timings"]})
    return {p: statistics.mean(c["timings"].get(p, 0.0) for c in cells.values()) for p in names}


def summarize(result, label):
    cells = result["cells"]
    print(
        f"{label}: {len(cells)} cells in {result['seconds']:.0f} s = "
        f"{len(cells) * 3600 / result['seconds']:.1f} cells/hour ({result['cpus']} CPUs)"
    )
    print("  mean seconds a cell: " + ", ".join(f"{k} {v:.2f}" for k, v in _phases(cells).items()))
    pairs = _replicate_pairs(cells)
    if pairs:
        diffs = [a - b for a, b in pairs.values()]
        print(
            f"  run-to-run spread (random0 - random0.s1, {len(diffs)} cells): "
            f"sd {statistics.stdev(diffs):.4f}, mean |diff| "
            f"{statistics.mean(abs(d) for d in diffs):.4f}"
        )


def compare(old, new):
    summarize(old, "old")
    summarize(new, "new")
    rate = lambda r: len(r["cells"]) / r["seconds"]  # noqa: E731
    print(f"new / old: x{rate(new) / rate(old):.2f} cells/hour")
    common = sorted(set(old["cells"]) & set(new["cells"]))
    diffs = [new["cells"][c]["top1"] - old["cells"][c]["top1"] for c in common]
    spread = [a - b for a, b in _replicate_pairs(old["cells"]).values()]
    spread += [a - b for a, b in _replicate_pairs(new["cells"]).values()]
    print(
        f"top-1 new - old over {len(common)} cells: mean {statistics.mean(diffs):+.4f}, "
        f"sd {statistics.stdev(diffs):.4f}; run-to-run (seed replicates, both versions): "
        f"sd {statistics.stdev(spread):.4f}, mean {statistics.mean(spread):+.4f}"
    )
    for c in common:
        print(f"  {c:24s} old {old['cells'][c]['top1']:.4f}  new {new['cells'][c]['top1']:.4f}")


def main(argv):
    if FLAGS.compare:
        old, new = (json.load(open(path)) for path in FLAGS.compare)
        compare(old, new)
        return
    result = run(argv[1:])
    summarize(result, FLAGS.code or "this checkout")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
