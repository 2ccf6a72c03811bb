"""The command line, end to end, in subprocesses (as a user runs it)."""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def run_cli(*args, cwd=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "kt_transfer.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_transfer_run_trains_its_base_then_reuses_stored_results(tmp_path, data_cache):
    args = [f"--config={TINY}", "--mode=AnB", "--n=2", f"--workdir={tmp_path / 'wd'}",
            f"--config.dataset.data_dir={data_cache}"]
    first = run_cli(*args, cwd=str(tmp_path))  # any directory works
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training baseA first" in first.stdout
    assert "== A2B (AnB, n=2)" in first.stdout and "tensorboard --logdir" in first.stdout
    run_dirs = {os.path.basename(p): p for p in glob.glob(str(tmp_path / "wd" / "*" / "*" / "*" / "*"))}
    assert set(run_dirs) == {"baseA", "A2B"}
    for run in run_dirs.values():
        for name in ("config.json", "metrics.json", "model.keras", "logs", "checkpoints"):
            assert os.path.exists(os.path.join(run, name)), (run, name)
    metrics = json.load(open(os.path.join(run_dirs["A2B"], "metrics.json")))
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and metrics["steps"] == 4
    assert json.load(open(os.path.join(run_dirs["A2B"], "config.json")))["n"] == 2

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stdout and "Epoch" not in again.stdout
    assert f"top-1 {metrics['top1']:.4f}" in again.stdout


@pytest.mark.parametrize("flags,message", [
    (["--mode=AnB", "--n=0"], "--n between 1 and 7"),
    (["--mode=AnB", "--n=8"], "--n between 1 and 7"),
    (["--mode=XnY", "--n=3"], "unknown --mode"),
    (["--mode=baseA", "--config.dataset.name=folder", "--config.dataset.data_dir=/no/such/dir"],
     "--config.dataset.data_dir"),
    (["--mode=baseA", "--config.train.learning_rate=0.1"], "learning_rate"),
    (["--mode=baseA", "--config.train.total_steps=5"], "--config.train.steps_per_epoch"),
])
def test_bad_flags_fail_at_once_with_the_fix(flags, message, tmp_path):
    result = run_cli(f"--config={TINY}", f"--workdir={tmp_path}", *flags)
    assert result.returncode != 0
    assert message in result.stderr
    assert not os.listdir(tmp_path)  # nothing was started


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_backup_and_finishes_the_planned_steps(tmp_path, data_cache):
    import signal
    import time
    args = [sys.executable, "-m", "kt_transfer.main", f"--config={TINY}", "--mode=baseB",
            f"--workdir={tmp_path / 'wd'}", f"--config.dataset.data_dir={data_cache}",
            "--config.train.total_steps=300", "--config.train.steps_per_epoch=100",
            "--config.train.backup_every_steps=7"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.Popen(args, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    backups = []
    while not backups and time.time() < deadline and first.poll() is None:
        backups = glob.glob(str(tmp_path / "wd" / "**" / "backup.weights.h5"), recursive=True)
        time.sleep(0.05)
    assert backups and first.poll() is None, "the run ended before its first backup"
    time.sleep(1.0)  # somewhere mid-epoch, past the first backup
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not glob.glob(str(tmp_path / "wd" / "**" / "metrics.json"), recursive=True)
    before_kill = json.load(open(backups[0].replace(".weights.h5", ".time.json")))

    second = subprocess.run(args, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = [l for l in second.stdout.splitlines() if l.startswith("Resuming from the backup")]
    assert resumed, second.stdout[-2000:]
    step = int(resumed[0].split("step ")[1].split()[0])
    assert 0 < step < 300 and (step % 7 == 0 or step % 100 == 0)  # a backup point
    metrics = json.load(open(glob.glob(str(tmp_path / "wd" / "**" / "metrics.json"),
                                       recursive=True)[0]))
    assert metrics["status"] == "finished" and metrics["steps"] == 300
    # The reported wall time is the whole run's: the killed process's part is kept.
    assert metrics["resumed_from_step"] == step
    assert metrics["seconds"] > before_kill["seconds"] > 0


def test_base_model_flag_is_checked_before_any_work(tmp_path):
    result = run_cli("--mode=AnB", "--n=2", f"--base_model={tmp_path}/nothing.keras",
                   f"--workdir={tmp_path}/w")
    assert result.returncode != 0 and "--base_model=" in result.stderr
    assert "SavedModel" in result.stderr and not (tmp_path / "w").exists()
    result = run_cli("--mode=baseB", f"--base_model={tmp_path}", f"--workdir={tmp_path}/w")
    assert result.returncode != 0 and "copies none" in result.stderr


def test_grid_with_a_multi_worker_strategy_is_refused_up_front(tmp_path):
    result = run_cli("--mode=grid", "--config.distribute.strategy=multi_worker",
                     f"--workdir={tmp_path}/w")
    assert result.returncode != 0 and "whole runs over its workers" in result.stderr
    assert not (tmp_path / "w").exists()
