"""Per-layer TensorBoard curves, the conv1 filter image and the run's HParams.

Every `train.log_every_steps` steps, for each of conv1..fc8 (for another network family,
each block: its kernels taken together, families.py): weight norm, gradient norm
(on a fixed probe batch), update-to-weight ratio, effective learning rate (the solver's
own schedule for the layer, warmup included; 0 when frozen), and on the probe batch the
mean activation and the fraction of zeros after ReLU; weight histograms. Every epoch:
conv1's filters (the first block's first kernel) as an image grid. The probe batch is
fixed, and drawn across all classes of the half (pipeline.probe_batch), so the curves
compare across steps and runs.
"""

import functools
import os
import zlib

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.hparams import api as hparams_api

from kt_transfer.networks import architecture
from kt_transfer.training import keras_compat, timing
from kt_transfer.training import optimizer as optimizer_lib


def filter_grid(kernel):
    """conv1 kernels [h, w, 3, k] -> one [1, H, W, 3] image, each filter scaled to 0..1."""
    h, w, _, k = kernel.shape
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    grid = np.ones(((h + 1) * rows + 1, (w + 1) * cols + 1, 3), np.float32)
    for i in range(k):
        f = kernel[..., i]
        f = (f - f.min()) / (f.max() - f.min() + 1e-8)
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = f
    return grid[None]


HISTOGRAM_SAMPLE = 65_536  # weights per layer in its histogram


def histogram_sample(kernel, name):
    """The kernel's weights for its histogram: all of them, or for a big layer a fixed
    random subset (the same at every step), so that a paper-size fc6 (38M weights) does
    not cost a second per logged step. The shape of a distribution needs no more."""
    flat = kernel.reshape(-1)
    if flat.size <= HISTOGRAM_SAMPLE:
        return flat
    return flat[_sample_indices(flat.size, name)]


HISTOGRAM_BUCKETS = 30  # TensorBoard's default


def histogram_buckets(values, count=HISTOGRAM_BUCKETS):
    """[count, 3] float64 (left edge, right edge, count): TensorBoard's own histogram
    buckets (tensorboard.plugins.histogram.summary_v2._buckets), in NumPy. TensorBoard
    computes them with eager TensorFlow ops, 10 ms for a 65,536-weight sample, which made
    the 8 layers' histograms a third of a logging event; NumPy takes about 1 ms."""
    data = np.asarray(values, np.float64).reshape(-1)
    if not np.isfinite(data).all():  # a diverging run: TensorBoard's own, whatever it gives
        from tensorboard.plugins.histogram import summary_v2

        return summary_v2._buckets(data, count).numpy()
    if data.size == 0:
        return np.zeros((count, 3))
    low, high = data.min(), data.max()
    if high == low:  # one value: every edge at it, all in the last bucket
        counts = np.zeros(count)
        counts[-1] = data.size
        return np.stack([np.full(count, high), np.full(count, high), counts], axis=1)
    indices = np.minimum(np.floor((data - low) / ((high - low) / count)).astype(int), count - 1)
    edges = np.linspace(low, high, count + 1)
    edges[-1] = high
    counts = np.bincount(indices, minlength=count).astype(np.float64)
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def write_histogram(name, values, step):
    """A histogram summary as tf.summary.histogram writes it (same plugin, same buckets)."""
    tf.summary.write(
        name,
        tf.constant(histogram_buckets(values), tf.float64),
        step=step,
        metadata=histogram_metadata.create_summary_metadata(display_name=None, description=None),
    )


@functools.lru_cache(maxsize=None)
def _sample_indices(size, name):
    """The sampled positions of a layer's weights, drawn once (seeded by its name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return np.sort(rng.choice(size, HISTOGRAM_SAMPLE, replace=False))


def _norm(gradients):
    """The L2 norm of several gradients taken together."""
    return float(
        np.sqrt(sum(float(np.sum(np.square(keras.ops.convert_to_numpy(g)))) for g in gradients))
    )


class LayerLogger(keras.callbacks.Callback):
    """Writes per-layer summaries to <log_dir>/layers and the run's HParams."""

    def __init__(
        self,
        log_dir,
        probe_batch,
        trained_layers,
        every_steps,
        hparams,
        counter,
        stopwatch=timing.NO_STOPWATCH,
        blocks=architecture.LAYER_NAMES,
    ):
        """
        Args:
          probe_batch: (images, labels), the fixed batch the curves are computed on.
          trained_layers: names of the layers the solver updates (the others are frozen).
          every_steps: logging interval in training steps.
          hparams: {name: value} for TensorBoard's HParams dashboard.
          counter: the run's train.StepCounter (the step every curve is logged at).
          stopwatch: a timing.Stopwatch whose phase "logging" gets this logger's time.
          blocks: the network's cut points, in order (default CaffeNet's layers).
        """
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "layers"))
        self.probe_x, self.probe_y = (np.asarray(t) for t in probe_batch)  # any backend
        self.trained_layers = list(trained_layers)
        self.every = every_steps
        self.hparams = hparams
        self.counter, self.stopwatch = counter, stopwatch
        self.blocks = tuple(blocks)
        self.previous = {}
        self._probe = None

    def set_model(self, model):
        super().set_model(model)
        self._probe = None  # built for this model on first use

    @property
    def probe(self):
        """The model's blocks' outputs and its logits, from one forward pass."""
        if self._probe is None:
            outputs = keras_compat.block_outputs(self.model, self.blocks)
            self._probe = keras.Model(self.model.input, [*outputs, self.model.output])
        return self._probe

    def _kernel(self, name):
        """A block's kernels as one flat array (CaffeNet: the layer's kernel)."""
        kernels = optimizer_lib.block_kernels(self.model.get_layer(name))
        if len(kernels) == 1:
            return keras.ops.convert_to_numpy(kernels[0])
        return np.concatenate([keras.ops.convert_to_numpy(k).reshape(-1) for k in kernels])

    def on_train_begin(self, logs=None):
        with self.writer.as_default():
            hparams_api.hparams(self.hparams)
        self.writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        step = self.counter.step
        if step % self.every == 0:
            with self.stopwatch.phase("logging"):
                self.log_layers(step)

    def on_epoch_end(self, epoch, logs=None):
        step = self.counter.step
        with self.stopwatch.phase("logging"), self.writer.as_default():
            first = self.blocks[0]
            kernel = keras.ops.convert_to_numpy(
                optimizer_lib.block_kernel(self.model.get_layer(first))
            )
            if kernel.ndim == 4 and kernel.shape[2] == 3:  # filters on the RGB input
                tf.summary.image(f"{first}/filters", filter_grid(kernel), step=step)
        self.writer.flush()

    def _probe_pass(self):
        """On the probe batch: the norm of the loss's gradient per trained block (over its
        kernels), and each block's output. On TensorFlow one forward pass gives both: a
        second, for the outputs alone, was a sixth of a logging event."""
        if keras.backend.backend() == "jax":
            return self._gradients_jax(), self.probe(self.probe_x, training=False)[:-1]
        per_block = [
            [k for k in optimizer_lib.block_kernels(self.model.get_layer(n)) if k.trainable]
            for n in self.trained_layers
        ]
        variables = [v for block in per_block for v in block]
        probe = self.probe  # built here, not by each replica's thread

        def gradients():
            with tf.GradientTape() as tape:
                *outputs, logits = probe(self.probe_x, training=False)
                loss = self.model.compute_loss(y=self.probe_y, y_pred=logits)
            return tape.gradient(loss, variables), outputs

        # Under a strategy the variables are distributed and only differentiable in a
        # replica: computed in each (on the same probe batch) and taken from the first.
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            strategy = tf.distribute.get_strategy()
            per_replica, per_replica_outputs = strategy.run(gradients)
            grads = [strategy.experimental_local_results(g)[0] for g in per_replica]
            outputs = [strategy.experimental_local_results(o)[0] for o in per_replica_outputs]
        else:
            grads, outputs = gradients()
        norms, start = {}, 0
        for name, block in zip(self.trained_layers, per_block):
            norms[name] = _norm(grads[start : start + len(block)])
            start += len(block)
        return norms, outputs

    def _gradients_jax(self):
        """The same on JAX: jax.grad of the model's stateless call, the compiled loss."""
        import jax

        model = self.model
        non_trainable = [v.value for v in model.non_trainable_variables]

        def probe_loss(trainable):
            logits, _ = model.stateless_call(trainable, non_trainable, self.probe_x, training=False)
            return keras.ops.mean(
                keras.losses.sparse_categorical_crossentropy(self.probe_y, logits, from_logits=True)
            )

        grads = jax.grad(probe_loss)([v.value for v in model.trainable_variables])
        by_path = {v.path: g for v, g in zip(model.trainable_variables, grads)}
        return {
            name: _norm(
                [
                    by_path[k.path]
                    for k in optimizer_lib.block_kernels(model.get_layer(name))
                    if k.path in by_path
                ]
            )
            for name in self.trained_layers
        }

    def log_layers(self, step):
        # Eager: traced as a tf.function, the trace cost more than its 10-20 events of a
        # CPU-scale run save (tools/bench_step.py --logging_overhead, 1,000 steps: 13%
        # overhead traced, 5.6% eager).
        grads, activations = self._probe_pass()
        with self.writer.as_default():
            for name, act in zip(self.blocks, activations):
                kernel = self._kernel(name)
                norm = float(np.linalg.norm(kernel))
                prev = self.previous.get(name)
                update = (
                    float(np.linalg.norm(kernel - prev)) / (norm + 1e-12)
                    if prev is not None
                    else 0.0
                )
                self.previous[name] = kernel.copy()
                grad = grads.get(name)
                act = np.asarray(act, np.float32)
                tf.summary.scalar(f"{name}/weight_norm", norm, step=step)
                tf.summary.scalar(f"{name}/grad_norm", grad or 0.0, step=step)
                tf.summary.scalar(f"{name}/update_ratio", update, step=step)
                tf.summary.scalar(
                    f"{name}/effective_lr",
                    optimizer_lib.layer_learning_rate(self.model, name)
                    if name in self.trained_layers
                    else 0.0,
                    step=step,
                )
                tf.summary.scalar(f"{name}/activation_mean", float(act.mean()), step=step)
                tf.summary.scalar(f"{name}/zero_fraction", float((act <= 0).mean()), step=step)
                write_histogram(f"{name}/weights", histogram_sample(kernel, name), step)
        self.writer.flush()
