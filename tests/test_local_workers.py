"""Several pinned grid workers on one machine: shares of the cores, and a real grid run
by worker processes the CLI starts itself."""

import collections
import glob
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest
from conftest import TINY, subprocess_env

from kt_transfer.runs import local_workers


def test_cores_are_shared_out_contiguously_and_evenly():
    assert local_workers.cpu_shares(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert local_workers.cpu_shares(3, [4, 5, 6]) == [[4], [5], [6]]


def test_how_many_workers(monkeypatch):
    monkeypatch.delenv(local_workers.WORKER_ENV, raising=False)
    grid = ml_collections.ConfigDict({"workers_per_machine": 0, "cores_per_worker": 1})
    assert local_workers.workers_for(grid, has_gpus=False, cpus=range(8)) == 8
    grid.cores_per_worker = 3
    assert local_workers.workers_for(grid, has_gpus=False, cpus=range(8)) == 2
    grid.workers_per_machine = 16
    assert local_workers.workers_for(grid, has_gpus=False, cpus=range(8)) == 8  # <= cores
    assert local_workers.workers_for(grid, has_gpus=True, cpus=range(8)) == 1
    monkeypatch.setenv(local_workers.WORKER_ENV, "0/2")  # a worker never starts workers
    assert local_workers.workers_for(grid, has_gpus=False, cpus=range(8)) == 1


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_the_cli_runs_the_grid_in_pinned_workers_each_cell_once(tmp_path, data_cache):
    """On a seeded replicate (random0.s1: random0's halves, train.seed + 1)."""
    args = [
        sys.executable,
        "-m",
        "kt_transfer.main",
        f"--config={TINY}",
        "--mode=grid",
        "--config.grid.ns=(1,)",
        "--config.grid.treatments=('AnB', 'BnB')",
        "--config.grid.splits=('random0.s1',)",
        "--config.grid.workers_per_machine=2",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.dataset.data_dir={data_cache}",
    ]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    shares = local_workers.cpu_shares(2)
    for i, share in enumerate(shares):  # each worker really ran on its own cores
        assert f"[worker {i}/2] grid: pinned to cores {','.join(map(str, share))}" in out
    trained = collections.Counter(re.findall(r"^\[worker \d/2\] grid: (\S+) finished", out, re.M))
    assert trained == collections.Counter(
        ["random0.s1/baseA", "random0.s1/baseB", "random0.s1/A1B", "random0.s1/B1B"]
    )
    seeds = {
        json.load(open(path))["seed"]
        for path in glob.glob(
            str(tmp_path / "wd" / "*" / "random0.s1" / "*" / "*" / "metrics.json")
        )
    }
    assert seeds == {1}  # tiny's train.seed 0, + 1
    workers_used = set(re.findall(r"^\[worker (\d)/2\] grid: \S+ finished", out, re.M))
    assert workers_used == {"0", "1"}  # the two bases, at least, ran side by side
    # The parent summarizes once every worker has ended.
    assert re.search(r"^grid: summary: 4 of 4 cells finished", out, re.M)
