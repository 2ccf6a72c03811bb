"""The exported SavedModel serves the same probabilities as the Keras model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import subprocess_env

from kt_transfer.data import sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment
from kt_transfer.training import export

RELOAD = r"""
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], loaded.serve(tf.constant(x)).numpy())
"""


@pytest.mark.slow
def test_saved_model_matches_keras_in_a_fresh_process(tiny_config, tmp_path):
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    _, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("baseA"), log=lambda *_: None
    )
    model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE), safe_mode=True)
    x = np.random.default_rng(0).normal(size=(5, 67, 67, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD,
            os.path.join(out, export.SAVED_MODEL_DIR),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        check=True,
        env=subprocess_env(),
    )
    served = np.load(tmp_path / "y.npy")
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(x, training=False)))
    assert served.shape == (5, 6)  # the 6 classes of tiny half A
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # no leftovers


def _layer_arrays(model, name):
    return [np.array(w) for w in model.get_layer(name).get_weights()]


@pytest.mark.slow
def test_transfer_run_copies_from_an_exported_base(tiny_config, tmp_path):
    """--base_model: a SavedModel dir and a .keras file give the same copied layers."""
    quiet = lambda *_: None  # noqa: E731
    dataset = sources.resolve_dataset(tiny_config, log=quiet)
    _, base_out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("baseA"), log=quiet
    )
    base = keras.saving.load_model(os.path.join(base_out, experiment.MODEL_FILE))
    # An exported base elsewhere: the run trains in a workdir with no base of its own.
    tiny_config.workdir = str(tmp_path / "other_workdir")
    runs = []
    for path in (
        os.path.join(base_out, export.SAVED_MODEL_DIR),
        os.path.join(base_out, experiment.MODEL_FILE),
    ):
        tiny_config.base_model = path
        metrics, out = experiment.run_treatment(
            tiny_config, dataset, transfer.parse_treatment("AnB", 2), log=quiet
        )
        assert metrics["status"] == "finished" and metrics["base_model"] == path
        assert "_base-" in os.path.basename(out)
        runs.append(out)
        model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE))
        for name in ("conv1", "conv2"):  # copied and frozen: still the base's weights
            for a, b in zip(_layer_arrays(model, name), _layer_arrays(base, name)):
                np.testing.assert_array_equal(a, b)
        assert not np.array_equal(
            model.get_layer("conv3").kernel.numpy(), base.get_layer("conv3").kernel.numpy()
        )
    assert runs[0] != runs[1]  # two different bases, two different runs
    assert not os.path.exists(
        experiment.run_dir(tiny_config, dataset, transfer.parse_treatment("baseA"))
    )


def test_exported_base_of_another_architecture_is_refused(tiny_config, tmp_path):
    from kt_transfer.networks import caffenet

    wide = caffenet.build_caffenet(6, 67, width=0.125, dropout=0.5, init="he")
    export.export_saved_model(wide, str(tmp_path))
    base = transfer.load_base(str(tmp_path / export.SAVED_MODEL_DIR))
    assert sorted(base.weights) == sorted(caffenet.LAYER_NAMES)
    with pytest.raises(transfer.BaseMismatchError, match="layer 'conv1'.*--config.model"):
        transfer.build_model(transfer.parse_treatment("AnB", 3), tiny_config.model, 6, base)
    with pytest.raises(ValueError, match="neither a .keras file nor a SavedModel"):
        transfer.load_base(str(tmp_path))


@pytest.mark.parametrize("form", ["keras", "saved_model"])
def test_a_transfer_network_inherits_its_bases_normalization_mean_image_included(
    tiny_config, tmp_path, form
):
    """The paper's transfer nets used their base's mean file: the transfer network
    subtracts what its base subtracted (mean image and scale), whatever the config says."""
    from kt_transfer.networks import caffenet

    side = tiny_config.dataset.resize_size  # 72: the mean image is kept at the resize size
    mean_image = np.random.default_rng(0).uniform(60, 160, (side, side, 3)).astype("float32")
    other = caffenet.build_from_config(
        tiny_config.model, 6, mean_rgb=(120.0, 110.0, 100.0), scale=1 / 32, mean_image=mean_image
    )
    if form == "keras":
        path = str(tmp_path / "base.keras")
        other.save(path)
    else:
        path = export.export_saved_model(other, str(tmp_path))
    base = transfer.load_base(path)
    assert base.mean_rgb == (120.0, 110.0, 100.0) and base.scale == 1 / 32
    np.testing.assert_array_equal(base.mean_image, mean_image)
    model, _ = transfer.build_model(
        transfer.parse_treatment("AnB", 3),
        tiny_config.model,
        6,
        base,
        mean_rgb=(96.0, 96.0, 96.0),
        scale=1 / 64,
    )
    norm = model.get_layer("pixel_normalization")
    assert norm.scale == 1 / 32 and norm.mean_image_size == side
    pixels = np.random.default_rng(1).integers(0, 256, (2, 67, 67, 3)).astype("uint8")
    centre = mean_image[2:69, 2:69]  # (72 - 67) // 2 = 2
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(norm(pixels)), (pixels - centre) / 32, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(
        model.get_layer("conv3").kernel.numpy(), other.get_layer("conv3").kernel.numpy()
    )


FRESH_LOAD = r"""
import sys, numpy as np
import kt_transfer, keras
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]), training=False)))
print(type(model.optimizer.inner_optimizer if hasattr(model.optimizer, "inner_optimizer")
           else model.optimizer).__name__)
"""


@pytest.mark.slow
def test_import_kt_transfer_is_enough_to_load_a_saved_network(tiny_config, tmp_path):
    """A fresh process that imports only kt_transfer and keras loads model.keras (with its
    CaffeSGD solver and StepSchedule) with safe_mode=True."""
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    _, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("baseA"), log=lambda *_: None
    )
    model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE), safe_mode=True)
    x = np.random.default_rng(1).integers(0, 256, size=(3, 67, 67, 3)).astype("uint8")
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_LOAD,
            os.path.join(out, experiment.MODEL_FILE),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "MultiOptimizer"
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-5
    )


def test_a_full_disk_at_export_is_an_error_and_the_rerun_keeps_every_evaluation(
    tiny_config, tmp_path, monkeypatch
):
    """The run's last backup holds every evaluation, so the rerun after an export that
    failed (here an injected ENOSPC at the SavedModel's write) only exports."""
    import errno

    from kt_transfer import atomic

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    treatment = transfer.parse_treatment("baseB")
    monkeypatch.setattr(export.keras_compat, "quiet_tensorflow_info", no_space)
    with pytest.raises(atomic.DiskFullError, match="saved_model"):
        experiment.run_treatment(tiny_config, dataset, treatment, log=lambda *_: None)
    out = experiment.run_dir(tiny_config, dataset, treatment)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert not os.path.exists(os.path.join(out, experiment.METRICS_FILE))
    monkeypatch.undo()
    metrics, _ = experiment.run_treatment(tiny_config, dataset, treatment, log=lambda *_: None)
    assert metrics["resumed_from_step"] == metrics["steps"] == tiny_config.train.total_steps
    assert [e["step"] for e in metrics["evaluations"]] == [2, 4]
