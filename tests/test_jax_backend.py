"""The core (model, transfer, optimizer, the compiled training step) on Keras' JAX backend,
with TensorFlow made unimportable: each check runs in a subprocess with KERAS_BACKEND=jax,
against what this (TensorFlow) process computes."""

import os
import subprocess
import sys

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from kt_transfer.data import sources
from kt_transfer.networks import caffenet, transfer
from kt_transfer.runs import experiment
from kt_transfer.training import optimizer as optimizer_lib

pytest.importorskip("jax")

PRELUDE = """
import sys
import numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
import kt_transfer
from kt_transfer.networks import caffenet, transfer
from kt_transfer.training import optimizer as optimizer_lib, train
"""
EPILOGUE = """
assert "tensorflow" not in sys.modules, "the core imported TensorFlow"
print("OK")
"""


def _run_jax(tmp_path, script, *args):
    """Runs PRELUDE + script + EPILOGUE on JAX, where `import tensorflow` fails."""
    blocker = tmp_path / "no_tensorflow"
    blocker.mkdir(exist_ok=True)
    (blocker / "tensorflow.py").write_text("raise ImportError('TensorFlow is blocked')\n")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(blocker), REPO]),
    }
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + script + EPILOGUE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-2000:] + result.stderr[-4000:]
    )
    return result.stdout


SAME_OUTPUTS = """
size, width, classes = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
model = caffenet.build_caffenet(classes, size, width=width, init="he", scale=1 / 64)
model.load_weights(sys.argv[1])
np.save(sys.argv[6], keras.ops.convert_to_numpy(model(np.load(sys.argv[5]), training=False)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("size,width,classes", [(71, 0.25, 50), (227, 1.0, 1000)])
def test_the_same_weights_give_the_same_caffenet_outputs(tmp_path, size, width, classes):
    keras.utils.set_random_seed(0)
    model = caffenet.build_caffenet(classes, size, width=width, init="he", scale=1 / 64)
    model.save_weights(tmp_path / "w.weights.h5")
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype("uint8")
    np.save(tmp_path / "x.npy", x)
    want = model(x, training=False).numpy()
    _run_jax(
        tmp_path,
        SAME_OUTPUTS,
        tmp_path / "w.weights.h5",
        size,
        width,
        classes,
        tmp_path / "x.npy",
        tmp_path / "y.npy",
    )
    got = np.load(tmp_path / "y.npy")
    assert got.shape == (2, classes)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


TINY_MODEL = """
def tiny_model(mults, solver):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(5, activation="relu", name="conv1")(inputs)
    x = keras.layers.Dense(5, activation="relu", name="conv2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc8")(x))
    model.get_layer("conv1").trainable = False  # a frozen copied layer
    model.compile(optimizer=optimizer_lib.make_optimizer(solver, mults),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model
"""
CAFFE_STEP = (
    TINY_MODEL
    + """
import ml_collections
data = np.load(sys.argv[1])
solver = ml_collections.ConfigDict(dict(base_lr=0.05, lr_step_size=1000, lr_gamma=0.1,
                                        momentum=0.9, weight_decay=5e-4, bias_lr_mult=2.0))
model = tiny_model({"conv2": 0.3, "fc8": 1.0}, solver)
model.set_weights([data[f"w{i}"] for i in range(6)])
for _ in range(2):
    model.train_on_batch(data["x"], data["y"])
np.savez(sys.argv[2], *model.get_weights())
"""
)


@pytest.mark.slow
def test_two_solver_steps_of_a_plus_treatment_equal_the_hand_computed_caffe_update(tmp_path):
    """The numbers of test_optimizer's check, on JAX: a frozen layer, a fine-tuned copied
    layer at lr x0.3, a new one; weight decay inside the momentum, bias lr x2."""
    lr, momentum, decay, bias_mult = 0.05, 0.9, 5e-4, 2.0
    mults = {"conv2": 0.3, "fc8": 1.0}
    namespace = {"keras": keras, "optimizer_lib": optimizer_lib}
    exec(TINY_MODEL, namespace)
    solver = ml_collections.ConfigDict(
        dict(
            base_lr=lr,
            lr_step_size=1000,
            lr_gamma=0.1,
            momentum=momentum,
            weight_decay=decay,
            bias_lr_mult=bias_mult,
        )
    )
    keras.utils.set_random_seed(3)
    model = namespace["tiny_model"](mults, solver)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 3, size=8)
    start = model.get_weights()
    weights = {
        f"{layer}/{kind}": model.get_layer(layer).get_weights()[i]
        for layer in ("conv1", "conv2", "fc8")
        for i, kind in enumerate(("kernel", "bias"))
    }
    velocity = {}
    for _ in range(2):  # Caffe: v = momentum v + lr m (grad + decay w); w -= v
        with tf.GradientTape() as tape:
            loss = model.loss(y, model(x, training=True))
        grads = dict(
            zip(
                (v.path for v in model.trainable_variables),
                (g.numpy() for g in tape.gradient(loss, model.trainable_variables)),
            )
        )
        for layer, mult in mults.items():
            for kind, lr_mult, wd in (("kernel", mult, decay), ("bias", mult * bias_mult, 0)):
                path = f"{layer}/{kind}"
                velocity[path] = momentum * velocity.get(path, 0.0) + lr * lr_mult * (
                    grads[path] + wd * weights[path]
                )
                weights[path] = weights[path] - velocity[path]
        model.train_on_batch(x, y)  # keeps this model's weights in step with the sums
    np.savez(tmp_path / "data.npz", x=x, y=y, **{f"w{i}": w for i, w in enumerate(start)})
    _run_jax(tmp_path, CAFFE_STEP, tmp_path / "data.npz", tmp_path / "out.npz")
    got = np.load(tmp_path / "out.npz")
    for i, path in enumerate(
        f"{layer}/{kind}" for layer in ("conv1", "conv2", "fc8") for kind in ("kernel", "bias")
    ):
        want = start[i] if path.startswith("conv1") else weights[path]
        np.testing.assert_allclose(got[f"arr_{i}"], want, rtol=1e-5, atol=1e-7, err_msg=path)
    assert np.array_equal(got["arr_0"], start[0])  # frozen: bit-identical


FROZEN_STAY = """
import ml_collections
model_config = ml_collections.ConfigDict(dict(input_size=71, width=0.125, dropout=0.5,
                                              init="he"))
solver = ml_collections.ConfigDict(dict(base_lr=0.001, lr_step_size=100, lr_gamma=0.1,
                                        momentum=0.9, weight_decay=5e-4, bias_lr_mult=2.0,
                                        warmup_steps=2, jit_compile=True))
keras.utils.set_random_seed(0)
base = caffenet.build_from_config(model_config, 10, scale=1 / 64)
model, plans = transfer.build_model(transfer.parse_treatment("AnB", 3), model_config, 10, base)
train.compile_model(model, solver, plans)
before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (8, 71, 71, 3)).astype("uint8"), rng.integers(0, 10, 8)
losses = [float(model.train_on_batch(x, y)[0]) for _ in range(4)]
assert all(np.isfinite(losses)), losses
for name in ("conv1", "conv2", "conv3"):  # copied and frozen: bit-identical
    assert all(np.array_equal(a, b) for a, b in zip(before[name],
                                                   model.get_layer(name).get_weights())), name
    assert all(np.array_equal(a, b) for a, b in zip(base.get_layer(name).get_weights(),
                                                   model.get_layer(name).get_weights())), name
for name in ("conv4", "fc6", "fc8"):  # trained
    assert not np.array_equal(before[name][0], model.get_layer(name).get_weights()[0]), name
"""


@pytest.mark.slow
def test_an_anb_network_built_on_jax_trains_with_its_frozen_layers_bit_identical(tmp_path):
    _run_jax(tmp_path, FROZEN_STAY)


LOAD_KERAS = """
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]), training=False)))
"""


@pytest.mark.slow
def test_a_run_trained_on_tensorflow_loads_on_jax_with_the_same_predictions(tiny_config, tmp_path):
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    _, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("baseA"), log=lambda *_: None
    )
    path = os.path.join(out, experiment.MODEL_FILE)
    model = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(2).integers(0, 256, (3, 67, 67, 3)).astype("uint8")
    np.save(tmp_path / "x.npy", x)
    _run_jax(tmp_path, LOAD_KERAS, path, tmp_path / "x.npy", tmp_path / "y.npy")
    want = model(x, training=False).numpy()
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(want).max())
    )


@pytest.mark.slow
def test_the_step_benchmark_runs_on_jax_without_tensorflow(tmp_path):
    out = _run_jax(
        tmp_path,
        """
import runpy
sys.argv = [sys.argv[1], "--backend=jax", "--steps=1", "--warmup=1",
            "--treatments=baseB,A7B", "--config=tiny", "--batch=4"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
""",
        os.path.join(REPO, "tools", "bench_step.py"),
    )
    rows = [line.split() for line in out.splitlines() if line.startswith(("baseB", "A7B"))]
    assert [r[0] for r in rows] == ["baseB", "A7B"]
    assert float(rows[1][4]) < float(rows[0][4])  # A7B: no backward pass below fc8


FAMILY_TRANSFER = """
from kt_transfer import config_files
from kt_transfer.networks import families
keras.config.set_dtype_policy(sys.argv[2])
config = config_files.load("tiny")
config.model.network = sys.argv[1]
config.model.resnet.stages = (1, 1)
config.model.vit.update(patch_size=16, hidden_dim=16, num_heads=2, num_blocks=2, mlp_dim=32)
blocks = families.block_names(config.model)
keras.utils.set_random_seed(0)
base, _ = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
model, plans = transfer.build_model(
    transfer.parse_treatment("AnB", 2, blocks), config.model, 6, base=base
)
train.compile_model(model, config.train, plans)
before = [np.asarray(w).copy() for w in model.get_layer(blocks[2]).trainable_weights]
rng = np.random.default_rng(0)
side = config.model.input_size
x = rng.integers(0, 256, (24, side, side, 3)).astype("uint8")
model.fit(x, rng.integers(0, 6, 24), batch_size=8, epochs=1, verbose=0, shuffle=False)
logits = model(x[:2], training=False)
assert str(logits.dtype) == "float32" and np.isfinite(np.asarray(logits)).all(), logits.dtype
def weights(m, name):
    return [np.asarray(w) for w in m.get_layer(name).weights]
for name in blocks[:2]:  # frozen: every weight, BatchNorm statistics included
    assert all(np.array_equal(a, b) for a, b in zip(weights(model, name), weights(base, name)))
after = [np.asarray(w) for w in model.get_layer(blocks[2]).trainable_weights]
assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # trained
"""


@pytest.mark.slow
@pytest.mark.parametrize("network,precision", [("resnet", "float32"), ("vit", "mixed_bfloat16")])
def test_a_family_s_transfer_trains_on_jax_with_frozen_blocks_unchanged(
    tmp_path, network, precision
):
    """ResNet and ViT (tiny) on JAX, one in mixed precision: A2B trains, its two copied
    blocks stay bit-identical (BatchNorm statistics included), logits stay float32."""
    _run_jax(tmp_path, FAMILY_TRANSFER, network, precision)


PRESET_TRANSFER = """
from kt_transfer import config_files
from kt_transfer.networks import families
preset = sys.argv[1]
config = config_files.load("tiny")
config.model.network = "keras_hub"
config.model.keras_hub.preset = preset
blocks = families.block_names(config.model)
assert blocks == ("stem", "stack0", "stack1", "classifier"), blocks
base = transfer.load_base(preset, model_config=config.model)
model, plans = transfer.build_model(
    transfer.parse_treatment("AnB", 2, blocks), config.model, 6, base=base
)
train.compile_model(model, config.train, plans)
rng = np.random.default_rng(0)
side = config.model.input_size
x = rng.integers(0, 256, (24, side, side, 3)).astype("uint8")
model.fit(x, rng.integers(0, 6, 24), batch_size=8, epochs=1, verbose=0, shuffle=False)
for name in blocks[:2]:  # frozen: the preset's weights, BatchNorm statistics included
    weights = [np.asarray(w) for w in model.get_layer(name).get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(weights, base.weights[name])), name
np.save("logits.npy", np.asarray(model(x[:2], training=False)))
"""


@pytest.mark.slow
def test_a_keras_hub_preset_is_a_base_on_jax_too(tmp_path, hub_presets):
    """A preset saved by keras-hub (from this TensorFlow process) loads as a base on JAX,
    with TensorFlow unimportable there: A2B trains with the preset's blocks bit-identical."""
    paths, _ = hub_presets
    _run_jax(tmp_path, PRESET_TRANSFER, paths["converter"])
    assert np.isfinite(np.load(tmp_path / "logits.npy")).all()
