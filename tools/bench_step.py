"""Training-step speed of baseB and AnB for n = 1..7, on any Keras backend.

    python tools/bench_step.py                                    # CPU-scale, TensorFlow
    KERAS_BACKEND=jax python tools/bench_step.py --backend=jax    # the same on JAX
    python tools/bench_step.py --backend=jax --paper_size --precisions=bfloat16 \
        --peak_tflops=989                                         # paper-size on a GPU
    python tools/bench_step.py --compare=tensorflow,jax           # both, one table
    python tools/bench_step.py --logging_overhead --steps=200     # TensorFlow only

For each treatment and precision it prints ms/step, images/s, the model FLOPs per image
(counted from the layer shapes: the forward pass plus twice the forward FLOPs of every
trained layer for the backward pass; frozen layers 1..n need no backward pass), the
achieved TFLOP/s and, given the accelerator's peak (--peak_tflops, dense, for the
precision measured), the MFU. Batches are synthetic uint8 images made with numpy and
stay the same, so only the model's step is timed; the step is compiled with XLA
(--jit; JAX always compiles).

It needs only keras, numpy, absl-py and ml-collections besides the backend, and this
repository's kt_transfer/ and configs/ (no TensorFlow with --backend=jax): to run it on a
machine that has JAX but not those, carry their wheels:

    pip download --no-deps -d wheels keras==3.15.1 namex optree ml-collections PyYAML
    pip install --no-deps wheels/*.whl     # there; absl-py, h5py, ml-dtypes, rich present

The --logging_overhead form (TensorFlow) times baseB with and without the per-layer
TensorBoard logger every --log_every steps (default: the config's train.log_every_steps).
"""

import os
import sys
import tempfile
import time

# The backend is chosen before Keras is imported.
_BACKEND = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--backend=")), None)
if _BACKEND:
    os.environ["KERAS_BACKEND"] = _BACKEND

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from kt_transfer import config_files  # noqa: E402
from kt_transfer.networks import architecture, transfer  # noqa: E402
from kt_transfer.training import train  # noqa: E402

flags.DEFINE_enum(
    "backend",
    None,
    ["tensorflow", "jax", "torch"],
    "Keras backend (also set KERAS_BACKEND); default: Keras' own",
)
flags.DEFINE_string("config", "embedded", "config file path or name in configs/")
flags.DEFINE_integer("steps", 30, "timed steps per treatment (after warm-up)")
flags.DEFINE_integer("warmup", 5, "untimed steps (tracing, compilation, allocation)")
flags.DEFINE_bool("paper_size", False, "227 px, width 1, batch 256, 500 classes")
flags.DEFINE_integer("input_size", 0, "input side (0: the config's model.input_size)")
flags.DEFINE_float("width", 0, "width multiplier (0: the config's model.width)")
flags.DEFINE_integer("batch", 0, "batch size (0: the config's train.batch_size)")
flags.DEFINE_integer("classes", 50, "fc8 outputs")
flags.DEFINE_list(
    "precisions", ["float32"], "float32 and/or bfloat16 (mixed_bfloat16), float16 (mixed_float16)"
)
flags.DEFINE_list("treatments", ["baseB"] + [f"A{n}B" for n in range(1, 8)], "baseB and/or A<n>B")
flags.DEFINE_bool("jit", True, "compile the step with XLA")
flags.DEFINE_float("peak_tflops", 0.0, "the accelerator's dense peak TFLOP/s for MFU")
flags.DEFINE_list(
    "compare",
    [],
    "run every row on each of these backends (one "
    "subprocess each, same flags) and print the time ratio per row",
)
flags.DEFINE_bool("logging_overhead", False, "time the per-layer logger instead (TF)")
flags.DEFINE_integer("log_every", 0, "logging interval (0: the config's log_every_steps)")
FLAGS = flags.FLAGS

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def parse(name):
    """ "baseB" or "A<n>B" -> (Treatment, n frozen)."""
    if name == "baseB":
        return transfer.parse_treatment("baseB"), 0
    return transfer.parse_treatment("AnB", int(name[1:-1])), int(name[1:-1])


def time_step(config, treatment, base, batch, precision="float32", logdir=None):
    """Seconds per training step (mean over FLAGS.steps, after FLAGS.warmup)."""
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        model, plans = transfer.build_model(treatment, config.model, FLAGS.classes, base)
        train.compile_model(model, config.train, plans)
    finally:
        keras.config.set_dtype_policy("float32")
    if logdir:  # TensorFlow only: the logger writes tf.summary and uses tf.GradientTape
        return _time_with_logger(config, model, plans, treatment, batch, logdir)
    x, y = batch
    for _ in range(FLAGS.warmup):
        model.train_on_batch(x, y)  # returns numpy: the step has finished
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / FLAGS.steps


def _time_with_logger(config, model, plans, treatment, batch, logdir):
    import tensorflow as tf

    from kt_transfer.training import layer_logging

    counter = train.StepCounter()
    callbacks = [
        counter,
        layer_logging.LayerLogger(
            logdir,
            batch,
            [p.name for p in plans if p.trainable],
            config.train.log_every_steps,
            {"mode": treatment.mode},
            counter,
            blocks=[p.name for p in plans],
        ),
    ]
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(
        dataset,
        steps_per_epoch=FLAGS.warmup,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    model.fit(
        dataset,
        steps_per_epoch=FLAGS.steps,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )
    return (time.perf_counter() - start) / FLAGS.steps


def compare(backends, argv):
    """Runs this tool once per backend (same flags) and prints their rows side by side
    with the ratio of step times (first backend / each other)."""
    import subprocess

    args = [a for a in argv[1:] if not a.startswith(("--compare", "--backend"))]
    rows = {}
    for backend in backends:
        out = subprocess.run(
            [sys.executable, __file__, f"--backend={backend}", *args],
            env={**os.environ, "KERAS_BACKEND": backend},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(f"[{backend}] " + out.strip().splitlines()[0])
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[1] in POLICIES:
                rows.setdefault((parts[0], parts[1]), {})[backend] = float(parts[2])
    first = backends[0]
    print(
        f"{'treatment':9s} {'precision':9s} "
        + " ".join(f"{b + ' ms':>14s}" for b in backends)
        + "".join(f" {first + '/' + b:>18s}" for b in backends[1:])
    )
    for (name, precision), times in rows.items():
        print(
            f"{name:9s} {precision:9s} "
            + " ".join(f"{times.get(b, float('nan')):14.1f}" for b in backends)
            + "".join(
                f" {times[first] / times[b]:18.2f}"
                for b in backends[1:]
                if b in times and first in times
            )
        )


def main(argv):
    if FLAGS.compare:
        compare(FLAGS.compare, sys.argv)
        return
    del argv
    config = config_files.load(FLAGS.config)
    with config.unlocked():
        if FLAGS.paper_size:
            config.model.input_size, config.model.width = 227, 1.0
            config.train.batch_size = 256
            FLAGS.classes = 500 if FLAGS.classes == 50 else FLAGS.classes
        config.model.input_size = FLAGS.input_size or config.model.input_size
        config.model.width = FLAGS.width or config.model.width
        config.train.batch_size = FLAGS.batch or config.train.batch_size
        config.train.log_every_steps = FLAGS.log_every or config.train.log_every_steps
        config.train.jit_compile = FLAGS.jit
    keras.utils.set_random_seed(0)
    size, batch_size = config.model.input_size, config.train.batch_size
    rng = np.random.default_rng(0)
    batch = (
        rng.integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8),
        rng.integers(0, FLAGS.classes, batch_size),
    )
    if FLAGS.logging_overhead:
        plain = time_step(config, transfer.parse_treatment("baseB"), None, batch)
        logged = time_step(
            config, transfer.parse_treatment("baseB"), None, batch, logdir=tempfile.mkdtemp()
        )
        print(
            f"input {size}, width {config.model.width}, batch {batch_size}: "
            f"baseB {plain * 1e3:.1f} ms/step without, {logged * 1e3:.1f} ms/step with "
            f"per-layer logging every {config.train.log_every_steps} steps: overhead "
            f"{100 * (logged / plain - 1):.1f}%"
        )
        return
    # The base the frozen treatments copy: of the config's network family.
    base, _ = transfer.build_model(transfer.parse_treatment("baseA"), config.model, FLAGS.classes)
    caffenet_flops = config.model.get("network", "caffenet") == "caffenet"
    print(
        f"backend {keras.backend.backend()}, input {size}, width {config.model.width}, "
        f"batch {batch_size}, {FLAGS.classes} classes, XLA "
        f"{'on' if FLAGS.jit or keras.backend.backend() == 'jax' else 'off'}, "
        f"{FLAGS.steps} timed steps"
        + (f", peak {FLAGS.peak_tflops:g} TFLOP/s" if FLAGS.peak_tflops else "")
    )
    print(
        f"{'treatment':9s} {'precision':9s} {'ms/step':>8s} {'images/s':>9s} "
        f"{'GFLOP/img':>9s} {'TFLOP/s':>8s}" + (f" {'MFU':>6s}" if FLAGS.peak_tflops else "")
    )
    for precision in FLAGS.precisions:
        for name in FLAGS.treatments:
            treatment, frozen = parse(name)
            seconds = time_step(config, treatment, base if frozen else None, batch, precision)
            if not caffenet_flops:  # FLOPs are counted for CaffeNet's layers only
                print(f"{name:9s} {precision:9s} {seconds * 1e3:8.1f} {batch_size / seconds:9.0f}")
                continue
            flops = architecture.training_flops(size, config.model.width, FLAGS.classes, frozen)
            tflops = flops * batch_size / seconds / 1e12
            line = (
                f"{name:9s} {precision:9s} {seconds * 1e3:8.1f} "
                f"{batch_size / seconds:9.0f} {flops / 1e9:9.3f} {tflops:8.3f}"
            )
            if FLAGS.peak_tflops:
                line += f" {100 * tflops / FLAGS.peak_tflops:5.1f}%"
            print(line, flush=True)


if __name__ == "__main__":
    app.run(main)
