"""Grid throughput: cells per hour with 1 worker process on all cores against several
pinned workers per machine (local_workers.py), on the same machine, in one run.

    python tools/bench_grid_workers.py [--workers=1,2] [--ns=1,2] [--steps=0] \
        [-- --config.model.width=0.25 ...]

Each setting runs the same small grid (one split, A -> B, both bases and AnB, BnB for
each n) in a fresh workdir through the CLI, as a user would, and is timed from start to
exit (start-up, base loading, validation, export included). The embedded dataset is
generated before the first timing. Arguments after `--` go to every grid run.
"""

import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_list("workers", ["1", "2"], "workers_per_machine settings to compare")
flags.DEFINE_list("ns", ["1", "2"], "n values of the small grid")
flags.DEFINE_integer("steps", 0, "total_steps per cell (0: the config's)")
FLAGS = flags.FLAGS


def _grid_args(workdir, workers):
    args = [
        sys.executable,
        "-m",
        "kt_transfer.main",
        "--mode=grid",
        f"--workdir={workdir}",
        "--config.grid.splits=('random0',)",
        "--config.grid.directions=('AtoB',)",
        f"--config.grid.ns=({','.join(FLAGS.ns)},)",
        "--config.grid.treatments=('AnB', 'BnB')",
        f"--config.grid.workers_per_machine={workers}",
        "--config.verbose=0",
    ]
    if FLAGS.steps:
        args.append(f"--config.train.total_steps={FLAGS.steps}")
    return args


def main(argv):
    extra = argv[1:]
    cells = 2 + 2 * len(FLAGS.ns)
    root = tempfile.mkdtemp(prefix="bench_grid_workers_")
    # Untimed: generates the embedded dataset (and warms the file cache).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kt_transfer.main",
            "--mode=baseA",
            f"--workdir={os.path.join(root, 'warmup')}",
            "--config.verbose=0",
            "--config.train.total_steps=10",
            "--config.train.steps_per_epoch=10",
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    results = {}
    for workers in FLAGS.workers:
        workdir = os.path.join(root, f"w{workers}")
        started = time.monotonic()
        done = subprocess.run(_grid_args(workdir, workers) + extra, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode:
            sys.exit(
                f"the {workers}-worker grid failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        results[workers] = seconds
        print(
            f"{workers} worker(s): {cells} cells in {seconds:.0f} s = "
            f"{cells * 3600 / seconds:.1f} cells/hour",
            flush=True,
        )
    first = FLAGS.workers[0]
    for workers, seconds in results.items():
        print(f"{workers} worker(s) vs {first}: x{results[first] / seconds:.2f} cells/hour")
    print(f"({os.cpu_count()} CPUs; workdirs under {root})")


if __name__ == "__main__":
    app.run(main)
