"""Mean training-step time of baseB and of AnB for n = 1..7 on the CPU-scale model.

    python tools/bench_step.py [--steps=30] [--config=configs/embedded.py]
    python tools/bench_step.py --logging_overhead --steps=200
    python tools/bench_step.py --logging_overhead --input_size=227 --width=1 --batch=32 \
        --steps=20 --log_every=5                  # the paper-size network

The --logging_overhead form times baseB with and without the per-layer TensorBoard
logger every --log_every steps (default: the config's train.log_every_steps) and prints
the overhead.

Frozen layers are not trainable, so TensorFlow computes no gradient for them nor for
anything below them: the backward pass stops at layer n+1. The step time should fall
with n. Inputs are one in-memory batch, so only the model's step is timed.
"""

import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from kt_transfer import config_files, layer_logging, train, transfer
from kt_transfer import model as model_lib

flags.DEFINE_string("config", "embedded", "config file path or name in configs/")
flags.DEFINE_integer("steps", 30, "timed steps per treatment (after warm-up)")
flags.DEFINE_integer("warmup", 5, "untimed steps (tracing, allocation)")
flags.DEFINE_bool("logging_overhead", False, "time the per-layer logger instead")
flags.DEFINE_integer("input_size", 0, "input side (0: the config's model.input_size)")
flags.DEFINE_float("width", 0, "width multiplier (0: the config's model.width)")
flags.DEFINE_integer("batch", 0, "batch size (0: the config's train.batch_size)")
flags.DEFINE_integer("log_every", 0, "logging interval (0: the config's log_every_steps)")
FLAGS = flags.FLAGS


def time_step(config, treatment, base, batch, logdir=None):
    model, plans = transfer.build_model(treatment, config.model, 50, base)
    train.compile_model(model, config.train, plans)
    counter = train.StepCounter()
    callbacks = [counter]
    if logdir:
        callbacks.append(layer_logging.LayerLogger(
            logdir, batch, [p.name for p in plans if p.trainable],
            config.train.log_every_steps, {"mode": treatment.mode}, counter))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(dataset, steps_per_epoch=FLAGS.warmup, epochs=1, verbose=0, shuffle=False,
              callbacks=callbacks)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0, shuffle=False,
              callbacks=callbacks)
    return (time.perf_counter() - start) / FLAGS.steps


def main(argv):
    del argv
    config = config_files.load(FLAGS.config)
    with config.unlocked():
        config.model.input_size = FLAGS.input_size or config.model.input_size
        config.model.width = FLAGS.width or config.model.width
        config.train.batch_size = FLAGS.batch or config.train.batch_size
        config.train.log_every_steps = FLAGS.log_every or config.train.log_every_steps
    keras.utils.set_random_seed(0)
    size, batch_size = config.model.input_size, config.train.batch_size
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8),
             rng.integers(0, 50, batch_size))
    if FLAGS.logging_overhead:
        plain = time_step(config, transfer.parse_treatment("baseB"), None, batch)
        logged = time_step(config, transfer.parse_treatment("baseB"), None, batch,
                           logdir=tempfile.mkdtemp())
        print(f"input {size}, width {config.model.width}, batch {batch_size}: "
              f"baseB {plain * 1e3:.1f} ms/step without, {logged * 1e3:.1f} ms/step with "
              f"per-layer logging every {config.train.log_every_steps} steps: overhead "
              f"{100 * (logged / plain - 1):.1f}%")
        return
    base = model_lib.build_from_config(config.model, 50)
    base_time = time_step(config, transfer.parse_treatment("baseB"), None, batch)
    print(f"model width {config.model.width}, input {size}, batch {batch_size}, "
          f"{FLAGS.steps} timed steps")
    print(f"{'treatment':10s} {'ms/step':>8s} {'ratio':>6s}")
    print(f"{'baseB':10s} {base_time * 1e3:8.1f} {1.0:6.2f}")
    for n in range(1, 8):
        t = time_step(config, transfer.parse_treatment("AnB", n), base, batch)
        print(f"{'A%dB' % n:10s} {t * 1e3:8.1f} {t / base_time:6.2f}")


if __name__ == "__main__":
    app.run(main)
