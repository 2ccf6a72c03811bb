"""The grid on a real two-node Ray cluster, one node killed in the middle of a cell.

Ray registers a node under the machine's own network address even when told to bind to
loopback, so the cluster runs in a network namespace of its own (`unshare -n`, loopback
up), where 127.0.0.1 is the only address, and in a PID namespace of its own, so that
every Ray process ends with the test."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import TINY, subprocess_env

SCENARIO = r"""
import glob, json, os, re, signal, subprocess, sys, time

tmp, data_dir, tiny, ray_tmp = sys.argv[1:5]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
ray = os.path.join(os.path.dirname(sys.executable), "ray")
env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
       "RAY_DEDUP_LOGS": "0"}
address = "127.0.0.1:6391"


def start(*args):
    done = subprocess.run([ray, "start", *args, f"--temp-dir={ray_tmp}"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


start("--head", "--port=6391", "--num-cpus=0")  # the head runs no cells
start(f"--address={address}", "--num-cpus=1")  # two one-CPU nodes
start(f"--address={address}", "--num-cpus=1")
log_path = os.path.join(tmp, "grid.log")
grid = subprocess.Popen(
    [sys.executable, "-m", "kt_transfer.main", f"--config={tiny}", "--mode=grid",
     "--config.grid.ns=(1,)", "--config.grid.splits=('random0',)",
     "--config.grid.treatments=('AnB', 'BnB')",
     "--config.grid.executor=ray", "--config.grid.cpus_per_cell=1",
     "--config.train.total_steps=40", "--config.train.steps_per_epoch=20",
     "--config.train.backup_every_steps=4",
     f"--workdir={tmp}/wd", f"--config.dataset.data_dir={data_dir}"],
    env={**env, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"},
    stdout=open(log_path, "w"), stderr=subprocess.STDOUT)

training = re.compile(r"pid=(\d+)\)\S* Training ([AB]1B\+?) on half .* -> (\S+)")
deadline = time.time() + 300
while True:  # a transfer cell in training on a worker node, with a backup
    assert time.time() < deadline and grid.poll() is None, open(log_path).read()[-3000:]
    match = training.search(open(log_path).read())
    if match and glob.glob(os.path.join(match.group(3), "checkpoints", "backup-*", "state.json")):
        break
    time.sleep(0.05)
worker = int(match.group(1))
raylet = int(open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[1])
assert "raylet" in open(f"/proc/{raylet}/cmdline").read()


def tree(pid):
    children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return [pid] + [p for child in children for p in tree(int(child))]


node = tree(raylet)
for pid in node:  # the whole node: its raylet, workers and agents
    os.kill(pid, signal.SIGKILL)
killed_at = time.time()
code = grid.wait(timeout=600)
print(json.dumps({"code": code, "killed_run": match.group(3), "killed_pids": len(node),
                  "after_kill_s": time.time() - killed_at, "log": open(log_path).read()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_the_grid_on_two_ray_nodes_survives_one_killed_in_the_middle_of_a_cell(
    tmp_path, data_cache
):
    pytest.importorskip("ray")
    ray_tmp = tempfile.mkdtemp(prefix="kt-ray-", dir="/tmp")  # Ray's socket paths: short
    try:
        result = subprocess.run(
            ["unshare", "-n", "-p", "-f", "--mount-proc", sys.executable, "-c", SCENARIO]
            + [str(tmp_path), data_cache, TINY, ray_tmp],
            capture_output=True,
            text=True,
            timeout=900,
            env=subprocess_env(),
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if result.returncode and "unshare failed" in result.stderr:
        pytest.skip(f"cannot make namespaces here: {result.stderr[:200]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    log = outcome["log"]
    assert outcome["code"] == 0, log[-4000:]
    assert "on Ray tasks on the cluster at 127.0.0.1:6391" in log
    assert "Ray's dashboard: http://127.0.0.1:8265" in log
    # Every cell has one finished run; the killed cell resumed from its backup.
    metrics = {
        os.path.dirname(path): json.load(open(path))
        for path in sorted(
            glob.glob(str(tmp_path / "wd" / "embedded" / "random*" / "*" / "*" / "metrics.json"))
        )
    }
    assert len(metrics) == 4 and all(m["status"] == "finished" for m in metrics.values())
    assert metrics[outcome["killed_run"]]["resumed_from_step"] > 0
    assert "grid: summary: 4 of 4 cells finished" in log
