"""One solver step against a hand-computed Caffe update."""

import keras
import numpy as np
import tensorflow as tf
from ml_collections import ConfigDict

from kt_transfer.training import optimizer as optimizer_lib

LR, MOMENTUM, DECAY, BIAS_MULT, COPIED_MULT = 0.05, 0.9, 5e-4, 2.0, 0.3


def _solver_config():
    return ConfigDict(
        dict(
            base_lr=LR,
            lr_step_size=1000,
            lr_gamma=0.1,
            momentum=MOMENTUM,
            weight_decay=DECAY,
            bias_lr_mult=BIAS_MULT,
        )
    )


def _tiny_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(
        5, activation="relu", name="conv1", bias_initializer=keras.initializers.Constant(0.5)
    )(inputs)
    x = keras.layers.Dense(
        5, activation="relu", name="conv2", bias_initializer=keras.initializers.Constant(0.5)
    )(x)
    outputs = keras.layers.Dense(3, name="fc8", bias_initializer=keras.initializers.Constant(0.1))(
        x
    )
    model = keras.Model(inputs, outputs)
    model.get_layer("conv1").trainable = False  # frozen copied layer
    mults = {"conv2": COPIED_MULT, "fc8": 1.0}  # fine-tuned copied layer, new layer
    model.compile(
        optimizer=optimizer_lib.make_optimizer(_solver_config(), mults),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, mults


def _gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = model.loss(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    return {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)}


def test_two_steps_match_caffe_update_for_frozen_fine_tuned_and_new_layers():
    model, mults = _tiny_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 3, size=8)
    frozen_before = [w.copy() for w in model.get_layer("conv1").get_weights()]
    velocity = {}
    for _ in range(2):  # the second step exercises the momentum term
        weights = {v.path: v.numpy().copy() for v in model.trainable_variables}
        grads = _gradients(model, x, y)
        model.train_on_batch(x, y)
        for layer, mult in mults.items():
            for kind, lr_mult, decay in (("kernel", mult, DECAY), ("bias", mult * BIAS_MULT, 0.0)):
                path = f"{layer}/{kind}"
                # Caffe: v = momentum * v + lr * (grad + decay * w); w = w - v
                velocity[path] = MOMENTUM * velocity.get(path, 0.0) + LR * lr_mult * (
                    grads[path] + decay * weights[path]
                )
                expected = weights[path] - velocity[path]
                got = (
                    model.get_layer(layer).kernel
                    if kind == "kernel"
                    else model.get_layer(layer).bias
                )
                np.testing.assert_allclose(
                    got.numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=path
                )
    for before, after in zip(frozen_before, model.get_layer("conv1").get_weights()):
        assert np.array_equal(before, after)  # frozen: no update, no decay


def test_step_schedule_is_caffes_step_policy():
    schedule = optimizer_lib.step_schedule(0.01, step_size=100, gamma=0.1)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 99, 100, 250, 450)],
        [0.01, 0.01, 0.001, 0.0001, 1e-6],
        rtol=1e-5,
    )


def test_caffe_sgd_serializes():
    opt = optimizer_lib.CaffeSGD(l2_decay=5e-4, momentum=0.9, learning_rate=0.01)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, optimizer_lib.CaffeSGD) and again.l2_decay == 5e-4


def test_warmup_ramps_up_then_follows_the_step_policy():
    schedule = optimizer_lib.step_schedule(0.01, step_size=100, gamma=0.1, warmup_steps=10)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 4, 9, 50, 100)],
        [0.001, 0.005, 0.01, 0.01, 0.001],
        rtol=1e-5,
    )
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, optimizer_lib.StepSchedule) and again.warmup_steps == 10
