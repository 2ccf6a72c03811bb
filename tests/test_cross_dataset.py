"""Transfer between two datasets (config.source_dataset): the split `cross` puts the
source's classes in half A and the target's in half B, so the bases, the transfers, the
grid and its findings work as between the halves of one dataset."""

import json
import os

import pytest
from conftest import TINY, run_cli

from kt_transfer import config_files, validate
from kt_transfer.analysis import replicates
from kt_transfer.data import embedded, pipeline, sources, splits
from kt_transfer.runs import experiment

TARGET_SPEC = embedded.EmbeddedSpec(
    num_classes=4, train_per_class=10, val_per_class=4, image_size=72, seed=7
)


@pytest.fixture
def target_folder(data_cache):
    """Another generated dataset, read as a plain folder (--config.dataset.name=folder)."""
    return embedded.ensure_dataset(TARGET_SPEC, cache_dir=data_cache, log=lambda *_: None)


def _cross_config(tiny_config, target_folder):
    config = tiny_config
    config.source_dataset.name = "embedded"
    config.source_dataset.data_dir = config.dataset.data_dir
    config.source_dataset.embedded.num_classes = 6
    config.dataset.name, config.dataset.data_dir = "folder", target_folder
    config.split = splits.CROSS
    return config


def test_half_a_is_the_source_and_half_b_the_target(tiny_config, target_folder):
    config = _cross_config(tiny_config, target_folder)
    validate.validate(config)
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    assert dataset.name == "embedded-to-folder"
    assert dataset.split.A == tuple(range(6)) and dataset.split.B == tuple(range(6, 10))
    assert dataset.classes[0].startswith("source/") and dataset.classes[6].startswith("target/")
    # Half B's examples are the target folder's files, labelled 0..3 within the half.
    ds, _, count = dataset.source.examples("train", dataset.split.B, training=False, seed=0)
    examples = list(ds.as_numpy_iterator())
    assert count == len(examples) == 4 * 10
    assert all(e["name"].decode().startswith(target_folder) for e in examples)
    assert sorted({int(e["label"]) for e in examples}) == [0, 1, 2, 3]
    source_files = dataset.source.count("train", dataset.split.A)
    assert source_files == 6 * 10
    # A smaller target task samples the target only.
    smaller = dataset.source.with_train_per_class(3, seed=0)
    assert smaller.count("train", dataset.split.B) == 4 * 3
    assert smaller.count("train", dataset.split.A) == 6 * 10
    # A seeded replicate: the same halves, the run seed moved; a straddling half refused.
    replicate = dataset.with_split("cross.s1")
    assert (replicate.split.A, replicate.split.B, replicate.split.seed_offset) == (
        dataset.split.A,
        dataset.split.B,
        1,
    )
    with pytest.raises(ValueError, match="split=cross"):
        dataset.source.count("train", (5, 6))
    # The probe batch and the base's experiment directory follow the halves.
    probe = pipeline.probe_batch(
        dataset.source, dataset.split.B, size=8, resize_size=72, crop_size=67
    )
    assert probe[0].shape[0] == 8 and set(probe[1].numpy().tolist()) == {0, 1, 2, 3}
    assert os.path.join("embedded-to-folder", "cross") in experiment.experiment_dir(config, dataset)


def test_embedded_classes_from_first_class_are_the_same_classes_and_images(data_cache):
    spec = dict(train_per_class=2, val_per_class=1, image_size=24, seed=3)
    whole = embedded.ensure_dataset(embedded.EmbeddedSpec(num_classes=4, **spec), data_cache)
    tail = embedded.ensure_dataset(
        embedded.EmbeddedSpec(num_classes=2, first_class=2, **spec), data_cache
    )
    assert (
        tail != whole
        and sorted(os.listdir(os.path.join(tail, "train")))
        == sorted(os.listdir(os.path.join(whole, "train")))[2:]
    )
    for folder in os.listdir(os.path.join(tail, "train")):
        for name in os.listdir(os.path.join(tail, "train", folder)):
            with open(os.path.join(tail, "train", folder, name), "rb") as a:
                with open(os.path.join(whole, "train", folder, name), "rb") as b:
                    assert a.read() == b.read()


def test_cross_dataset_config_validates_and_reads_two_disjoint_class_sets(tmp_path):
    config = config_files.load("cross_dataset")
    config.mode, config.n, config.workdir = "AnB+", 3, str(tmp_path)
    validate.validate(config)
    source, target = config.source_dataset.embedded, config.dataset.embedded
    assert source.first_class + source.num_classes <= target.first_class
    config.dataset.embedded.first_class = 60
    with pytest.raises(validate.ConfigError, match=r"dataset\.embedded\.first_class"):
        validate.validate(config)


def test_the_source_changes_the_experiment_id_and_its_absence_keeps_the_old_ones(
    tiny_config, target_folder
):
    config = config_files.load("embedded")
    dataset = sources.Dataset("embedded", None, splits.Split("random0", (0,), (1,)))
    before = experiment.experiment_dir(config, dataset)
    del config["source_dataset"]  # a config from before source_dataset existed
    assert experiment.experiment_dir(config, dataset) == before
    cross = _cross_config(tiny_config, target_folder)
    other = cross.copy_and_resolve_references()
    other.source_dataset.embedded.seed = 3
    assert experiment.experiment_dir(cross, dataset) != experiment.experiment_dir(other, dataset)


def test_the_seeds_of_one_dataset_pair_are_its_units_and_a_split_s_seeds_are_not():
    assert replicates.partition(("cross.s1", "AtoB")) == "cross.s1"
    assert replicates.partition(("random0.s1", "AtoB")) == "random0"
    values = {("cross", "AtoB"): 0.2, ("cross.s1", "AtoB"): 0.4, ("cross", "BtoA"): 0.6}
    assert sorted(replicates.nest(values)) == pytest.approx([0.4, 0.4])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"split": "random0"}, r"--config\.split='random0'.*the split is 'cross'"),
        ({"source_dataset.name": "", "split": "cross"}, r"--config\.source_dataset\.name"),
        (
            {"source_dataset.name": "folder", "source_dataset.data_dir": "/nonexistent"},
            r"--config\.source_dataset\.data_dir",
        ),
        ({"source_dataset.name": "tfds"}, r"--config\.source_dataset\.tfds_name"),
        ({"source_dataset.name": "imagenet"}, r"--config\.source_dataset\.name"),
        (
            {"mode": "grid", "grid.splits": ("cross", "random1")},
            r"--config\.grid\.splits='random1'",
        ),
    ],
)
def test_a_bad_pairing_of_datasets_and_split_is_named(
    overrides, message, tiny_config, target_folder
):
    config = _cross_config(tiny_config, target_folder)
    for key, value in overrides.items():
        node, *path = key.split(".")
        if path:
            config[node][path[0]] = value
        else:
            config[node] = value
    with pytest.raises(validate.ConfigError, match=message):
        validate.validate(config)


@pytest.mark.slow
def test_a_grid_between_two_datasets(tmp_path, data_cache, target_folder):
    """baseA on the source dataset, baseB and every transfer on the target, with the
    target's base as the findings' reference."""
    workdir = tmp_path / "wd"
    result = run_cli(
        f"--config={TINY}",
        "--mode=grid",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={target_folder}",
        "--config.dataset.name=folder",
        "--config.source_dataset.name=embedded",
        f"--config.source_dataset.data_dir={data_cache}",
        "--config.source_dataset.embedded.num_classes=6",
        "--config.split=cross",
        "--config.grid.splits=('cross',)",
        "--config.grid.ns=(1, 2)",
        "--config.grid.treatments=('AnB', 'BnB')",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    root = workdir / "embedded-to-folder"
    (exp,) = os.listdir(root / "cross")
    metrics = {
        name: json.load(open(root / "cross" / exp / name / "metrics.json"))
        for name in ("baseA", "baseB", "A1B", "A2B", "B1B", "B2B")
    }
    assert metrics["baseA"]["num_classes"] == 6  # the source's classes
    assert all(metrics[n]["num_classes"] == 4 for n in ("baseB", "A1B", "A2B", "B1B"))
    assert all(m["status"] == "finished" for m in metrics.values())
    (report,) = [d for d in os.listdir(root) if d.startswith("grid-")]
    table = open(root / report / "results.csv").read().splitlines()
    assert len(table) == 1 + 6
    findings = open(root / report / "findings.md").read()
    assert "Between two datasets" in findings and "training noise only" in findings
    assert "1 replicate(s) (split, direction): cross AtoB" in findings
    assert os.path.exists(root / report / "results.png")
