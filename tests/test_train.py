"""The training loop with the project's own solver: a run killed mid-epoch and resumed
ends where an uninterrupted run ends (same steps, data stream and weights), and under
mixed_float16 the step count is the steps trained, not the updates the loss scaler let
through."""

import os

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from kt_transfer.networks import caffenet, transfer
from kt_transfer.training import backups, train

BATCH, CLASSES = 4, 6


def _train_data(first_step, scale=1.0):
    """A deterministic stream: example i is a function of i, so its position is visible."""

    def example(i):
        x = tf.cast(i, tf.float32)
        features = tf.stack([tf.sin(x), tf.cos(x), tf.cast(i % 7, tf.float32) / 7, 1.0])
        return features * scale, i % CLASSES

    return tf.data.Dataset.range(10**6).skip(first_step * BATCH).map(example).batch(BATCH)


def _val_data():
    return _train_data(0).take(3)


def _train_config(**overrides):
    """The embedded config's solver block: Caffe SGD with momentum and coupled decay,
    bias lr x2, the step schedule with warmup."""
    return ml_collections.ConfigDict(
        {
            "total_steps": 12,
            "steps_per_epoch": 4,
            "backup_every_steps": 5,
            "base_lr": 0.05,
            "lr_step_size": 8,
            "lr_gamma": 0.1,
            "warmup_steps": 3,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "bias_lr_mult": 2.0,
            "jit_compile": False,
            **overrides,
        }
    )


def _model(train_config, treatment="AnB+"):
    """Eight dense layers named conv1..fc8, compiled with the real solver for a "+"
    treatment: copied layers 1..2 at lr x0.1, the rest fresh at x1 (a MultiOptimizer of
    CaffeSGDs with StepSchedules)."""
    keras.utils.set_random_seed(7)
    x = inputs = keras.Input((4,))
    for name in caffenet.LAYER_NAMES[:-1]:
        x = keras.layers.Dense(8, activation="relu", name=name)(x)
    outputs = keras.layers.Dense(CLASSES, name="fc8", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    plans = transfer.parse_treatment(treatment, 2).layer_plans(copied_lr_mult=0.1)
    for plan in plans:
        model.get_layer(plan.name).trainable = plan.trainable
    train.compile_model(model, train_config, plans)
    return model


class _Killed(Exception):
    pass


class _KillAfter(keras.callbacks.Callback):
    def __init__(self, steps):
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            raise _Killed


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    config = _train_config()
    whole = _model(config)
    expected = train.fit_and_evaluate(
        whole, _train_data, _val_data(), str(tmp_path / "a"), config, verbose=0
    )
    assert expected["steps"] == 12 and expected["resumed_from_step"] == 0
    assert isinstance(whole.optimizer, keras.optimizers.MultiOptimizer)

    killed = _model(config)
    with pytest.raises(_Killed):  # after the step-5 backup, in the second epoch
        train.fit_and_evaluate(
            killed,
            _train_data,
            _val_data(),
            str(tmp_path / "b"),
            config,
            verbose=0,
            extra_callbacks=[_KillAfter(6)],
        )
    resumed = _model(config)
    metrics = train.fit_and_evaluate(
        resumed, _train_data, _val_data(), str(tmp_path / "b"), config, verbose=0
    )
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == 5
    assert metrics["seconds"] > 0
    for got, want in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Momentum and every group's iteration count (hence its warmup and step schedule)
    # came back from the backup too.
    for got, want in zip(resumed.optimizer.variables, whole.optimizer.variables):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6, atol=1e-7)
    assert metrics["top1"] == pytest.approx(expected["top1"])
    # Every epoch's evaluation is kept, the first process's included; the final figures
    # are the last one's, and the paper's figure of merit is their mean (fewer than 10).
    assert [e["step"] for e in metrics["evaluations"]] == [4, 8, 12]
    for got, want in zip(metrics["evaluations"], expected["evaluations"]):
        assert got["top1"] == pytest.approx(want["top1"]) and got["step"] == want["step"]
    assert metrics["top1"] == metrics["evaluations"][-1]["top1"]
    assert metrics["mean_highest_top1"] == pytest.approx(
        np.mean([e["top1"] for e in expected["evaluations"]])
    )
    final = whole.evaluate(_val_data(), return_dict=True, verbose=0)
    assert expected["top1"] == pytest.approx(final["top1"])  # the same as evaluating anew
    assert expected["loss"] == pytest.approx(final["loss"], rel=1e-5)
    # The last backup and the one before it (a fallback if the last is damaged later).
    assert [
        os.path.basename(p) for p in backups.list_backups(str(tmp_path / "b" / "checkpoints"))
    ] == ["backup-000000010", "backup-000000012"]


def test_mean_highest_averages_the_papers_top_fraction_of_evaluations():
    # The paper's 10 of 450: one of 12 or 40, 10 of 450, 20 of 900.
    assert [train.highest_count(k) for k in (1, 12, 40, 67, 450, 900)] == [1, 1, 1, 1, 10, 20]
    values = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.55, 0.45, 0.0]
    evaluations = [{"step": s, "top1": v} for s, v in enumerate(values)]
    assert train.mean_highest(evaluations) == pytest.approx(0.9)  # the best of 12
    assert train.mean_highest(evaluations, k=10) == pytest.approx(
        np.mean([0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.3, 0.2])
    )
    curve = [{"step": s, "top1": 0.5 + (s % 45) / 1000} for s in range(450)]  # ten peaks
    assert train.mean_highest(curve) == pytest.approx(0.544)
    assert train.mean_highest([{"step": 1, "top1": None}]) is None
    assert train.mean_highest([]) is None


def test_mixed_float16_counts_every_trained_step_and_resumes_exactly(tmp_path):
    """Keras' LossScaleOptimizer does not advance `iterations` on a step it skips
    (overflowing gradients); the run's step count, backups and resume do not use it."""
    config = _train_config(total_steps=8, backup_every_steps=3, base_lr=0.01)

    def data(first_step):  # large inputs: float16 overflows
        return _train_data(first_step, scale=3e4)

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _model(config)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        metrics = train.fit_and_evaluate(
            model, data, _val_data(), str(tmp_path / "a"), config, verbose=0
        )
        skipped = 8 - int(model.optimizer.iterations.numpy())
        killed = _model(config)
        with pytest.raises(_Killed):
            train.fit_and_evaluate(
                killed,
                data,
                _val_data(),
                str(tmp_path / "b"),
                config,
                verbose=0,
                extra_callbacks=[_KillAfter(4)],
            )
        resumed = _model(config)
        again = train.fit_and_evaluate(
            resumed, data, _val_data(), str(tmp_path / "b"), config, verbose=0
        )
    finally:
        keras.config.set_dtype_policy("float32")
    assert skipped > 0  # the case this guards: some steps were skipped by the scaler
    assert metrics["steps"] == 8
    _, state = backups.latest_backup(str(tmp_path / "a" / "checkpoints"))
    assert state["step"] == 8
    assert again["resumed_from_step"] == 3 and again["steps"] == 8
    for got, want in zip(resumed.get_weights(), model.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


# Faults (issue 22): what a kill, a damaged backup or a full disk may not lose.


def _killed_run(tmp_path, config, kill_after, name="b"):
    """A run killed (an exception out of fit, as kill -9 leaves it) after `kill_after`
    steps; returns its run directory."""
    run = str(tmp_path / name)
    with pytest.raises(_Killed):
        train.fit_and_evaluate(
            _model(config),
            _train_data,
            _val_data(),
            run,
            config,
            verbose=0,
            extra_callbacks=[_KillAfter(kill_after)],
        )
    return run


def test_a_kill_after_an_epoch_boundary_keeps_that_epochs_evaluation(tmp_path):
    """The backup at the step that ends an epoch is written after the epoch's validation,
    so a run killed in the next epoch resumes with that evaluation."""
    config = _train_config(backup_every_steps=2)  # step 4 ends epoch 1 and is an interval
    run = _killed_run(tmp_path, config, kill_after=5)
    _, state = backups.latest_backup(os.path.join(run, "checkpoints"))
    assert state["step"] == 4 and [e["step"] for e in state["evaluations"]] == [4]
    metrics = train.fit_and_evaluate(
        _model(config), _train_data, _val_data(), run, config, verbose=0
    )
    assert metrics["resumed_from_step"] == 4
    assert [e["step"] for e in metrics["evaluations"]] == [4, 8, 12]


def _resume_with_a_warning(run, config):
    """Resumes the run; its metrics and the one `warning: backup` line it logged."""
    log = []
    metrics = train.fit_and_evaluate(
        _model(config), _train_data, _val_data(), run, config, verbose=0, log=log.append
    )
    return metrics, next(line for line in log if line.startswith("warning: backup"))


def test_a_garbled_backup_is_reported_and_the_previous_one_is_used(tmp_path):
    config = _train_config(backup_every_steps=2)
    run = _killed_run(tmp_path, config, kill_after=7)  # backups at 4 and 6 kept
    checkpoints = os.path.join(run, "checkpoints")
    newest = backups.list_backups(checkpoints)[-1]
    assert newest.endswith("backup-000000006")
    with open(os.path.join(newest, backups.STATE_FILE), "w") as f:
        f.write('{"step": 6, "evalu')  # garbled: cut short by a crash of the disk
    metrics, warning = _resume_with_a_warning(run, config)
    assert metrics["resumed_from_step"] == 4 and metrics["steps"] == 12
    assert newest in warning and "state.json does not parse" in warning
    # Set aside, not deleted, and not in the way: the new backups were kept.
    assert os.path.isdir(os.path.join(checkpoints, "unreadable-backup-000000006"))
    assert [os.path.basename(p) for p in backups.list_backups(checkpoints)] == [
        "backup-000000010",
        "backup-000000012",
    ]


def test_a_truncated_backup_weights_file_falls_back_to_the_previous_backup(tmp_path):
    config = _train_config(backup_every_steps=2)
    run = _killed_run(tmp_path, config, kill_after=7)
    newest = backups.list_backups(os.path.join(run, "checkpoints"))[-1]
    weights = os.path.join(newest, backups.WEIGHTS_FILE)
    os.truncate(weights, os.path.getsize(weights) // 2)
    metrics, warning = _resume_with_a_warning(run, config)
    assert metrics["resumed_from_step"] == 4 and metrics["steps"] == 12
    assert newest in warning and "backup.weights.h5 cannot be read (truncated" in warning
    assert len(warning.splitlines()) == 1


def test_a_resumed_run_numbers_its_epochs_out_of_the_whole_run(tmp_path, capsys):
    config = _train_config()  # 3 epochs of 4 steps, backups every 5
    run = _killed_run(tmp_path, config, kill_after=6)
    capsys.readouterr()
    train.fit_and_evaluate(_model(config), _train_data, _val_data(), run, config, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 2/3" in out and "Epoch 3/3" in out
    assert "Epoch 2/2" not in out and "Epoch 1/1" not in out


def test_a_full_disk_in_the_middle_of_a_backup_is_an_error_and_leaves_nothing_behind(
    tmp_path, monkeypatch, small_filesystem
):
    """The space check before a backup is skipped here, so that the weights file's write
    itself runs out of room (h5py's failure case)."""
    config = _train_config(backup_every_steps=2)
    run = tmp_path / "run"
    checkpoints = str(run / "checkpoints")
    with small_filesystem(checkpoints, "1m"):
        with open(os.path.join(checkpoints, "filler"), "wb") as f:
            f.write(b"\0" * (1000 * 1024))
        monkeypatch.setattr(backups.atomic, "check_space", lambda path, needed: None)
        with pytest.raises(
            backups.atomic.DiskFullError, match=f"no space left on the device writing {checkpoints}"
        ):
            train.fit_and_evaluate(
                _model(config), _train_data, _val_data(), str(run), config, verbose=0
            )
        assert os.listdir(checkpoints) == ["filler"]  # no temporary backup folder
        monkeypatch.undo()
        with pytest.raises(backups.atomic.DiskFullError, match="about .* KB needed"):
            train.fit_and_evaluate(
                _model(config), _train_data, _val_data(), str(run), config, verbose=0
            )  # refused before writing this time
        assert os.listdir(checkpoints) == ["filler"]
        os.remove(os.path.join(checkpoints, "filler"))
        metrics = train.fit_and_evaluate(
            _model(config), _train_data, _val_data(), str(run), config, verbose=0
        )
    assert metrics["steps"] == 12 and [e["step"] for e in metrics["evaluations"]] == [4, 8, 12]


def test_a_backup_of_another_network_is_set_aside_and_leaves_the_weights_as_they_were(
    tmp_path,
):
    """Keras loads what it can of a mismatched weights file before it raises; the
    network must not keep that part."""
    config = _train_config(backup_every_steps=2)
    run = _killed_run(tmp_path, config, kill_after=5)
    keras.utils.set_random_seed(3)
    x = inputs = keras.Input((4,))
    for name in caffenet.LAYER_NAMES[:-1]:
        x = keras.layers.Dense(16 if name == "fc7" else 8, activation="relu", name=name)(x)
    other = keras.Model(inputs, keras.layers.Dense(CLASSES, name="fc8")(x))
    plans = transfer.parse_treatment("AnB+", 2).layer_plans(copied_lr_mult=0.1)
    train.compile_model(other, config, plans)
    other.optimizer.build(other.trainable_variables)
    before = [np.array(v) for v in other.weights]
    log = []
    done = backups.restore_backup(other, os.path.join(run, "checkpoints"), log.append)
    assert done == (0, 0.0, [])
    kept = len(backups.list_backups(os.path.join(run, "checkpoints")))  # set aside, each
    assert kept == 0 and sum("do not load into this network" in line for line in log) == 2
    for got, want in zip(other.weights, before):
        np.testing.assert_array_equal(np.array(got), want)
