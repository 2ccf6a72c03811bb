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

from kt_transfer import config_files, grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def test_cells_put_bases_first_and_mirror_for_b_to_a():
    config = config_files.load("tiny").grid
    config.ns = (1, 2)
    names = [c.run_name for c in grid.cells(config)]
    assert names == ["baseA", "baseB", "B1B", "B1B+", "A1B", "A1B+", "R1B",
                     "B2B", "B2B+", "A2B", "A2B+", "R2B"]
    config.direction = "BtoA"
    assert [c.run_name for c in grid.cells(config)][2:7] == ["A1A", "A1A+", "B1A", "B1A+", "R1A"]
    config.direction = "sideways"
    with pytest.raises(ValueError, match="grid.direction"):
        grid.cells(config)


def _worker(args, log_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "kt_transfer.main", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


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
def test_two_workers_run_every_cell_once_and_a_killed_worker_resumes(tmp_path, data_cache):
    args = [f"--config={TINY}", "--mode=grid", "--config.grid.ns=(1, 2)",
            f"--workdir={tmp_path / 'wd'}", f"--config.dataset.data_dir={data_cache}",
            "--config.grid.claim_timeout_s=30"]
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log", tmp_path / "worker0b.log"]
    first = _worker(args, logs[0])
    second = _worker(args, logs[1])
    # Kill the first worker in the middle of a transfer cell (after the bases).
    text = _wait_for(logs[0], r"Training [ABR][12]B\+? ", first)
    killed_cell = re.findall(r"Training ([ABR][12]B\+?) ", text)[-1]
    first.send_signal(signal.SIGKILL)
    first.wait()
    restarted = _worker(args, logs[2])
    for proc, log in ((second, logs[1]), (restarted, logs[2])):
        assert proc.wait(timeout=600) == 0, open(log).read()[-3000:]

    outputs = [open(p).read() for p in logs]
    trained = collections.Counter(
        name for out in outputs for name in re.findall(r"^Training (\S+) on half", out, re.M))
    cells = [c.run_name for c in grid.cells(config_files.load("tiny").grid)
             if c.n in (0, 1, 2)]
    assert set(trained) == set(cells)
    # Every cell trained once; the killed one twice (killed, then resumed to its end).
    assert trained == collections.Counter(cells) + collections.Counter([killed_cell])
    assert any(re.search(rf"grid: {re.escape(killed_cell)} finished", o) for o in outputs[1:])
    assert "grid: 12/12 done" in outputs[1] + outputs[2]
    exp_dirs = [os.path.join(root, d) for root, dirs, _ in os.walk(tmp_path / "wd")
                for d in dirs if os.path.exists(os.path.join(root, d, "results.png"))]
    assert len(exp_dirs) == 1
    table = open(os.path.join(exp_dirs[0], "results.csv")).read().splitlines()
    assert len(table) == 1 + 12 and all(",finished," in row for row in table[1:])
    assert not [n for n in os.listdir(os.path.join(exp_dirs[0], grid.CLAIMS_DIR))]
    # Each cell records its training wall time; the grid reports their sum at the end.
    seconds = [json.load(open(os.path.join(exp_dirs[0], c, "metrics.json")))["seconds"]
               for c in cells]
    assert all(s > 0 for s in seconds)
    assert re.search(r"grid: this worker ran \d+ cell\(s\) in .*; the grid's cells trained "
                     r"for .* in all", outputs[1] + outputs[2])
