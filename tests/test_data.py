import os

import numpy as np
import pytest
import tensorflow as tf

from kt_transfer import data, embedded, experiment, splits
from kt_transfer import config_files

SPEC = embedded.EmbeddedSpec(num_classes=6, train_per_class=3, val_per_class=2, image_size=72)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
    return out


def test_embedded_dataset_is_deterministic_and_imagenet_shaped(tmp_path):
    first = embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path / "a"), log=lambda *_: None)
    second = embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path / "b"), log=lambda *_: None)
    files = _files(first)
    assert files == _files(second)
    assert len([f for f in files if f.startswith("train/")]) == 6 * 3
    assert len([f for f in files if f.startswith("val/")]) == 6 * 2
    classes = data.list_classes(first)
    assert len(classes) == 6 and classes == sorted(classes)
    groups = {line.split("\t")[2].strip() for line in open(os.path.join(first, "classes.tsv"))
              if not line.startswith("class_index")}
    assert groups == {splits.MAN_MADE, splits.NATURAL}  # both families present


def test_embedded_default_has_100_classes_in_two_families():
    specs = embedded.class_specs(100)
    assert len({s.folder for s in specs}) == 100
    assert sum(s.group == splits.NATURAL for s in specs) == 50


def test_interrupted_generation_is_never_used(tmp_path, monkeypatch):
    calls = []

    def crash_after_first_class(root, spec, class_index):
        calls.append(class_index)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-generation

    monkeypatch.setattr(embedded, "_write_class", crash_after_first_class)
    monkeypatch.setattr(embedded.concurrent.futures, "ProcessPoolExecutor",
                        lambda *a, **k: _InlinePool())
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path), log=lambda *_: None)
    assert calls and os.listdir(tmp_path) == []  # no half-written dataset left behind


class _InlinePool:
    """Runs work in this process so the test can interrupt it deterministically."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return [fn(i) for i in items]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path_factory.mktemp("ds")),
                                   log=lambda *_: None)


def test_folder_pipeline_reads_only_the_half_and_remaps_labels(tiny_root):
    config = config_files.load("tiny")
    classes = data.list_classes(tiny_root)
    half = (1, 4, 5)
    paths, labels = data.list_files(tiny_root, "train", classes, half)
    assert {os.path.basename(os.path.dirname(p)) for p in paths} == {classes[i] for i in half}
    for path, label in zip(paths, labels):
        assert os.path.basename(os.path.dirname(path)) == classes[half[label]]
    ds, count = data.make_dataset(tiny_root, "val", half, config.dataset, 67, batch_size=4,
                                  training=False, classes=classes)
    images, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    assert count == 6 and sorted(np.concatenate(ys).tolist()) == [0, 0, 1, 1, 2, 2]
    assert images[0].shape[1:] == (67, 67, 3)


def test_preprocessing_eager_and_in_dataset_map_agree(tiny_root):
    path = data.list_files(tiny_root, "val", data.list_classes(tiny_root), (0,))[0][0]
    raw = tf.io.read_file(path)
    kwargs = dict(training=False, resize_size=72, crop_size=67, mean_rgb=[96.0, 96.0, 96.0])
    eager, _ = data.preprocess(raw, 0, **kwargs)
    mapped = next(iter(tf.data.Dataset.from_tensors((raw, 0)).map(
        lambda x, y: data.preprocess(x, y, **kwargs))))[0]
    np.testing.assert_allclose(eager.numpy(), mapped.numpy())
    decoded = tf.image.resize(tf.io.decode_jpeg(raw, channels=3), [72, 72]).numpy()
    np.testing.assert_allclose(eager.numpy(), decoded[2:69, 2:69] - 96.0, atol=1e-4)  # centre crop
    train_crop, _ = data.preprocess(raw, 0, **{**kwargs, "training": True})
    assert train_crop.shape == (67, 67, 3)


def test_missing_folder_or_class_images_fail_before_training(tmp_path, tiny_root):
    config = config_files.load("tiny")
    config.dataset.name = "folder"
    config.dataset.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="--config.dataset.data_dir"):
        experiment.resolve_dataset(config)
    os.makedirs(tmp_path / "empty" / "train" / "cls0")
    with pytest.raises(FileNotFoundError, match="no images"):
        data.list_files(str(tmp_path / "empty"), "train", ["cls0"], (0,))
