"""Shared fixtures and helpers: tiny configs, a tiny generated dataset built once per
session, a small filesystem, and the command line run as a user runs it.

Tiers: `pytest -m "not slow" tests` is the quick tier (in-process tests); tests marked
`slow` start subprocesses (the CLI end to end, worker processes, other backends).
"""

import contextlib
import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

import pytest  # noqa: E402

from kt_transfer import config_files  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def subprocess_env(**extra):
    """The environment of a kt_transfer subprocess: this one's, TensorFlow's INFO lines
    off, plus `extra`."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def run_cli(*args, cwd=None, env=None, timeout=600):
    """`python -m kt_transfer.main ARGS` as a user runs it; the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "kt_transfer.main", *args],
        cwd=cwd,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def tiny_config(data_cache, tmp_path):
    config = config_files.load("tiny")
    config.dataset.data_dir = data_cache
    config.workdir = str(tmp_path / "workdir")
    config.verbose = 0
    return config


@pytest.fixture
def small_filesystem():
    """mount(path, size): a real filesystem of `size` (tmpfs) at `path`, a disk that
    fills up; unmounted after the test. Skips where mounting is not allowed."""
    mounted = []

    @contextlib.contextmanager
    def mount(path, size):
        os.makedirs(path, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a small filesystem here: {result.stderr.decode()[:200]}")
        mounted.append(path)
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", path], check=False)
            mounted.remove(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", path], check=False)
