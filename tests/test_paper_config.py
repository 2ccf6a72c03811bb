"""configs/imagenet_paper.py runs: the paper-size network (227 px, width 1, fc8 over all
classes, the base half's mean image) trains a few steps on a tiny generated folder of
ImageNet-sized JPEGs, baseA then A3B+, under mixed_float16 (the precision a GPU run uses;
float32 is the default config's, tested everywhere else), and exports."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from kt_transfer import config_files, validate
from kt_transfer.data import sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment
from kt_transfer.training import export

CLASSES = 4


def _imagenet_like(root):
    """4 classes of smooth 300x260 JPEGs (resized to 256x256 on the fly)."""
    rng = np.random.default_rng(0)
    for subset, count in (("train", 3), ("val", 1)):
        for c in range(CLASSES):
            folder = root / subset / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                coarse = rng.integers(0, 256, (18, 20, 3), np.uint8)
                image = Image.fromarray(coarse).resize((300, 260), Image.BICUBIC)
                image.save(folder / f"{c}_{i}.JPEG", quality=90)
    return str(root)


@pytest.mark.slow
def test_the_paper_config_trains_transfers_and_exports(tmp_path, precision="mixed_float16"):
    config = config_files.load("imagenet_paper")
    config.dataset.data_dir = _imagenet_like(tmp_path / "imagenet")
    config.workdir = str(tmp_path / "wd")
    config.verbose = 0
    config.dataset.mean_images = 8
    config.train.update(
        batch_size=2,
        total_steps=2,
        steps_per_epoch=2,
        lr_step_size=1,
        backup_every_steps=2,
        log_every_steps=2,
        precision=precision,
    )
    config.mode, config.n = "AnB+", 3
    validate.validate(config)
    assert (
        config.model.input_size,
        config.model.width,
        config.model.fc8_outputs,
        config.dataset.mean,
    ) == (227, 1.0, "all", "base_image")
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    try:
        metrics, out = experiment.run_treatment(
            config, dataset, transfer.parse_treatment("AnB+", 3), log=lambda *_: None
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert metrics["status"] == "finished" and metrics["steps"] == 2
    base_out = os.path.join(os.path.dirname(out), "baseA")
    assert json.load(open(os.path.join(base_out, "metrics.json")))["status"] == "finished"
    model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE), compile=False)
    assert model.output_shape == (None, CLASSES)  # fc8 over all classes, not the half's 2
    assert model.count_params() == 60_965_224 - 996 * 4097 + 256 * 256 * 3  # + mean image
    norm = model.get_layer("pixel_normalization")
    base = keras.saving.load_model(os.path.join(base_out, experiment.MODEL_FILE), compile=False)
    np.testing.assert_array_equal(  # the transfer net subtracts its base's mean image
        keras.ops.convert_to_numpy(norm.mean_image),
        keras.ops.convert_to_numpy(base.get_layer("pixel_normalization").mean_image),
    )
    assert norm.mean_image.shape == (256, 256, 3)
    recorded = export.read_metadata(os.path.join(out, "saved_model"))
    assert recorded["scale"] == 1.0
    reloaded = transfer.load_base(os.path.join(out, "saved_model"))
    assert reloaded.mean_image.shape == (256, 256, 3)
    np.testing.assert_array_equal(
        reloaded.weights["conv3"][0], model.get_layer("conv3").kernel.numpy()
    )
