"""--mode=similarity on real (tiny) trained networks: CKA curves and matrix, CKA of a
transfer network with its base, probes and LogME per layer, and where they are written."""

import csv
import os

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from kt_transfer.analysis import representations
from kt_transfer.data import sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment


def test_similarity_mode_reads_trained_networks_and_writes_its_measures(tiny_config):
    tiny_config.similarity.update(
        max_images=24, probe_train_images=60, probe_epochs=5, transfer_images=24
    )
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    for mode, n in (("baseB", None), ("AnB", 1), ("AnB+", 1)):  # baseA comes with A1B
        experiment.run_treatment(
            tiny_config, dataset, transfer.parse_treatment(mode, n), log=lambda *_: None
        )
    # The seed control: baseA again from another seed, the split's seeded replicate.
    seeded_config = tiny_config.copy_and_resolve_references()
    seeded_config.split = "random0.s1"
    seeded = sources.resolve_dataset(seeded_config, log=lambda *_: None)
    experiment.run_treatment(
        seeded_config, seeded, transfer.parse_treatment("baseA"), log=lambda *_: None
    )
    lines = []
    rows = representations.run_similarity(tiny_config, dataset, log=lines.append)
    by = {(r["measure"], r["layer"]): r["value"] for r in rows}
    for half in ("A", "B"):
        values = [by[(f"CKA(baseA, baseB) on {half}", layer)] for layer in representations.LAYERS]
        assert all(-0.05 <= v <= 1.0 + 1e-9 for v in values), values
    # Against itself a network has CKA 1; against itself from another seed, below 1.
    batches = representations._images(tiny_config, dataset, "A", "val", 24)
    base_a = experiment.load_network(
        os.path.join(experiment.experiment_dir(tiny_config, dataset), "baseA")
    )
    assert np.allclose(representations.cka_between(base_a, base_a, batches, diagonal=True), 1)
    other_seed = [
        by[("CKA(baseA, baseA other seed) on A", layer)] for layer in representations.LAYERS
    ]
    assert all(v < 0.999 for v in other_seed[1:]), other_seed  # conv1: nearly linear maps
    assert ("CKA(baseB, baseB other seed) on B", "fc7") not in by  # no seeded baseB
    assert len([r for r in rows if r["measure"] == "CKA null 95th percentile on A"]) == 7
    reduced = [r for r in rows if r["measure"].startswith("LogME (6 PCs")]  # conv1: 6 channels
    assert len(reduced) == 7
    # A1B's conv1 is baseA's, copied and frozen: the same representation, CKA 1.
    assert by[("CKA(A1B, baseA)", "conv1")] > 1 - 1e-6
    assert by[("CKA(A1B, baseA)", "fc7")] < 0.999  # fresh layers learned something else
    assert ("CKA(A1B+, baseA)", "conv1") in by
    for measure in ("probe top-1 (baseA features, half B)", "LogME (baseA features, half B)"):
        assert len([r for r in rows if r["measure"] == measure]) == 7
    assert all(
        0 <= by[("probe top-1 (baseA features, half B)", layer)] <= 1
        for layer in representations.LAYERS
    )
    out = os.path.join(experiment.experiment_dir(tiny_config, dataset), "similarity")
    table = list(csv.DictReader(open(os.path.join(out, "similarity.csv"))))
    assert len(table) == len(rows)
    assert (
        "rank correlation" in open(os.path.join(out, "similarity.md")).read()
        or "no AnB curve" in open(os.path.join(out, "similarity.md")).read()
    )
    with open(os.path.join(out, "similarity.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    events = event_accumulator.EventAccumulator(
        os.path.join(out, "logs"), size_guidance={"tensors": 0, "images": 0}
    )
    events.Reload()
    assert any(tag.startswith("CKAbaseA_baseB_on_A") for tag in events.Tags()["tensors"])
    assert any("cka_matrix_half_B" in tag for tag in events.Tags()["tensors"])
    assert any("similarity: wrote" in line for line in lines)


def test_the_similarity_images_cover_every_class_of_the_half_in_mixed_batches(tiny_config):
    """Issue 25: not the first classes of a class-sorted list; no minibatch of one or
    two classes (the minibatch CKA estimator assumes randomly drawn batches)."""
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    half = dataset.split.half("B")  # 6 classes, 4 validation images each
    batches = representations._images(tiny_config, dataset, "B", "val", limit=12, batch_size=6)
    labels = np.concatenate([y for _, y in batches])
    assert len(labels) == 12 and sorted(set(labels.tolist())) == list(range(len(half)))
    assert np.bincount(labels).tolist() == [2] * len(half)  # an equal share each
    assert all(len(set(y.tolist())) > 2 for _, y in batches)


def test_mixed_batches_take_equal_shares_then_shuffle():
    by_class = {c: [np.full((2, 2, 3), c, np.uint8)] * 40 for c in range(25)}
    batches = representations.mixed_batches(by_class, limit=1000, batch_size=100, seed=1)
    labels = np.concatenate([y for _, y in batches])
    assert len(batches) == 10 and np.bincount(labels).tolist() == [40] * 25
    assert min(len(set(y.tolist())) for _, y in batches) >= 15  # every batch mixes them
    for images, y in batches:  # images stay with their labels
        assert (images[:, 0, 0, 0] == y).all()
    short = {0: by_class[0][:3], 1: by_class[1][:40]}  # a class with fewer images
    labels = np.concatenate([y for _, y in representations.mixed_batches(short, 20, 8)])
    assert np.bincount(labels).tolist() == [3, 17]
