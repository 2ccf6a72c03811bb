"""Training on Keras' JAX backend with TensorFlow installed for the input pipeline: the CLI
end to end, keras.distribution's DataParallel on the host CPU split into two devices, and
the per-layer logger's gradients against TensorFlow's. Each runs in a subprocess with
KERAS_BACKEND=jax (the backend is fixed when Keras is first imported)."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY
from tensorboard.backend.event_processing import event_accumulator

import kt_transfer  # noqa: F401  (registers the custom layers for load_model)
from kt_transfer.networks import transfer
from kt_transfer.training import layer_logging, train

pytest.importorskip("jax")


def _run_on_jax(args, cwd, timeout=600):
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=str(cwd),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


DATA_PARALLEL_VS_ONE_DEVICE = r"""
import keras, numpy as np, tensorflow as tf
from ml_collections import ConfigDict
from kt_transfer import config_files
from kt_transfer.training import distribute, train
from kt_transfer.networks import transfer
assert keras.backend.backend() == "jax"

parallel = distribute.make_strategy(ConfigDict(dict(strategy="mirrored", logical_cpus=2)))
assert parallel.num_replicas_in_sync == 2, parallel.num_replicas_in_sync
config = config_files.load("tiny")
config.model.dropout = 0.0  # dropout masks differ per device; everything else must agree
rng = np.random.default_rng(0)
x = rng.normal(0, 1, size=(32, 67, 67, 3)).astype("float32")
y = rng.integers(0, 6, 32)

def trained(strategy):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model, plans = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
        train.compile_model(model, config.train, plans)
    initial = model.get_weights()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # global batch 8
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    devices = len(model.get_layer("conv1").kernel.value.sharding.device_set)
    return initial, model.get_weights(), int(model.optimizer.iterations), devices

_, parallel_weights, steps_parallel, devices_parallel = trained(parallel)
initial, one, steps_one, devices_one = trained(distribute.KerasDistribution(None))
assert (devices_parallel, devices_one) == (2, 1), (devices_parallel, devices_one)
assert steps_one == steps_parallel == 4, (steps_one, steps_parallel)
worst = max(float(np.max(np.abs(a - b))) for a, b in zip(one, parallel_weights))
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(one, initial))
print("MAX_DIFF", worst, "MOVED", moved)
assert moved > 1e-3 and worst < 1e-5, (worst, moved)
"""


@pytest.mark.slow
def test_data_parallel_on_two_cpu_devices_matches_one_device(tmp_path):
    out = _run_on_jax(["-c", DATA_PARALLEL_VS_ONE_DEVICE], tmp_path)
    assert "MAX_DIFF" in out


@pytest.mark.slow
def test_the_cli_trains_a_transfer_on_jax_with_every_output(tmp_path, data_cache):
    """`--mode=AnB --n=2` on JAX over two CPU devices: its base first, the copied layers
    frozen bit-identical, model.keras and a SavedModel that TensorFlow serves, and the
    per-layer TensorBoard curves."""
    out = _run_on_jax(
        [
            "-m",
            "kt_transfer.main",
            f"--config={TINY}",
            "--mode=AnB",
            "--n=2",
            f"--workdir={tmp_path / 'wd'}",
            f"--config.dataset.data_dir={data_cache}",
            "--config.distribute.strategy=mirrored",
            "--config.distribute.logical_cpus=2",
            "--config.verbose=0",
        ],
        tmp_path,
    )
    assert "training baseA first" in out and "== A2B (AnB, n=2)" in out
    runs = {os.path.basename(p): p for p in glob.glob(str(tmp_path / "wd" / "*" / "*" / "*" / "*"))}
    assert set(runs) == {"baseA", "A2B"}
    metrics = json.load(open(os.path.join(runs["A2B"], "metrics.json")))
    assert metrics["status"] == "finished" and metrics["steps"] == 4

    base = keras.saving.load_model(os.path.join(runs["baseA"], "model.keras"))
    a2b = keras.saving.load_model(os.path.join(runs["A2B"], "model.keras"))
    for name in ("conv1", "conv2"):  # copied and frozen: bit-identical after training
        for b, t in zip(base.get_layer(name).get_weights(), a2b.get_layer(name).get_weights()):
            np.testing.assert_array_equal(b, t)
    assert not np.array_equal(
        base.get_layer("conv3").get_weights()[0], a2b.get_layer("conv3").get_weights()[0]
    )

    x = np.random.default_rng(0).uniform(0, 255, (3, 67, 67, 3)).astype("float32")
    loaded = tf.saved_model.load(os.path.join(runs["A2B"], "saved_model"))  # kept: its
    served = loaded.serve(x).numpy()  # function refers to the object's variables
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(a2b(x, training=False)))
    np.testing.assert_allclose(served, expected, atol=1e-5)

    events = event_accumulator.EventAccumulator(os.path.join(runs["A2B"], "logs", "layers"))
    tags = set(events.Reload().Tags()["tensors"])
    assert {"fc8/grad_norm", "conv3/grad_norm", "conv1/weight_norm"} <= tags
    grad_norms = [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("fc8/grad_norm")]
    assert grad_norms and all(g > 0 for g in grad_norms)


JAX_GRADIENTS = r"""
import sys
import keras, numpy as np
from kt_transfer.training import layer_logging, train
assert keras.backend.backend() == "jax"
model = keras.saving.load_model(sys.argv[1])
logger = layer_logging.LayerLogger(sys.argv[2], (np.load(sys.argv[3]), np.load(sys.argv[4])),
                                   ["conv3", "fc8"], 1, {}, train.StepCounter())
logger.set_model(model)
grads = logger._probe_pass()[0]
np.savez(sys.argv[5], **{k: keras.ops.convert_to_numpy(v) for k, v in grads.items()})
"""


@pytest.mark.slow
def test_the_layer_loggers_gradients_on_jax_equal_tensorflows(tiny_config, tmp_path):
    config = tiny_config
    model, plans = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
    train.compile_model(model, config.train, plans)
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 67, 67, 3)).astype("float32")
    y = rng.integers(0, 6, 8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    logger = layer_logging.LayerLogger(
        str(tmp_path / "tf_logs"), (x, y), ["conv3", "fc8"], 1, {}, train.StepCounter()
    )
    logger.set_model(model)
    expected = {k: np.asarray(v) for k, v in logger._probe_pass()[0].items()}
    _run_on_jax(
        [
            "-c",
            JAX_GRADIENTS,
            model_path,
            str(tmp_path / "jax_logs"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
            str(tmp_path / "g.npz"),
        ],
        tmp_path,
    )
    on_jax = np.load(tmp_path / "g.npz")
    assert set(on_jax.files) == {"conv3", "fc8"}
    for name, grad in expected.items():
        assert np.linalg.norm(grad) > 0
        np.testing.assert_allclose(
            on_jax[name], grad, rtol=1e-3, atol=1e-5 * float(np.abs(grad).max())
        )
