"""Real tf.distribute strategies on the host CPU split into logical devices."""

import os
import subprocess
import sys

from ml_collections import ConfigDict
import pytest

from kt_transfer import distribute

# Runs in a fresh process: the CPU can only be split before TensorFlow initializes.
MIRRORED_VS_DEFAULT = r"""
import keras, numpy as np, tensorflow as tf
from ml_collections import ConfigDict
from kt_transfer import config_files, distribute, train, transfer

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


def test_mirrored_on_two_logical_cpus_matches_the_default_strategy():
    result = subprocess.run([sys.executable, "-c", MIRRORED_VS_DEFAULT], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
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


def test_multi_worker_is_refused_before_any_work():
    with pytest.raises(ValueError, match="20585"):
        distribute.make_strategy(ConfigDict(dict(strategy="multi_worker", logical_cpus=0)))
