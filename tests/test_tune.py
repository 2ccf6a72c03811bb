"""The keras-tuner sweep of the copied layers' learning-rate scale: in one process, after
a restart, and distributed (a chief and two workers on 127.0.0.1)."""

import collections
import json
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import TINY

from kt_transfer.data import sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment, tune


def _sweep_config(tiny_config):
    tiny_config.mode, tiny_config.n = "tune", 2
    tiny_config.tune.copied_lr_mults = (1.0, 0.1, 0.0)
    tiny_config.tune.max_trials = 3
    return tiny_config


@pytest.mark.slow
def test_a_sweep_runs_each_scale_once_and_resumes_without_rerunning(tiny_config):
    config = _sweep_config(tiny_config)
    config.tune.holdout_fraction = 0.0  # choose on validation top-1 (the biased objective)
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    log = []
    rows = tune.run_sweep(config, dataset, log=log.append)
    assert sorted(r["scales"] for r in rows) == [
        "copied_lr_mult=0",
        "copied_lr_mult=0.1",
        "copied_lr_mult=1",
    ]
    assert rows[0]["top1"] == max(r["top1"] for r in rows)
    assert {os.path.basename(r["run"]) for r in rows} == {"A2B+", "A2B+_lr0.1", "A2B+_lr0"}
    for row in rows:
        metrics = experiment.read_metrics(row["run"])
        assert metrics["status"] == "finished" and metrics["top1"] == row["top1"]
        assert row["objective"] == "val_top1" and "holdout_top1" not in metrics
    best = json.load(
        open(os.path.join(tune.tune_dir(config, dataset, tune.treatment_of(config)), "best.json"))
    )
    assert os.path.exists(os.path.join(best["run"], "saved_model", "saved_model.pb"))
    trained = [m for m in log if m.startswith("Training A2B+")]
    assert len(trained) == 3
    again = []
    assert len(tune.run_sweep(config, dataset, log=again.append)) == 3
    assert not [m for m in again if m.startswith("Training")]  # nothing trained again


def test_the_sweep_refuses_what_it_cannot_tune(tiny_config):
    config = _sweep_config(tiny_config)
    config.tune.treatment = "AnB"
    with pytest.raises(ValueError, match="AnB\\+ or BnB\\+"):
        tune.treatment_of(config)
    config.tune.treatment = "BnB+"
    config.tune.copied_fc_lr_mults = (1.0, 0.1)
    with pytest.raises(ValueError, match="n >= 6"):
        tune.treatment_of(config)
    config.n = 7
    assert tune.treatment_of(config).run_name == "B7B+"
    plans = transfer.parse_treatment("BnB+", 7).layer_plans(0.1, 1.0)
    assert [p.lr_mult for p in plans] == [0.1] * 5 + [1.0, 1.0, 1.0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_distributed_sweep_with_a_chief_and_two_workers(tmp_path, data_cache):
    port = _free_port()
    args = [
        sys.executable,
        "-m",
        "kt_transfer.main",
        f"--config={TINY}",
        "--mode=tune",
        "--n=2",
        "--config.tune.copied_lr_mults=(1.0, 0.3, 0.1, 0.0)",
        "--config.tune.max_trials=4",
        f"--workdir={tmp_path / 'wd'}",
        f"--config.dataset.data_dir={data_cache}",
    ]
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
    }
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        log = open(tmp_path / f"{tuner_id}.log", "w")
        procs[tuner_id] = subprocess.Popen(
            args, env={**env, "KERASTUNER_TUNER_ID": tuner_id}, stdout=log, stderr=subprocess.STDOUT
        )
    for tuner_id, proc in procs.items():
        assert proc.wait(timeout=600) == 0, open(tmp_path / f"{tuner_id}.log").read()[-3000:]
    logs = {t: open(tmp_path / f"{t}.log").read() for t in procs}
    trained = collections.Counter(
        name
        for t in ("tuner0", "tuner1")
        for name in re.findall(r"^Training (A2B\+\S*) on half", logs[t], re.M)
    )
    assert trained == collections.Counter(
        ["A2B+_ho0.1", "A2B+_lr0.3_ho0.1", "A2B+_lr0.1_ho0.1", "A2B+_lr0_ho0.1"]
    )
    assert "Training" not in logs["chief"]  # the chief only runs the oracle
    runs = [
        os.path.join(root, d)
        for root, dirs, _ in os.walk(tmp_path / "wd")
        for d in dirs
        if d.startswith("tune_A2B+")
    ]
    best = json.load(open(os.path.join(runs[0], "best.json")))
    assert os.path.exists(os.path.join(best["run"], "saved_model", "saved_model.pb"))
    assert "Best: copied_lr_mult=" in logs["chief"]
    summary = open(os.path.join(os.path.dirname(runs[0]), "tune_summary.md")).read()
    assert "| A2B+ | 2 |" in summary


def test_a_hyperband_trial_has_its_own_run_but_copies_the_full_base(tiny_config):
    config = _sweep_config(tiny_config)
    config.tune.tuner = "hyperband"
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    hp = tune.search_space(config.tune)
    hp.values["tuner/epochs"] = 1
    trial = tune.trial_config(config, hp)
    assert experiment.run_dir(trial, dataset, transfer.parse_treatment("AnB+", 2)).endswith(
        "A2B+_e1_ho0.1"
    )
    base = transfer.parse_treatment("baseA")
    assert experiment.run_dir(experiment.base_config(trial), dataset, base) == experiment.run_dir(
        config, dataset, base
    )
    oracle = tune.make_oracle(config)
    assert oracle.max_epochs == 2  # the config's 4 steps at 2 per epoch


def test_the_sweep_chooses_on_held_out_training_images_and_reports_validation_beside(tiny_config):
    """The objective is top-1 on a seeded 10% of the target half's training images that
    no trial trains on; validation top-1 is reported beside it, unused by the choice."""
    config = _sweep_config(tiny_config)
    config.tune.copied_lr_mults = (1.0, 0.0)
    config.tune.max_trials = 2
    config.tune.holdout_fraction = 0.3  # tiny: 10 images a class, so a larger share
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    rows = tune.run_sweep(config, dataset, log=lambda *_: None)
    assert [r["objective"] for r in rows] == ["holdout_top1"] * 2
    assert rows[0]["objective_top1"] == max(r["objective_top1"] for r in rows)
    for row in rows:
        metrics = experiment.read_metrics(row["run"])
        assert row["run"].endswith("_ho0.3")
        assert metrics["holdout_top1"] == row["objective_top1"] and metrics["top1"] == row["top1"]
    table = open(
        os.path.join(tune.tune_dir(config, dataset, tune.treatment_of(config)), "results.md")
    ).read()
    assert "Chosen by top-1 on 0.3 of the training images held out" in table
    assert "not used to choose" in table
    # The held-out images are a fixed part of the training images, disjoint from the rest.
    import numpy as np

    from kt_transfer.data import pipeline

    half = dataset.split.half("B")
    paths, _ = sources.list_files(dataset.source.root, "train", dataset.source.classes, half)
    held = pipeline.in_holdout(np.array(paths), 0.3, config.train.seed).numpy()
    assert 0.15 < held.mean() < 0.45
    again = pipeline.in_holdout(np.array(list(reversed(paths))), 0.3, config.train.seed).numpy()
    np.testing.assert_array_equal(held, again[::-1])  # by name, not by position
    kwargs = dict(resize_size=72, crop_size=67, batch_size=4, training=False)
    counted = {}
    for part in ("rest", "held"):
        ds = pipeline.make_dataset(dataset.source, "train", half, holdout=(part, 0.3, 0), **kwargs)
        counted[part] = sum(int(labels.shape[0]) for _, labels in ds)
    assert counted == {"rest": int((~held).sum()), "held": int(held.sum())}


@pytest.mark.slow
def test_a_sweep_of_a_resnet_scales_its_copied_blocks(tiny_config):
    """--mode=tune on another family: the copied blocks of A2B+ (stem, res1) get each
    scale, the sweep picks by its objective and every trial is a finished network."""
    config = _sweep_config(tiny_config)
    config.model.network, config.model.resnet.stages = "resnet", (1, 1)
    config.tune.copied_lr_mults, config.tune.max_trials = (1.0, 0.0), 2
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    rows = tune.run_sweep(config, dataset, log=lambda *_: None)
    assert sorted(r["scales"] for r in rows) == ["copied_lr_mult=0", "copied_lr_mult=1"]
    for row in rows:
        assert experiment.read_metrics(row["run"])["status"] == "finished"
    frozen_like = next(r for r in rows if r["scales"] == "copied_lr_mult=0")
    model = experiment.load_network(frozen_like["run"])
    base = experiment.load_network(os.path.join(os.path.dirname(frozen_like["run"]), "baseA"))
    import numpy as np

    for block in ("stem", "res1"):  # lr x0: the copied blocks did not move
        for a, b in zip(model.get_layer(block).weights, base.get_layer(block).weights):
            if "moving" not in a.path:  # BatchNorm statistics update in "+" (policy train)
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
