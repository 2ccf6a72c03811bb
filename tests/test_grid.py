"""The grid: cells, the local executor's faults (a dead worker, a killed grid), cells
that cannot run, a cell another process holds, and the end-of-grid summary."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY, subprocess_env

from kt_transfer import config_files
from kt_transfer.runs import grid


def test_cells_put_bases_first_and_mirror_for_b_to_a():
    config = config_files.load("tiny").grid
    config.ns = (1, 2)
    names = [c.name for c in grid.cells(config)]
    assert names == [
        "random0/" + n
        for n in [
            "baseA",
            "baseB",
            "B1B",
            "B1B+",
            "A1B",
            "A1B+",
            "R1B",
            "B2B",
            "B2B+",
            "A2B",
            "A2B+",
            "R2B",
        ]
    ]
    config.directions = ("BtoA",)
    assert [c.treatment.run_name for c in grid.cells(config)][2:7] == [
        "A1A",
        "A1A+",
        "B1A",
        "B1A+",
        "R1A",
    ]
    config.directions = ("sideways",)
    with pytest.raises(ValueError, match="grid.directions"):
        grid.cells(config)


def test_replicated_cells_cover_every_split_and_direction_once():
    config = config_files.load("tiny").grid
    config.ns, config.treatments = (1, 2), ("BnB", "AnB")
    config.directions = ("AtoB", "BtoA")
    cells = grid.cells(config, ("random0", "random1"))
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 2 * 2 + 2 * 2 * 2 * 2
    # Every base (of both splits) comes before any transfer cell, which are ordered by n.
    assert names[:4] == ["random0/baseA", "random0/baseB", "random1/baseA", "random1/baseB"]
    assert [c.treatment.n for c in cells[4:]] == sorted(c.treatment.n for c in cells[4:])
    assert {"random1/B2A", "random1/A2A", "random0/A1B", "random0/B1B"} <= set(names)
    assert all(c.base_name == f"{c.split}/{c.treatment.base_mode}" for c in cells[4:])


def test_the_restart_control_is_one_cell_per_replicate_after_the_rest():
    config = config_files.load("tiny").grid
    config.ns, config.treatments = (1, 2), ("BnB+", "AnB+")
    config.directions, config.restart_control = ("AtoB", "BtoA"), True
    cells = grid.cells(config, ("random0", "all"))
    restart = [c.name for c in cells if c.treatment.n == 8]
    assert restart == ["random0/B8B+", "random0/A8A+"]  # none on "all": nothing transfers
    assert [c.name for c in cells[-2:]] == restart
    assert cells[-1].base_name == "random0/baseA"  # A8A+ copies its own half's base


def _grid(args, log_path, **env):
    """`--mode=grid ARGS` in the background, its output (workers' too) in log_path."""
    return subprocess.Popen(
        [sys.executable, "-m", "kt_transfer.main", "--mode=grid", *args],
        env=subprocess_env(PYTHONUNBUFFERED="1", **env),
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(path, pattern, proc, timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = open(path).read()
        match = re.search(pattern, text)
        if match:
            return match
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not seen in {path}")


def _wait_for_backup(run_dir, timeout_s=120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if glob.glob(os.path.join(run_dir, "checkpoints", "backup-*", "state.json")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no backup in {run_dir}")


def _worker_pid(grid_pid):
    """The local executor's worker: the grid process's child that runs spawn_main (not
    multiprocessing's resource tracker)."""
    for child in open(f"/proc/{grid_pid}/task/{grid_pid}/children").read().split():
        if "resource_tracker" not in open(f"/proc/{child}/cmdline").read():
            return int(child)
    raise AssertionError("the grid has no worker process")


def _training(n):
    """A transfer cell at n starting to train; group 1: its run directory."""
    return rf"(?m)^Training [AB]{n}B on half .* -> (\S+/random0/\w+/[AB]{n}B)$"


# Long enough to kill a transfer cell in the middle: 40 steps, a backup every 4.
KILLABLE = [
    "--config.train.total_steps=40",
    "--config.train.steps_per_epoch=20",
    "--config.train.backup_every_steps=4",
]


@pytest.mark.slow
def test_a_dead_worker_and_a_killed_grid_lose_no_finished_cell_and_resume_the_rest(
    tmp_path, data_cache
):
    """The local executor's two faults: its worker process killed in the middle of a
    pack (run again in a fresh worker, from the backups, in the same grid), then the grid
    process itself killed in the middle of the next pack (the next command resumes it)."""
    args = [
        f"--config={TINY}",
        "--config.grid.ns=(1, 2)",
        "--config.grid.treatments=('AnB', 'BnB')",
        # baseA alone (nothing else reads half A), then the packs baseB+A1B, B1B+B2B, A2B
        "--config.grid.pack_size=2",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.dataset.data_dir={data_cache}",
        *KILLABLE,
    ]
    logs = [tmp_path / "grid0.log", tmp_path / "grid1.log"]
    first = _grid(args, logs[0])
    # 1. The worker dies in the middle of the first pack.
    _wait_for_backup(_wait_for(logs[0], _training(1), first).group(1))
    os.kill(_worker_pid(first.pid), signal.SIGKILL)
    _wait_for(logs[0], r"grid: worker 1 died training random0/baseB\+A1B; running it again", first)
    _wait_for(logs[0], r"Resuming from the backup at step [1-9]\d* of 40", first)
    # 2. The grid process is killed in the middle of the second pack.
    _wait_for_backup(_wait_for(logs[0], _training(2), first).group(1))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    text0 = open(logs[0]).read()
    finished_first = set(re.findall(r"^grid: (\S+) finished", text0, re.M))
    resumed = _grid(args, logs[1])
    assert resumed.wait(timeout=600) == 0, open(logs[1]).read()[-3000:]
    text1 = open(logs[1]).read()

    config = config_files.load("tiny").grid
    config.ns, config.treatments = (1, 2), ("AnB", "BnB")
    cells = [c.name for c in grid.cells(config)]
    assert len(cells) == 6 and {"random0/baseB", "random0/A1B"} <= finished_first
    assert f"grid: 6 cells, {len(finished_first)} finished earlier" in text1
    # Nothing finished was trained again; every other cell finished in the second grid.
    finished_second = set(re.findall(r"^grid: (\S+) finished", text1, re.M))
    assert finished_first.isdisjoint(finished_second)
    assert finished_first | finished_second == set(cells)
    assert "Resuming from the backup" in text1  # the killed pack went on from its backups
    assert "grid [########################] 6/6 done, 0 running, 0 failed, 0 left" in text1
    report = [
        os.path.join(root, d)
        for root, dirs, _ in os.walk(tmp_path / "wd")
        for d in dirs
        if d.startswith("grid-")
    ]
    assert len(report) == 1
    table = open(os.path.join(report[0], "results.csv")).read().splitlines()
    assert len(table) == 1 + 6 and all(",finished," in row for row in table[1:])
    for name in ("results.png", "replicates.md", "findings.md"):
        assert os.path.exists(os.path.join(report[0], name)), name
    summary = open(os.path.join(report[0], "replicates.csv")).read()
    assert "\nAnB,2,1," in summary and "\nbase,0,1," in summary  # one network each
    # Each cell records its training wall time; the grid reports their sum at the end.
    metrics = [
        json.load(open(path))
        for path in glob.glob(
            str(tmp_path / "wd" / "embedded" / "random*" / "*" / "*" / "metrics.json")
        )
    ]
    assert len(metrics) == 6 and all(m["seconds"] > 0 for m in metrics)
    assert sum(m["resumed_from_step"] > 0 for m in metrics) >= 2  # a cell of each pack
    assert re.search(r"grid: \d+ cell\(s\) trained in .*; the grid's cells trained for", text1)


CANNOT_RUN = r"""
import sys
from kt_transfer import config_files
from kt_transfer.runs import grid
from kt_transfer.data import sources
config = config_files.load(sys.argv[1])
config.workdir, config.dataset.data_dir = sys.argv[2], sys.argv[3]
config.verbose = 0
config.grid.ns, config.grid.treatments = (1,), ("AnB", "BnB")
config.model.input_size = 50  # no network can be built: every base fails before training
dataset = sources.resolve_dataset(config, log=lambda *_: None)
try:
    grid.run_grid(config, dataset, poll_s=0.2)
except grid.GridIncompleteError as e:
    print("INCOMPLETE:", e)
    sys.exit(3)
"""


@pytest.mark.slow
def test_a_base_that_cannot_run_fails_its_cells_and_the_grid_ends(tmp_path, data_cache):
    """Called as a library (the CLI's validation would refuse this config), a grid whose
    bases cannot be built does not wait for ever: every cell is reported, exit non-zero."""
    result = subprocess.run(
        [sys.executable, "-c", CANNOT_RUN, TINY, str(tmp_path / "wd"), data_cache],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "grid: random0/baseA could not run" in out
    assert "grid: random0/baseB could not run" in out
    assert "grid: summary: 0 of 4 cells finished, 4 did not:" in out
    assert re.search(
        r"grid:   random0/A1B: could not run: its base baseA could not run \(.*at least 55", out
    )
    assert "INCOMPLETE: 4 of 4 grid cells did not finish" in out


@pytest.mark.slow
def test_a_cell_busy_in_another_process_is_waited_for_not_failed(tmp_path, data_cache):
    from kt_transfer.data import sources
    from kt_transfer.networks import transfer
    from kt_transfer.runs import experiment

    config = config_files.load(TINY)
    config.workdir, config.dataset.data_dir = str(tmp_path / "wd"), data_cache
    args = [
        f"--config={TINY}",
        "--config.grid.ns=(1,)",
        "--config.grid.treatments=('AnB', 'BnB')",
        f"--workdir={config.workdir}",
        f"--config.dataset.data_dir={data_cache}",
    ]
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    base_a = experiment.run_dir(config, dataset, transfer.parse_treatment("baseA"))
    log = tmp_path / "worker.log"
    with experiment.run_lock(base_a):  # "another process" is training baseA
        worker = _grid(args, log)
        _wait_for(log, r"grid: random0/baseA is being trained by another process; waiting", worker)
    assert worker.wait(timeout=300) == 0, open(log).read()[-3000:]
    text = open(log).read()
    assert "grid: summary: 4 of 4 cells finished" in text
    assert "could not run" not in text


def test_a_grid_over_other_splits_reports_apart_from_the_random_grid(tiny_config):
    from kt_transfer.data import sources

    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    random_only = os.path.basename(grid.report_dir(tiny_config, dataset))
    assert re.fullmatch(r"grid-[0-9a-f]{8}", random_only)
    tiny_config.grid.splits = ("random0", "natman", "all")
    assert os.path.basename(grid.report_dir(tiny_config, dataset)) == random_only + "-all-natman"


def test_the_progress_bar_counts_every_state_and_estimates_from_cell_times():
    # A resumed grid: two cells finished earlier in 60 s each, on two workers.
    progress = grid.Progress(total=10, slots=2, durations=[60.0, 60.0])
    line = progress.line(done=4, running=2, failed=1)
    assert line.startswith("grid [" + "#" * 12 + "." * 12 + "] 4/10 done, 2 running, ")
    # left 3 and half of the 2 running, 60 s each, over 2 workers: 120 s.
    assert line.endswith("1 failed, 3 left; about 2 min to go")
    assert "to go" not in grid.Progress(total=3, slots=1).line(done=0, running=1, failed=0)
    shown = []
    progress.show(4, 2, 1, shown.append)
    progress.show(4, 2, 1, shown.append)  # unchanged: not shown again
    progress.show(5, 1, 1, shown.append)
    assert len(shown) == 2 and "5/10 done" in shown[1]
