"""The local executor and the grid lock: worker shares of the cores, a grid that needs
neither Ray nor a network, and a second grid process on the same workdir refused."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import TINY, subprocess_env

from kt_transfer.runs import executors, grid


def test_cores_are_shared_out_contiguously_and_evenly():
    assert executors.cpu_shares(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert executors.cpu_shares(3, [4, 5, 6]) == [[4], [5], [6]]


def test_one_local_worker_per_cpus_per_cell_cores():
    assert executors.local_worker_count(2, cpus=range(8)) == 4
    assert executors.local_worker_count(3, cpus=range(8)) == 2
    assert executors.local_worker_count(4, cpus=range(2)) == 1  # at least one
    assert executors.local_worker_count(0.5, cpus=range(2)) == 2  # at most one per core


def test_the_grid_lock_refuses_a_second_holder_until_the_first_ends(tmp_path):
    workdir = str(tmp_path / "wd")
    with grid.grid_lock(workdir):
        with pytest.raises(grid.GridBusyError) as refused:
            with grid.grid_lock(workdir):
                pass
        message = str(refused.value)
        assert f"another --mode=grid is running on --workdir={workdir}" in message
        assert f"pid {os.getpid()} on " in message  # who holds it
    with grid.grid_lock(workdir):  # released with its holder
        pass


@pytest.mark.slow
def test_a_second_grid_process_on_the_same_workdir_is_refused_at_once(tmp_path):
    workdir, data_dir = tmp_path / "wd", tmp_path / "data"
    with grid.grid_lock(str(workdir)):  # a grid is running there
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kt_transfer.main",
                f"--config={TINY}",
                "--mode=grid",
                f"--workdir={workdir}",
                f"--config.dataset.data_dir={data_dir}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=subprocess_env(),
        )
        seconds = time.monotonic() - started
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: another --mode=grid is running on --workdir={workdir}")
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # refused before the dataset was generated
    assert seconds < 60, seconds  # no waiting for the other grid (the start-up is ~5 s)


BLOCK_RAY = "raise ImportError('Ray is blocked in this test')\n"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_the_local_executor_needs_no_ray_and_no_network(tmp_path, data_cache):
    """The grid in a network namespace with no interface up (not even loopback), with
    `import ray` failing: it runs every cell."""
    blocked = tmp_path / "blocked"
    (blocked / "ray").mkdir(parents=True)
    (blocked / "ray" / "__init__.py").write_text(BLOCK_RAY)
    env = subprocess_env(PYTHONPATH=f"{blocked}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    probe = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            "-c",
            "import socket; socket.create_connection(('127.0.0.1', 9))",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if "Operation not permitted" in probe.stderr and "unshare" in probe.stderr:
        pytest.skip("unshare -n is not allowed here (needs root)")
    assert "Network is unreachable" in probe.stderr  # no network in there, not even lo
    no_ray = subprocess.run([sys.executable, "-c", "import ray"], capture_output=True, env=env)
    assert b"Ray is blocked in this test" in no_ray.stderr
    result = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            "-m",
            "kt_transfer.main",
            f"--config={TINY}",
            "--mode=grid",
            "--config.grid.ns=(1,)",
            "--config.grid.treatments=('AnB',)",
            f"--workdir={tmp_path / 'wd'}",
            f"--config.dataset.data_dir={data_cache}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on 1 local worker process(es)" in result.stdout
    assert "grid: summary: 3 of 3 cells finished" in result.stdout


def _closed_port():
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_is_probed_before_ray_is_asked_to_join_it():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        executors.check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")  # answers
        executors.check_ray_address(f"ray://127.0.0.1:{server.getsockname()[1]}")
    executors.check_ray_address("auto")  # Ray's own to find
    executors.check_ray_address(None)
    port = _closed_port()
    with pytest.raises(RuntimeError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port} \("):
        executors.check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match="is not HOST:PORT"):
        executors.check_ray_address("10.0.0.1")


def test_a_ray_head_that_never_answers_is_reported_within_the_timeout():
    # A listening socket with a full backlog drops further SYNs, as a firewalled or
    # powered-off head does: ray.init would retry for ~14 minutes.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = server.getsockname()
        fillers = []
        try:
            for _ in range(4):  # fill the backlog (its size is kernel-dependent)
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(address)
                fillers.append(filler)
            time.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(RuntimeError, match=r"no answer within 0.5 s"):
                executors.check_ray_address(f"127.0.0.1:{address[1]}", timeout_s=0.5)
            assert time.monotonic() - started < 3
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.slow
def test_a_grid_on_a_ray_address_nobody_answers_at_fails_in_seconds(tmp_path):
    pytest.importorskip("ray")
    data_dir = tmp_path / "data"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kt_transfer.main",
            f"--config={TINY}",
            "--mode=grid",
            f"--workdir={tmp_path / 'wd'}",
            f"--config.dataset.data_dir={data_dir}",
            "--config.grid.executor=ray",
            f"--config.grid.ray_address=127.0.0.1:{_closed_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    seconds = time.monotonic() - started
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: cannot reach the Ray cluster at 127.0.0.1:")
    )
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # before the dataset was generated
    assert seconds < 60, seconds  # not ray.init's ~14 minutes
