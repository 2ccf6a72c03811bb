"""TFDS sources through the real TFDS API, on `tfds.testing.mock_data`."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kt_transfer.data import pipeline, sources, tfds_source
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment


def _tfds_config(tiny_config, name, tmp_path):
    tiny_config.dataset.name = "tfds"
    tiny_config.dataset.tfds_name = name
    tiny_config.dataset.data_dir = str(tmp_path / "tensorflow_datasets")
    return tiny_config


def test_imagenet2012_without_its_tar_files_names_them_and_the_directory(tiny_config, tmp_path):
    config = _tfds_config(tiny_config, "imagenet2012", tmp_path)
    manual = os.path.join(config.dataset.data_dir, "downloads", "manual")
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(FileNotFoundError) as error:
            sources.resolve_dataset(config, log=lambda *_: None)
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert manual in message and "tfds_manual_dir" in message


def _place_tar_files(config):
    manual = tfds_source.manual_dir(config.dataset.data_dir)
    os.makedirs(manual)
    for name in tfds_source.MANUAL_FILES["imagenet2012"]:
        open(os.path.join(manual, name), "wb").close()


def test_imagenet2012_half_is_filtered_before_decoding_and_remapped(tiny_config, tmp_path):
    config = _tfds_config(tiny_config, "imagenet2012", tmp_path)
    _place_tar_files(config)
    with tfds.testing.mock_data(num_examples=60):
        dataset = sources.resolve_dataset(config, log=lambda *_: None)
        assert len(dataset.classes) == 1000 and dataset.classes[0] == "n01440764"
        assert dataset.split.name == "random0" and len(dataset.split.half("A")) == 500
        half = dataset.split.half("A")
        builder = dataset.source.builder
        raw = list(
            builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
        )
        read = list(tfds_source.read(builder, "validation", half, training=False, seed=0))
    position = {c: i for i, c in enumerate(half)}
    expected = [
        (ex["file_name"].numpy(), position[int(ex["label"])])
        for ex in raw
        if int(ex["label"]) in position
    ]
    assert 0 < len(expected) < len(raw)  # the other half is dropped
    assert [(ex["name"].numpy(), int(ex["label"])) for ex in read] == expected
    assert all(ex["image"].dtype == tf.string for ex in read)  # still encoded


def test_a_transfer_run_trains_on_mocked_imagenet2012(tiny_config, tmp_path):
    config = _tfds_config(tiny_config, "imagenet2012", tmp_path)
    _place_tar_files(config)
    config.split = "natman"
    with tfds.testing.mock_data(num_examples=40):
        dataset = sources.resolve_dataset(config, log=lambda *_: None)
        metrics, out = experiment.run_treatment(
            config, dataset, transfer.parse_treatment("AnB", 2), log=lambda *_: None
        )
    assert metrics["status"] == "finished" and metrics["steps"] == config.train.total_steps
    assert os.sep + os.path.join("imagenet2012", "natman") + os.sep in out
    assert metrics["dataset"] == "imagenet2012"


@pytest.mark.slow
def test_cifar100_label_count_drives_the_split_and_mean_is_cached(tiny_config, tmp_path):
    """README's cifar100 command: 32 px images upscaled to the network's smallest input."""
    from kt_transfer import validate

    config = _tfds_config(tiny_config, "cifar100", tmp_path)
    config.dataset.resize_size, config.model.input_size = 72, 67
    validate.validate(config)  # what the CLI checks first
    config.dataset.mean, config.dataset.mean_images = "computed", 64
    with tfds.testing.mock_data(num_examples=30):
        dataset = sources.resolve_dataset(config, log=lambda *_: None)
        assert dataset.source.val_split == "test" or dataset.source.val_split == "validation"
        assert len(dataset.classes) == 100 and len(dataset.split.half("B")) == 50
        ds = pipeline.make_dataset(
            dataset.source,
            "train",
            dataset.split.half("B"),
            resize_size=72,
            crop_size=67,
            batch_size=4,
            training=True,
            seed=0,
        )
        images, labels = next(iter(ds))
        assert images.shape == (4, 67, 67, 3) and 0 <= int(tf.reduce_min(labels))
        assert int(tf.reduce_max(labels)) < 50
        log = []
        from kt_transfer.data import mean

        first, image = mean.run_mean(
            config, dataset, transfer.parse_treatment("AnB", 2), log.append
        )
        again, _ = mean.run_mean(config, dataset, transfer.parse_treatment("AnB", 2), log.append)
    assert image is None  # "computed" is per channel; "base_image" is the mean image
    assert first == again and len(first) == 3 and all(0 <= v <= 255 for v in first)
    assert len([m for m in log if "Computing the pixel mean" in m]) == 1  # cached after
    assert np.std(first) < 60
    with tfds.testing.mock_data(num_examples=30):  # and a network trains on it
        metrics, _ = experiment.run_treatment(
            config, dataset, transfer.parse_treatment("baseB"), log=lambda *_: None
        )
    assert metrics["status"] == "finished" and metrics["num_classes"] == 50
