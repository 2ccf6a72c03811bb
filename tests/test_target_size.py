"""A smaller target task (train.target_images_per_class): each network trains on a seeded
sample of its half's classes, while a transfer copies a source base trained on its whole
half; the grid runs one experiment per target size."""

import json
import os

import pytest

from kt_transfer import config_files
from kt_transfer.analysis import results, target_sizes
from kt_transfer.data import pipeline, sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment, grid


def test_a_sample_per_class_is_seeded_stable_and_exact():
    paths = [f"c{label}/{i:03d}.jpg" for label in range(3) for i in range(10)]
    labels = [label for label in range(3) for _ in range(10)]
    kept, kept_labels = sources.sample_per_class(paths, labels, 4, seed=7)
    assert [kept_labels.count(label) for label in range(3)] == [4, 4, 4]
    assert all(p.startswith(f"c{label}/") for p, label in zip(kept, kept_labels))
    assert kept == sources.sample_per_class(paths, labels, 4, seed=7)[0]  # the same sample
    assert kept != sources.sample_per_class(paths, labels, 4, seed=8)[0]  # another split's
    assert sources.sample_per_class(paths, labels, 99, seed=7)[0] == paths  # all when fewer


def test_a_transfer_copies_a_full_source_base_and_a_selffer_its_reduced_one():
    config = config_files.load("tiny")
    config.train.target_images_per_class = 3
    transfer_base = experiment.base_config(config, transfer.parse_treatment("AnB+", 2))
    selffer_base = experiment.base_config(config, transfer.parse_treatment("BnB+", 2))
    restart_base = experiment.base_config(config, transfer.parse_treatment("BnB+", 8))
    assert transfer_base.train.target_images_per_class == 0  # the source saw its whole half
    assert selffer_base.train.target_images_per_class == 3
    assert restart_base.train.target_images_per_class == 3
    full = config_files.load("tiny")
    assert [c.train.target_images_per_class for c in grid.target_size_configs(full)] == [0]
    full.grid.target_images_per_class = (5, 0, 5)
    assert [c.train.target_images_per_class for c in grid.target_size_configs(full)] == [0, 5]


@pytest.mark.slow
def test_reduced_target_networks_train_on_the_sample_and_copy_full_source_bases(tiny_config):
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    full_dir = experiment.experiment_dir(tiny_config, dataset)
    reduced = tiny_config.copy_and_resolve_references()
    reduced.train.target_images_per_class = 3
    reduced_dir = experiment.experiment_dir(reduced, dataset)
    assert reduced_dir != full_dir
    half_b = dataset.split.half("B")
    source = dataset.source.with_train_per_class(3, pipeline.run_seed(reduced, dataset))
    assert source.count("train", half_b) == 3 * len(half_b)  # 3 of the 10 per class
    assert source.count("val", half_b) == dataset.source.count("val", half_b)
    quiet = dict(log=lambda *_: None)
    experiment.run_treatment(reduced, dataset, transfer.parse_treatment("AnB+", 1), **quiet)
    experiment.run_treatment(reduced, dataset, transfer.parse_treatment("BnB+", 1), **quiet)
    # AnB+ copied baseA trained on all of half A (the full experiment); BnB+ copied the
    # reduced baseB, which is also the target's reference base in the reduced experiment.
    assert os.path.exists(os.path.join(full_dir, "baseA", "model.keras"))
    assert not os.path.exists(os.path.join(reduced_dir, "baseA"))
    assert os.path.exists(os.path.join(reduced_dir, "baseB", "model.keras"))
    assert not os.path.exists(os.path.join(full_dir, "baseB"))
    for run in ("A1B+", "B1B+"):
        metrics = experiment.read_metrics(os.path.join(reduced_dir, run))
        assert metrics["status"] == "finished", metrics


def _write_network(workdir, config, split, run, mode, n, top1):
    """A finished run's metrics.json and config.json, as the run store writes them."""
    run_dir = os.path.join(workdir, "embedded", split, experiment.experiment_id(config), run)
    os.makedirs(run_dir)
    metrics = {"mode": mode, "n": n, "status": "finished", "top1": top1, "top5": top1}
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)


def test_the_change_of_anb_plus_minus_bnb_plus_with_target_size_is_paired(tmp_path):
    """4 partitions x 2 directions at the full half and at 3 images a class: AnB+ - BnB+
    is -0.01 + s/1000 at the full half and +0.02 + 2s/1000 reduced (s: the partition), so
    the paired change is +0.03 + s/1000, on average +0.0315."""
    workdir = str(tmp_path)
    full = config_files.load("tiny")
    reduced = config_files.load("tiny")
    reduced.train.target_images_per_class = 3
    for s in range(4):
        split = f"random{s}"
        for config, gap, base in (
            (full, -0.01 + s / 1000, 0.5),
            (reduced, 0.02 + 2 * s / 1000, 0.4),
        ):
            for run, mode, n, top1 in (
                ("baseA", "baseA", 0, base),
                ("baseB", "baseB", 0, base),
                ("A1B+", "AnB+", 1, 0.45 + gap),
                ("B1B+", "BnB+", 1, 0.45),
                ("B1A+", "BnA+", 1, 0.40 + gap),
                ("A1A+", "AnA+", 1, 0.40),
            ):
                _write_network(workdir, config, split, run, mode, n, top1)
    _write_network(workdir, full, "natman", "baseB", "baseB", 0, 0.9)  # not the grid's

    known = target_sizes.sizes(workdir)
    full_id, reduced_id = experiment.experiment_id(full), experiment.experiment_id(reduced)
    assert known[("embedded", reduced_id)] == (3, full_id)
    assert known[("embedded", full_id)] == (0, full_id)
    (row,) = target_sizes.compare(results.gather(workdir), known)
    assert row["size"] == 3 and row["ns"] == [1]
    assert row["base_full"].mean == pytest.approx(0.5)  # natman's base left out
    assert row["base_reduced"].mean == pytest.approx(0.4)
    assert row["d_full"].mean == pytest.approx(-0.01 + 1.5 / 1000)
    assert row["d_reduced"].mean == pytest.approx(0.02 + 3 / 1000)
    change = row["change"]
    assert change.mean == pytest.approx(0.0315) and change.count == 4 and change.replicates == 8
    assert change.low < 0.0315 < change.high
    written = results.write_report(workdir, str(tmp_path / "report"))
    table = open(next(p for p in written if p.endswith("target_sizes.md"))).read()
    assert f"| 3 (id {reduced_id}; full: {full_id}) | 1 | 0.5000 / 0.4000 |" in table
    assert "+0.0315 [" in table
