"""Real tf.distribute strategies on the host CPU split into logical devices."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import TINY, subprocess_env
from ml_collections import ConfigDict

from kt_transfer.training import distribute

# Runs in a fresh process: the CPU can only be split before TensorFlow initializes.
MIRRORED_VS_DEFAULT = r"""
import keras, numpy as np, tensorflow as tf
from ml_collections import ConfigDict
from kt_transfer import config_files
from kt_transfer.training import distribute, train
from kt_transfer.networks import transfer

strategy = distribute.make_strategy(ConfigDict(dict(strategy="mirrored", logical_cpus=2)))
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
config = config_files.load("tiny")
config.model.dropout = 0.0  # dropout masks differ per replica; everything else must agree
rng = np.random.default_rng(0)
x = rng.normal(0, 1, size=(32, 67, 67, 3)).astype("float32")  # as scaled by the pipeline
y = rng.integers(0, 6, 32)

def trained_weights(strategy):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model, plans = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
        train.compile_model(model, config.train, plans)
    initial = model.get_weights()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # global batch 8
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return initial, model.get_weights(), int(model.optimizer.iterations.numpy())

initial, default, steps_default = trained_weights(tf.distribute.get_strategy())
_, mirrored, steps_mirrored = trained_weights(strategy)
assert steps_default == steps_mirrored == 4, (steps_default, steps_mirrored)
worst = max(float(np.max(np.abs(a - b))) for a, b in zip(default, mirrored))
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(default, initial))
print("MAX_DIFF", worst, "MOVED", moved)
assert moved > 1e-3 and worst < 1e-5, (worst, moved)
"""


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_the_default_strategy():
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_VS_DEFAULT],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MAX_DIFF" in result.stdout


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="mirrored"):
        distribute.make_strategy(ConfigDict(dict(strategy="tpu", logical_cpus=0)))


def test_auto_without_gpus_is_the_default_strategy():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has GPUs")
    strategy = distribute.make_strategy(ConfigDict(dict(strategy="auto", logical_cpus=0)))
    assert strategy is tf.distribute.get_strategy()


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.make_strategy(ConfigDict(dict(strategy="multi_worker", logical_cpus=0)))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_identical_weights_and_only_the_chief_writes(tmp_path, data_cache):
    """Two real worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    workdir = tmp_path / "wd"
    args = [
        sys.executable,
        "-m",
        "kt_transfer.main",
        f"--config={TINY}",
        "--mode=AnB",
        "--n=2",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={data_cache}",
        "--config.distribute.strategy=multi_worker",
    ]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = subprocess_env(TF_CONFIG=json.dumps(tf_config))
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
    for index, proc in enumerate(procs):
        assert proc.wait(timeout=600) == 0, open(tmp_path / f"worker{index}.log").read()[-3000:]
    logs = [open(tmp_path / f"worker{i}.log").read() for i in range(2)]
    fingerprints = [
        dict(re.findall(r"^(\S+): weights fingerprint (\w+)$", log, re.M)) for log in logs
    ]
    assert set(fingerprints[0]) == {"baseA", "A2B"}
    assert fingerprints[0] == fingerprints[1]  # the same weights on both workers
    written = [
        os.path.relpath(os.path.join(root, name), workdir)
        for root, _, names in os.walk(workdir)
        for name in names
    ]
    assert sorted(p for p in written if p.endswith("metrics.json"))  # written ...
    assert len([p for p in written if p.endswith("metrics.json")]) == 2  # ... once per run
    assert len([p for p in written if p.endswith("model.keras")]) == 2
    assert not [p for p in written if ".tmp-worker-" in p]  # scratch copies removed
    assert "== A2B (AnB, n=2)" in logs[0] and "== A2B (AnB, n=2)" in logs[1]


BARRIER = r"""
import os, sys, time
from ml_collections import ConfigDict
from kt_transfer.training import distribute
strategy = distribute.make_strategy(ConfigDict(dict(strategy="multi_worker", logical_cpus=0)))
marker = sys.argv[1]
if distribute.is_chief(strategy):
    time.sleep(3)  # a slow export
    with open(marker, "w") as f:
        f.write("written")
distribute.barrier(strategy)
assert open(marker).read() == "written", "a worker passed the barrier before the chief wrote"
print("PASSED BARRIER")
"""


@pytest.mark.slow
def test_a_worker_waits_at_the_barrier_until_the_chief_has_written(tmp_path):
    """The cause of a race seen under load: a worker read its base's model.keras before
    the chief had finished writing it. Two real workers on 127.0.0.1."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = subprocess_env(TF_CONFIG=json.dumps(tf_config))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", BARRIER, str(tmp_path / "marker")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0 and "PASSED BARRIER" in output, output[-3000:]
