"""The training loop: a run killed mid-epoch and resumed ends where an uninterrupted run
ends: same steps, same data stream, same weights."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import keras

from kt_transfer import train

BATCH = 4


def _train_data(first_step):
    """A deterministic stream: example i is a function of i, so its position is visible."""
    def example(i):
        x = tf.cast(i, tf.float32)
        return tf.stack([tf.sin(x), tf.cos(x), tf.cast(i % 7, tf.float32) / 7, 1.0]), i % 3
    return (tf.data.Dataset.range(10**6).skip(first_step * BATCH).map(example)
            .batch(BATCH))


def _val_data():
    return _train_data(0).take(3)


def _model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseTopKCategoricalAccuracy(k=1, name="top1"),
                           keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top5")])
    return model


class _Killed(Exception):
    pass


class _KillAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise _Killed


def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    config = ml_collections.ConfigDict(
        {"total_steps": 12, "steps_per_epoch": 4, "backup_every_steps": 5})
    whole = _model()
    expected = train.fit_and_evaluate(whole, _train_data, _val_data(), str(tmp_path / "a"),
                                      config, verbose=0)
    assert expected["steps"] == 12 and expected["resumed_from_step"] == 0

    killed = _model()
    with pytest.raises(_Killed):  # after the step-5 backup, in the second epoch
        train.fit_and_evaluate(killed, _train_data, _val_data(), str(tmp_path / "b"), config,
                               verbose=0, extra_callbacks=[_KillAt(6)])
    resumed = _model()
    metrics = train.fit_and_evaluate(resumed, _train_data, _val_data(), str(tmp_path / "b"),
                                     config, verbose=0)
    assert metrics["steps"] == 12 and metrics["resumed_from_step"] == 5
    assert metrics["seconds"] > 0
    for got, want in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert metrics["top1"] == pytest.approx(expected["top1"])
