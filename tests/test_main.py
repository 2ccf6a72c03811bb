"""The command line, end to end, in subprocesses (as a user runs it)."""

import glob
import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, TINY, run_cli, subprocess_env


@pytest.mark.slow
def test_transfer_run_trains_its_base_then_reuses_stored_results(tmp_path, data_cache):
    args = [
        f"--config={TINY}",
        "--mode=AnB",
        "--n=2",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.dataset.data_dir={data_cache}",
    ]
    first = run_cli(*args, cwd=str(tmp_path))  # any directory works
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training baseA first" in first.stdout
    assert "== A2B (AnB, n=2)" in first.stdout and "tensorboard --logdir" in first.stdout
    run_dirs = {
        os.path.basename(p): p for p in glob.glob(str(tmp_path / "wd" / "*" / "*" / "*" / "*"))
    }
    assert set(run_dirs) == {"baseA", "A2B"}
    for run in run_dirs.values():
        for name in ("config.json", "metrics.json", "model.keras", "logs", "checkpoints"):
            assert os.path.exists(os.path.join(run, name)), (run, name)
    metrics = json.load(open(os.path.join(run_dirs["A2B"], "metrics.json")))
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and metrics["steps"] == 4
    assert json.load(open(os.path.join(run_dirs["A2B"], "config.json")))["n"] == 2
    # The base to compare with, as the user's own command with only --mode changed.
    kept = " ".join(shlex.quote(a) for a in args if not a.startswith(("--mode", "--n")))
    suggested = f"python -m kt_transfer.main {kept} --mode=baseB"
    assert f"baseB (for comparison) is not trained yet: {suggested}" in first.stdout

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stdout and "Epoch" not in again.stdout
    assert f"top-1 {metrics['top1']:.4f}" in again.stdout


def test_the_suggested_command_is_the_user_s_with_another_mode():
    from kt_transfer.analysis import summary

    argv = ["--config=configs/vit.py", "--mode", "AnB", "--n=2", "--workdir=my dir"]
    assert summary.same_command(argv, "baseB") == (
        "python -m kt_transfer.main --config=configs/vit.py '--workdir=my dir' --mode=baseB"
    )


# How each kind of bad input reaches a user of the command line (a config value, an unknown
# key, a missing folder, a bad --mode or --n), in a subprocess as a user runs it.
@pytest.mark.slow
@pytest.mark.parametrize(
    "flags,message",
    [
        (["--mode=grid", "--config.model.input_size=50"], "--config.model.input_size=50"),
        (["--mode=baseA", "--config.train.learning_rate=0.1"], "learning_rate"),
        (
            [
                "--mode=baseA",
                "--config.dataset.name=folder",
                "--config.dataset.data_dir=/no/such/dir",
            ],
            "--config.dataset.data_dir",
        ),
        (["--mode=XnY", "--n=3"], "unknown --mode"),
        (["--mode=AnB", "--n=8"], "--n between 1 and 7"),
        (["--mode=grid", "--config.grid.splits=('random0', 'halves')"], "--config.grid.splits"),
    ],
)
def test_bad_flags_fail_at_once_with_the_fix(flags, message, tmp_path):
    """Checked before any work: no dataset generated, nothing under the workdir."""
    import time

    started = time.monotonic()
    result = run_cli(
        f"--config={TINY}",
        f"--workdir={tmp_path}/wd",
        f"--config.dataset.data_dir={tmp_path}/data",
        *flags,
    )
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    assert message in result.stderr and "error: " in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not os.listdir(tmp_path)  # nothing was started: no workdir, no data dir


@pytest.mark.slow
def test_every_bad_value_is_named_at_once(tmp_path):
    result = run_cli(
        f"--config={TINY}",
        f"--workdir={tmp_path}/wd",
        "--mode=grid",
        "--config.model.input_size=50",
        "--config.train.precision=fp8",
        "--config.model.init=xavier",
        "--config.dataset.mean=median",
    )
    assert result.returncode != 0
    for key in ("model.input_size", "train.precision", "model.init", "dataset.mean"):
        assert f"--config.{key}=" in result.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_the_main_job_prints_kt_transfers_lines_not_tensorflows(tmp_path, data_cache):
    """The first screen is kt_transfer's own lines and Keras' progress; TensorFlow's
    start-up and SavedModel-export INFO lines only with --verbosity=1."""
    args = [f"--config={TINY}", "--mode=baseA", f"--config.dataset.data_dir={data_cache}"]
    quiet = run_cli(*args, f"--workdir={tmp_path / 'a'}", cwd=str(tmp_path))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    for noise in (
        "oneDNN",
        "cuda",
        "cpu_feature_guard",
        "signature_serialization",
        "Writing fingerprint",
        "absl::InitializeLog",
    ):
        assert noise not in output, output[:3000]
    assert "Training baseA" in quiet.stdout and "== baseA" in quiet.stdout
    verbose = run_cli(*args, f"--workdir={tmp_path / 'b'}", "--verbosity=1", cwd=str(tmp_path))
    assert verbose.returncode == 0
    assert "Writing fingerprint" in verbose.stdout + verbose.stderr  # the export's INFO lines


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_backup_and_finishes_the_planned_steps(tmp_path, data_cache):
    import signal
    import time

    args = [
        sys.executable,
        "-m",
        "kt_transfer.main",
        f"--config={TINY}",
        "--mode=baseB",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.dataset.data_dir={data_cache}",
        "--config.train.total_steps=300",
        "--config.train.steps_per_epoch=100",
        "--config.train.backup_every_steps=7",
    ]
    env = subprocess_env()
    first = subprocess.Popen(
        args, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    backups = []
    while not backups and time.time() < deadline and first.poll() is None:
        backups = glob.glob(str(tmp_path / "wd" / "**" / "backup-*" / "state.json"), recursive=True)
        time.sleep(0.05)
    assert backups and first.poll() is None, "the run ended before its first backup"
    time.sleep(1.0)  # somewhere mid-epoch, past the first backup
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not glob.glob(str(tmp_path / "wd" / "**" / "metrics.json"), recursive=True)
    before_kill = json.load(
        open(glob.glob(str(tmp_path / "wd" / "**" / "backup-*" / "state.json"), recursive=True)[-1])
    )

    second = subprocess.run(
        args, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = [
        line for line in second.stdout.splitlines() if line.startswith("Resuming from the backup")
    ]
    assert resumed, second.stdout[-2000:]
    step = int(resumed[0].split("step ")[1].split()[0])
    assert 0 < step < 300 and (step % 7 == 0 or step % 100 == 0)  # a backup point
    metrics = json.load(
        open(glob.glob(str(tmp_path / "wd" / "**" / "metrics.json"), recursive=True)[0])
    )
    assert metrics["status"] == "finished" and metrics["steps"] == 300
    # The reported wall time is the whole run's: the killed process's part is kept.
    assert metrics["resumed_from_step"] == step
    assert metrics["seconds"] > before_kill["seconds"] > 0


@pytest.mark.slow
def test_base_model_flag_is_checked_before_any_work(tmp_path):
    result = run_cli(
        "--mode=AnB", "--n=2", f"--base_model={tmp_path}/nothing.keras", f"--workdir={tmp_path}/w"
    )
    assert result.returncode != 0 and "--base_model=" in result.stderr
    assert "SavedModel" in result.stderr and not (tmp_path / "w").exists()
    result = run_cli("--mode=baseB", f"--base_model={tmp_path}", f"--workdir={tmp_path}/w")
    assert result.returncode != 0 and "copies none" in result.stderr
    # The grid trains and copies its own bases: one --base_model for every cell is refused.
    (tmp_path / "base.keras").write_text("")
    result = run_cli(
        "--mode=grid", f"--base_model={tmp_path}/base.keras", f"--workdir={tmp_path}/w"
    )
    assert result.returncode != 0 and "--mode=grid trains its own bases" in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_grid_with_a_multi_worker_strategy_is_refused_up_front(tmp_path):
    result = run_cli(
        "--mode=grid", "--config.distribute.strategy=multi_worker", f"--workdir={tmp_path}/w"
    )
    assert result.returncode != 0 and "whole runs over its workers" in result.stderr
    assert not (tmp_path / "w").exists()


# Faults (issue 22): what a user's mistake or a broken machine looks like on the command
# line: one `error:` line naming the file or value and the fix, never a traceback.


def _one_error_line(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_a_missing_or_broken_config_file_is_one_error_line(tmp_path):
    line = _one_error_line(run_cli(f"--config={tmp_path}/nope.py", "--mode=baseA"))
    assert f"--config={tmp_path}/nope.py: no such file" in line
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    line = _one_error_line(run_cli(f"--config={tmp_path}/broken.py", "--mode=baseA"))
    assert "broken.py could not be loaded (SyntaxError" in line


@pytest.mark.slow
def test_a_lambda_layer_base_is_refused_in_one_line(tmp_path, data_cache):
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x + 1)(inputs)).save(
        tmp_path / "lambda.keras"
    )
    result = run_cli(
        f"--config={TINY}",
        "--mode=AnB",
        "--n=2",
        f"--workdir={tmp_path}/wd",
        f"--config.dataset.data_dir={data_cache}",
        f"--base_model={tmp_path}/lambda.keras",
    )
    line = _one_error_line(result)
    assert f"--base_model='{tmp_path}/lambda.keras' holds a Lambda layer" in line


@pytest.mark.slow
def test_a_folder_of_git_lfs_pointers_is_refused_before_training(tmp_path, data_cache):
    from kt_transfer.data import embedded

    spec = embedded.EmbeddedSpec(num_classes=12, train_per_class=10, val_per_class=4, image_size=72)
    root = tmp_path / "images"
    import shutil

    shutil.copytree(embedded.ensure_dataset(spec, cache_dir=data_cache, log=lambda *_: None), root)
    for path in root.glob("train/*/*"):
        path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    result = run_cli(
        f"--config={TINY}",
        "--mode=baseA",
        f"--workdir={tmp_path}/wd",
        "--config.dataset.name=folder",
        f"--config.dataset.data_dir={root}",
    )
    line = _one_error_line(result)
    assert "none of the 60 train images" in line and "git-lfs pointer" in line
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_and_the_rerun_loses_nothing(
    tmp_path, data_cache, small_filesystem
):
    """A real small filesystem: the run stops at a backup that does not fit, with the
    path and the space; once there is room, the same command finishes the run from its
    last backup, every evaluation kept."""
    args = [
        f"--config={TINY}",
        "--mode=baseB",
        f"--config.dataset.data_dir={data_cache}",
        "--config.train.total_steps=6",
        "--config.train.backup_every_steps=1",
    ]
    disk = str(tmp_path / "disk")
    with small_filesystem(disk, "2m"):
        full = run_cli(*args, f"--workdir={disk}/wd")
        line = _one_error_line(full)
        assert f"no space left on the device writing {disk}/wd/" in line
        assert "MB needed" in line and "run the same command again" in line
        leftovers = glob.glob(f"{disk}/**/.tmp-*", recursive=True)
        assert not leftovers and not glob.glob(f"{disk}/**/metrics.json", recursive=True)
        subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
        again = run_cli(*args, f"--workdir={disk}/wd")
        assert again.returncode == 0, again.stderr[-3000:]
        metrics = json.load(open(glob.glob(f"{disk}/**/metrics.json", recursive=True)[0]))
    assert metrics["resumed_from_step"] > 0 and metrics["steps"] == 6
    assert [e["step"] for e in metrics["evaluations"]] == [2, 4, 6]


@pytest.mark.slow
def test_plot_results_prints_no_tensorflow_start_up_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "plot_results.py"), f"--workdir={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for noise in ("cuda", "cuInit", "oneDNN", "absl::InitializeLog"):
        assert noise not in result.stderr, result.stderr[-2000:]
