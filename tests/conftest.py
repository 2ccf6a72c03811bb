"""Shared fixtures: tiny configs and a tiny generated dataset, built once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from kt_transfer import config_files  # noqa: E402


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
