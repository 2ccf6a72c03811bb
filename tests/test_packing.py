"""Networks trained as a pack (training/packing.py): each as it would be trained alone."""

import json
import os
import shutil

import numpy as np
import pytest

from kt_transfer.data import sources
from kt_transfer.networks import caffenet, transfer
from kt_transfer.runs import experiment
from kt_transfer.training import backups

QUIET = dict(log=lambda *_: None)


def _weights(out):
    model = experiment.load_network(out)
    return {name: model.get_layer(name).get_weights() for name in caffenet.LAYER_NAMES}


def _treatments(*modes, n=2):
    return [transfer.parse_treatment(mode, n) for mode in modes]


@pytest.fixture
def deterministic_config(tiny_config):
    tiny_config.dataset.deterministic = True  # the same stream each time: comparable runs
    return tiny_config


def test_a_network_trained_in_a_pack_ends_as_it_does_trained_alone(deterministic_config):
    # Bit for bit: the same stream (one seed per split), the same initial weights (one
    # seed per run) and the same step, taken side by side. A base reads its half's stream
    # like the transfers into that half, so baseB packs with them as the grid packs it.
    config = deterministic_config
    dataset = sources.resolve_dataset(config, **QUIET)
    treatments = _treatments("baseB", "AnB", "AnB+", "RnB")
    packed = experiment.run_pack(config, dataset, treatments, **QUIET)
    alone_config = config.copy_and_resolve_references()
    alone_config.workdir = config.workdir + "-alone"
    alone = [experiment.run_treatment(alone_config, dataset, t, **QUIET) for t in treatments]
    base = _weights(experiment.run_dir(config, dataset, transfer.parse_treatment("baseA")))
    for treatment, (metrics, out), (alone_metrics, alone_out) in zip(treatments, packed, alone):
        assert metrics["status"] == "finished" and metrics["steps"] == config.train.total_steps
        assert metrics["pack"] == [t.run_name for t in treatments]
        assert metrics["top1"] == alone_metrics["top1"]
        assert [e["step"] for e in metrics["evaluations"]] == [2, 4]
        weights, alone_weights = _weights(out), _weights(alone_out)
        for name in caffenet.LAYER_NAMES:
            for w, a in zip(weights[name], alone_weights[name]):
                np.testing.assert_array_equal(w, a, err_msg=name)
        # Each member keeps a run of its own: backups, TensorBoard logs, export.
        assert backups.list_backups(os.path.join(out, "checkpoints"))
        assert os.listdir(os.path.join(out, "logs"))
        assert os.path.exists(os.path.join(out, "saved_model"))
        if treatment.run_name == "A2B":  # frozen copied layers: the base's, bit for bit
            for name in ("conv1", "conv2"):
                for w, b in zip(weights[name], base[name]):
                    np.testing.assert_array_equal(w, b)
    # A pack's time is shared: each member records its part of the pack's wall time.
    seconds = [m["seconds"] for m, _ in packed]
    assert max(seconds) - min(seconds) < 0.5


def test_a_pack_refuses_networks_of_two_target_halves(tiny_config):
    dataset = sources.resolve_dataset(tiny_config, **QUIET)
    with pytest.raises(ValueError, match="one target half"):
        experiment.run_pack(tiny_config, dataset, _treatments("AnB", "BnA"), **QUIET)


def test_a_diverging_member_fails_alone_and_the_others_finish(tiny_config):
    tiny_config.train.copied_lr_mult = 1e9  # the fine-tuned network's loss overflows
    dataset = sources.resolve_dataset(tiny_config, **QUIET)
    (frozen, _), (tuned, tuned_out) = experiment.run_pack(
        tiny_config, dataset, _treatments("AnB", "AnB+", n=7), **QUIET
    )
    assert tuned["status"] == "failed" and "NaN or infinite" in tuned["reason"]
    assert not os.path.exists(os.path.join(tuned_out, experiment.MODEL_FILE))
    assert frozen["status"] == "finished" and frozen["steps"] == tiny_config.train.total_steps
    assert np.isfinite(frozen["top1"])


@pytest.mark.slow
def test_a_pack_resumed_with_its_backups_at_two_steps_finishes_every_member(
    deterministic_config,
):
    config = deterministic_config
    config.train.total_steps, config.train.steps_per_epoch = 6, 2
    dataset = sources.resolve_dataset(config, **QUIET)
    treatments = _treatments("AnB", "BnB")
    experiment.run_pack(config, dataset, treatments, **QUIET)
    outs = [experiment.run_dir(config, dataset, t) for t in treatments]
    # As if killed after the first member's backup at step 6 but before the second's,
    # and before either run was stored: one member resumes from step 5, the other from 6.
    for out in outs:
        os.remove(os.path.join(out, experiment.METRICS_FILE))
        os.remove(os.path.join(out, experiment.MODEL_FILE))
    shutil.rmtree(backups.list_backups(os.path.join(outs[1], "checkpoints"))[-1])
    lines = []
    resumed = experiment.run_pack(config, dataset, treatments, log=lines.append)
    assert any("backups are at steps [5, 6]" in line for line in lines), lines
    for (metrics, _), start in zip(resumed, (6, 5)):
        assert metrics["status"] == "finished" and metrics["steps"] == 6
        assert metrics["resumed_from_step"] == start
        assert [e["step"] for e in metrics["evaluations"]] == [2, 4, 6]
    stored = json.load(open(os.path.join(outs[1], experiment.METRICS_FILE)))
    assert stored["resumed_from_step"] == 5


@pytest.mark.slow
def test_a_pack_resumed_in_the_middle_of_an_epoch_finishes_every_member(
    deterministic_config, monkeypatch
):
    # Killed with every member's backup at step 6 of 12 (epochs of 4 steps): the pack fits
    # the rest of epoch 2, then epoch 3. Each fit opens the members' TensorBoard writers
    # anew, as a network's own fit does; the second fit's validation used to write to a
    # writer the first had closed, and the whole pack failed.
    config = deterministic_config
    config.train.total_steps, config.train.steps_per_epoch = 12, 4
    config.train.backup_every_steps = 2
    monkeypatch.setattr(backups, "KEEP_BACKUPS", 10)  # keep the backup at step 6
    dataset = sources.resolve_dataset(config, **QUIET)
    treatments = _treatments("baseB", "AnB")
    first = experiment.run_pack(config, dataset, treatments, **QUIET)
    for _, out in first:
        os.remove(os.path.join(out, experiment.METRICS_FILE))
        os.remove(os.path.join(out, experiment.MODEL_FILE))
        for backup in backups.list_backups(os.path.join(out, "checkpoints")):
            if int(backup.rsplit("-", 1)[1]) > 6:
                shutil.rmtree(backup)
    lines = []
    resumed = experiment.run_pack(config, dataset, treatments, log=lines.append)
    assert "Resuming from the backup at step 6 of 12" in lines
    for (metrics, out), (before, _) in zip(resumed, first):
        assert metrics["status"] == "finished" and metrics["resumed_from_step"] == 6
        assert [e["step"] for e in metrics["evaluations"]] == [4, 8, 12]
        assert metrics["top1"] == before["top1"]  # the same stream, resumed where it was
        assert os.path.exists(os.path.join(out, experiment.MODEL_FILE))


@pytest.mark.slow
def test_finished_members_are_not_trained_again(tiny_config):
    dataset = sources.resolve_dataset(tiny_config, **QUIET)
    first, _ = experiment.run_treatment(tiny_config, dataset, _treatments("AnB")[0], **QUIET)
    packed = experiment.run_pack(tiny_config, dataset, _treatments("AnB", "BnB", "RnB"), **QUIET)
    assert packed[0][0] == first  # read, not trained
    assert packed[1][0]["pack"] == ["B2B", "R2B"]
