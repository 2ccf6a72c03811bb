"""The grid: cells, worker processes sharing one grid, cells that cannot run, and the
end-of-grid summary."""

import collections
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


def _worker(args, log_path):
    env = subprocess_env(PYTHONUNBUFFERED="1")
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "kt_transfer.main", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path, pattern, proc, timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = open(path).read()
        if re.search(pattern, text):
            return text
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not seen in {path}")


@pytest.mark.slow
def test_two_workers_run_every_cell_of_two_splits_once_and_a_killed_worker_resumes(
    tmp_path, data_cache
):
    args = [
        f"--config={TINY}",
        "--mode=grid",
        "--config.grid.ns=(1,)",
        "--config.grid.splits=('random0', 'random1')",
        "--config.grid.treatments=('AnB', 'BnB', 'AnB+')",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.dataset.data_dir={data_cache}",
        "--config.grid.claim_timeout_s=30",
    ]
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log", tmp_path / "worker0b.log"]
    first = _worker(args, logs[0])
    second = _worker(args, logs[1])
    # Kill the first worker in the middle of a transfer cell (after the bases).
    training = r"(?m)^Training ([AB]1B\+?) on half .* -> \S+/(random\d)/\w+/\S+$"
    _wait_for(logs[0], training, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    restarted = _worker(args, logs[2])
    for proc, log in ((second, logs[1]), (restarted, logs[2])):
        assert proc.wait(timeout=600) == 0, open(log).read()[-3000:]

    outputs = [open(p).read() for p in logs]
    trained = collections.Counter(
        f"{split}/{name}"
        for out in outputs
        for name, split in re.findall(
            r"^Training (\S+) on half .* -> \S+/(random\d)/\w+/\S+$", out, re.M
        )
    )
    config = config_files.load("tiny").grid
    config.ns, config.treatments = (1,), ("AnB", "BnB", "AnB+")
    cells = [c.name for c in grid.cells(config, ("random0", "random1"))]
    assert len(cells) == 4 + 2 * 3 and set(trained) == set(cells)
    # Every cell trained once; those the killed worker was training (a pack trains
    # several) twice: killed, then resumed to their end by another worker.
    started_by_killed = {
        f"{split}/{name}"
        for name, split in re.findall(
            r"^Training (\S+) on half .* -> \S+/(random\d)/\w+/\S+$", outputs[0], re.M
        )
    }
    killed = started_by_killed - set(re.findall(r"^grid: (\S+) finished", outputs[0], re.M))
    assert killed and all("/" in c and "base" not in c for c in killed)
    assert trained == collections.Counter(cells) + collections.Counter(killed)
    for cell in killed:
        assert any(re.search(rf"grid: {re.escape(cell)} finished", o) for o in outputs[1:])
    assert "grid: 10/10 done" in outputs[1] + outputs[2]
    report = [
        os.path.join(root, d)
        for root, dirs, _ in os.walk(tmp_path / "wd")
        for d in dirs
        if d.startswith("grid-")
    ]
    assert len(report) == 1
    table = open(os.path.join(report[0], "results.csv")).read().splitlines()
    assert len(table) == 1 + 10 and all(",finished," in row for row in table[1:])
    for name in ("results.png", "replicates.md", "findings.md"):
        assert os.path.exists(os.path.join(report[0], name)), name
    summary = open(os.path.join(report[0], "replicates.csv")).read()
    assert "\nAnB,1,2," in summary and "\nbase,0,2," in summary  # one network per split
    exp_dir = os.path.join(
        os.path.dirname(report[0]), "random0", os.path.basename(report[0])[len("grid-") :]
    )
    assert not [n for n in os.listdir(os.path.join(exp_dir, grid.CLAIMS_DIR))]
    # Each cell records its training wall time; the grid reports their sum at the end.
    seconds = [
        json.load(open(os.path.join(exp_dir, c.split("/")[1], "metrics.json")))["seconds"]
        for c in cells
        if c.startswith("random0/")
    ]
    assert all(s > 0 for s in seconds)
    assert re.search(
        r"grid: this worker ran \d+ cell\(s\) in .*; the grid's cells trained "
        r"for .* in all",
        outputs[1] + outputs[2],
    )


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
        "--mode=grid",
        "--config.grid.ns=(1,)",
        "--config.grid.treatments=('AnB', 'BnB')",
        f"--workdir={config.workdir}",
        f"--config.dataset.data_dir={data_cache}",
        "--config.grid.claim_timeout_s=2",
    ]
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    base_a = experiment.run_dir(config, dataset, transfer.parse_treatment("baseA"))
    log = tmp_path / "worker.log"
    with experiment.run_lock(base_a):  # "another process" is training baseA
        worker = _worker(args, log)
        _wait_for(log, r"grid: random0/baseA is being trained by another worker; waiting", worker)
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
