"""Run directories, stored results, failed runs and the run lock, in process."""

import json
import os

import pytest

from kt_transfer.data import sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment


def test_a_diverging_run_is_recorded_as_failed(tiny_config):
    tiny_config.train.base_lr = 1e8  # the loss overflows within a step or two
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    treatment = transfer.parse_treatment("baseA")
    metrics, out = experiment.run_treatment(tiny_config, dataset, treatment, log=lambda *_: None)
    assert metrics["status"] == "failed" and "NaN or infinite" in metrics["reason"]
    assert metrics["steps"] <= tiny_config.train.total_steps
    stored = json.load(open(os.path.join(out, experiment.METRICS_FILE)))
    assert stored == metrics and not os.path.exists(os.path.join(out, experiment.MODEL_FILE))
    # A transfer run from the failed base says so instead of copying garbage.
    with pytest.raises(RuntimeError, match="baseA failed"):
        experiment.run_treatment(
            tiny_config, dataset, transfer.parse_treatment("AnB", 1), log=lambda *_: None
        )


def test_a_run_directory_in_use_is_refused(tiny_config, tmp_path):
    out = str(tmp_path / "run")
    with experiment.run_lock(out):
        with pytest.raises(experiment.RunBusyError, match="another process is running"):
            with experiment.run_lock(out):
                pass
    with experiment.run_lock(out):  # released when the holder is done
        pass


def test_experiment_dir_separates_settings_but_not_fine_tuning_scale(tiny_config):
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    base_dir = experiment.experiment_dir(tiny_config, dataset)
    tiny_config.train.copied_lr_mult = 0.1
    assert experiment.experiment_dir(tiny_config, dataset) == base_dir
    plus = experiment.run_dir(tiny_config, dataset, transfer.parse_treatment("AnB+", 3))
    assert plus.endswith("A3B+_lr0.1")
    tiny_config.model.width = 0.125
    assert experiment.experiment_dir(tiny_config, dataset) != base_dir


def test_mixed_precision_and_xla_switches_train(tiny_config):
    import keras

    tiny_config.train.precision = "mixed_bfloat16"
    tiny_config.train.jit_compile = True
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    try:
        metrics, out = experiment.run_treatment(
            tiny_config, dataset, transfer.parse_treatment("baseB"), log=lambda *_: None
        )
        model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE))
    finally:
        keras.config.set_dtype_policy("float32")
    assert metrics["status"] == "finished" and metrics["steps"] == 4
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert model.get_layer("fc8").compute_dtype == "float32"


@pytest.mark.slow
def test_fc8_all_keeps_an_output_per_dataset_class_with_the_halfs_labels(tiny_config):
    """The paper's half networks kept all 1000 outputs: labels of a half, accuracy (and
    the softmax) over every output, so an unused output can still win the argmax."""
    import keras
    import numpy as np

    from kt_transfer.training import train

    tiny_config.model.fc8_outputs = "all"
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    half = dataset.split.half("B")
    assert experiment.fc8_outputs(tiny_config, dataset, half) == 12 > len(half) == 6
    metrics, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("AnB+", 1), log=lambda *_: None
    )
    assert metrics["status"] == "finished" and np.isfinite(metrics["loss"])
    model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE))
    assert model.output_shape == (None, 12)
    base = keras.saving.load_model(
        os.path.join(os.path.dirname(out), "baseA", experiment.MODEL_FILE)
    )
    assert base.output_shape == (None, 12)  # the base's fc8 too: checked when copying
    # Accuracy over all outputs: make an output no label uses win every argmax.
    fc8 = model.get_layer("fc8")
    kernel, bias = fc8.get_weights()
    bias[len(half) :] = 1e3
    fc8.set_weights([kernel, bias])
    train.compile_model(model, tiny_config.train, transfer.parse_treatment("baseB").layer_plans())
    images = np.zeros((4, 67, 67, 3), "uint8")
    result = model.evaluate(images, np.arange(4), return_dict=True, verbose=0)
    assert result["top1"] == 0.0


@pytest.mark.slow
def test_the_base_mean_image_is_computed_once_and_carried_to_the_transfer(tiny_config):
    import glob

    import keras
    import numpy as np
    from PIL import Image

    tiny_config.dataset.mean = "base_image"
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    lines = []
    _, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("AnB+", 1), log=lines.append
    )
    assert sum("Computing the mean image of half A" in line for line in lines) == 1
    transfer_net = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE))
    base = keras.saving.load_model(
        os.path.join(os.path.dirname(out), "baseA", experiment.MODEL_FILE)
    )
    got = keras.ops.convert_to_numpy(transfer_net.get_layer("pixel_normalization").mean_image)
    np.testing.assert_array_equal(
        got, keras.ops.convert_to_numpy(base.get_layer("pixel_normalization").mean_image)
    )
    # It is half A's per-pixel mean (the embedded images are stored at the resize size).
    files = [
        f
        for i in dataset.split.A
        for f in glob.glob(
            os.path.join(dataset.source.root, "train", dataset.source.classes[i], "*")
        )
    ]
    direct = np.mean([np.asarray(Image.open(f).convert("RGB"), np.float64) for f in files], axis=0)
    assert got.shape == (72, 72, 3)
    assert np.abs(got - direct).mean() < 1.0  # a repeated stream weights a few images twice


# Faults (issue 22).


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_get_the_modes_a_plain_write_gives_under_the_umask(tiny_config, tmp_path, umask):
    """A shared workdir: other accounts can read results and serve the exported model."""
    tiny_config.dataset.data_dir = str(tmp_path / "data")  # generated under this umask
    old = os.umask(umask)
    try:
        dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
        _, out = experiment.run_treatment(
            tiny_config, dataset, transfer.parse_treatment("baseB"), log=lambda *_: None
        )
    finally:
        os.umask(old)
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    saved_model = os.path.join(out, "saved_model")
    for path in (
        experiment.METRICS_FILE,
        experiment.CONFIG_FILE,
        experiment.MODEL_FILE,
        "saved_model/kt_transfer.json",
        "saved_model/saved_model.pb",
    ):
        assert oct(os.stat(os.path.join(out, path)).st_mode & 0o777) == oct(file_mode), path
    backups = os.path.join(out, "checkpoints")
    for path in [
        dataset.source.root,
        saved_model,
        os.path.join(saved_model, "variables"),
        *(os.path.join(backups, n) for n in os.listdir(backups)),
    ]:
        assert oct(os.stat(path).st_mode & 0o777) == oct(dir_mode), path
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_a_refused_base_leaves_no_run_folder_behind(tiny_config, tmp_path):
    from kt_transfer.networks import caffenet

    other = tiny_config.model.copy_and_resolve_references()
    other.width = 0.125  # another network: its conv1 has twice the filters
    caffenet.build_from_config(other, 6).save(tmp_path / "other.keras")
    tiny_config.base_model = str(tmp_path / "other.keras")
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    treatment = transfer.parse_treatment("AnB", 2)
    with pytest.raises(transfer.BaseMismatchError, match="layer 'conv1'"):
        experiment.run_treatment(tiny_config, dataset, treatment, log=lambda *_: None)
    assert not os.path.exists(experiment.run_dir(tiny_config, dataset, treatment))
