"""Every config value checked before any work (validate.validate, the check the command
line runs first), in process: each bad value named with its --config. key and the fix.
tests/test_main.py shows how these messages reach a user of the command line."""

import os
import re
import subprocess

import pytest


# Every other bad value, through validate.validate, the check the command line runs first
# (the cases above show how its message reaches the user); in-process, without the
# subprocess's seconds of TensorFlow start-up per case.
@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"mode": "grid", "grid.directions": ("AtoB", "BtoC")}, "--config.grid.directions"),
        ({"mode": "grid", "grid.splits": ("natman.s0",)}, "--config.grid.splits"),
        ({"mode": "AnB", "n": 3, "split": "all"}, "--mode='AnB': with --config.split=all"),
        ({"mode": "grid", "model.fc8_outputs": "most"}, "--config.model.fc8_outputs"),
        ({"mode": "AnB", "n": 2, "train.precision": "fp8"}, "--config.train.precision='fp8'"),
        ({"mode": "AnB", "n": 2, "model.init": "xavier"}, "--config.model.init='xavier'"),
        ({"mode": "AnB", "n": 2, "dataset.mean": "median"}, "use one of fixed, computed"),
        ({"mode": "AnB", "n": 2, "dataset.resize_size": 64}, "at most that"),
        ({"mode": "baseA", "split": "halves"}, "--config.split='halves'"),
        ({"mode": "baseA", "split": "natman.s"}, "--config.split='natman.s'"),
        ({"mode": "baseA", "train.batch_size": 0}, "--config.train.batch_size=0"),
        ({"mode": "baseA", "distribute.strategy": "tpu"}, "--config.distribute.strategy"),
        ({"mode": "baseA", "distribute.logical_cpus": 3}, "give a multiple of 3"),
        ({"mode": "grid", "grid.treatments": ("AnB", "CnD")}, "--config.grid.treatments"),
        ({"mode": "grid", "grid.ns": (0, 8)}, "--config.grid.ns"),
        ({"mode": "tune", "n": 2, "tune.tuner": "grid"}, "--config.tune.tuner='grid'"),
        ({"mode": "tune", "n": 2, "tune.holdout_fraction": 0.9}, "holdout_fraction"),
        ({"mode": "tune", "n": 2, "tune.treatment": "AnB"}, "AnB+ or BnB+"),
        ({"mode": "AnB", "n": 0}, "--n between 1 and 7"),
        ({"mode": "baseA", "train.total_steps": 5}, "--config.train.steps_per_epoch"),
        ({"mode": "baseA", "train.target_images_per_class": -1}, "target_images_per_class"),
        (
            {
                "mode": "grid",
                "dataset.name": "tfds",
                "dataset.tfds_name": "cifar100",
                "grid.target_images_per_class": (0, 5),
            },
            "needs a folder dataset",
        ),
        ({"mode": "grid", "grid.target_images_per_class": (5, "x")}, "e.g. '(0, 10, 5)'"),
    ],
)
def test_bad_config_values_are_named_with_the_fix(overrides, message, tmp_path):
    from kt_transfer import config_files, validate

    config = config_files.load("tiny")
    config.workdir = str(tmp_path / "wd")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    with pytest.raises(validate.ConfigError) as raised:
        validate.validate(config)
    assert message in str(raised.value), str(raised.value)


def test_a_workdir_that_is_a_file_or_read_only_is_named(tmp_path, small_filesystem):
    from kt_transfer import config_files, validate

    config = config_files.load("tiny")
    config.mode = "baseA"
    (tmp_path / "a_file").write_text("")
    config.workdir = str(tmp_path / "a_file" / "runs")
    with pytest.raises(validate.ConfigError, match=r"--workdir=.*a_file is a file, not a "):
        validate.validate(config)
    read_only = str(tmp_path / "ro")
    with small_filesystem(read_only, "1m"):
        subprocess.run(["mount", "-o", "remount,ro", read_only], check=True)
        config.workdir = os.path.join(read_only, "runs")
        with pytest.raises(validate.ConfigError, match=f"{read_only} is not writable"):
            validate.validate(config)


@pytest.mark.parametrize(
    "tf_config,message",
    [
        (None, "needs the environment variable TF_CONFIG"),
        ("{cluster: [host1]}", "TF_CONFIG, which is not valid (Expecting property name"),
        ('{"task": {"type": "worker", "index": 0}}', "it needs the keys cluster and task"),
    ],
)
def test_multi_worker_names_a_missing_or_bad_tf_config(tf_config, message, monkeypatch, tmp_path):
    from kt_transfer import config_files, validate

    config = config_files.load("tiny")
    config.mode, config.workdir = "baseA", str(tmp_path / "wd")
    config.distribute.strategy = "multi_worker"
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(validate.ConfigError, match=re.escape(message)):
        validate.validate(config)
