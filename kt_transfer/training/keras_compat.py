"""Workarounds for the Keras and TensorFlow versions kt_transfer runs on, in one place.

Each is applied only for the versions known to need it. When pyproject.toml's upper bound
on keras is raised, check each against the new version and widen or drop it.

- keras-team/keras#20585: Keras 3's `fit` under MultiWorkerMirroredStrategy (a) builds an
  unbuilt model from an eagerly all-reduced first batch, which fails across workers, and
  (b) reduces scalar logs with `axis=0`. Seen on 3.5 through 3.15 (the newest tested).
- TensorFlow's own start-up and SavedModel-export INFO lines, which bury kt_transfer's.
- h5py crashes the process (a segmentation fault while closing the file) when the disk
  fills up in the middle of `save_weights`; backups build the weights file in memory
  through Keras' own H5 store and write its bytes with plain Python I/O, which fails with
  an ordinary OSError. Uses `saving_lib._save_state` (3.x, checked on 3.15).
"""

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading

MULTI_WORKER_FIT_AFFECTED = ((3, 0), (3, 16))  # [from, to) : keras-team/keras#20585
IN_MEMORY_WEIGHTS_CHECKED = ((3, 15), (3, 16))  # [from, to): saving_lib._save_state, checked


def keras_version():
    import keras  # here, not above: the package imports this module before Keras loads

    return tuple(int(part) for part in keras.version().split(".")[:2])


def needs_multi_worker_workaround(version=None):
    low, high = MULTI_WORKER_FIT_AFFECTED
    return low <= (version or keras_version()) < high


def is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy spanning several workers (TF
    keeps this in a private method of the strategy's `extended`)."""
    import tensorflow as tf

    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def optimizer_of_variable(multi_optimizer, variable_path):
    """The optimizer of a keras.optimizers.MultiOptimizer that updates the variable at
    `variable_path` ("fc6/kernel"): Keras keeps that map private, and the public
    `optimizers` list does not say which variables each one updates."""
    return multi_optimizer._optimizer_map[variable_path]


def multi_worker_fit_context(model):
    """Where fit/evaluate run under MultiWorkerMirroredStrategy (keras#20585 (a)).

    The model is already built, so Keras is told no strategy and instead runs inside the
    strategy's scope, where it finds the same strategy for its steps.
    """
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow's models only
    if not (needs_multi_worker_workaround() and is_multi_worker(strategy)):
        return contextlib.nullcontext()
    model._distribute_strategy = None  # private: the only switch Keras offers
    return strategy.scope()


def patch_multi_worker_log_reduction():
    """Averages scalar logs across workers with axis=None (keras#20585 (b))."""
    if not needs_multi_worker_workaround():
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "kt_transfer_patched", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return tf.nest.map_structure(
                lambda v: (
                    strategy.reduce("MEAN", v, axis=None)
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                values,
            )
        return original(values, strategy, reduction)

    reduce_per_replica.kt_transfer_patched = True
    trainer.reduce_per_replica = reduce_per_replica


# --- Quiet output ------------------------------------------------------------------------
VERBOSE_ENV = "KT_TRANSFER_VERBOSE"  # "1": show TensorFlow's start-up and INFO lines


def verbose():
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


# What libjpeg prints straight to stderr, and TensorFlow's decoder logs, for each file
# that does not decode. The input pipeline names those files itself (pipeline.BadFiles).
DECODER_NOISE = re.compile(
    r"^(Improper call to JPEG library in state \d+|Bogus |Corrupt JPEG data|Premature end "
    r"of JPEG|Invalid JPEG file structure|Not a JPEG file|Unsupported marker type|"
    r"Quantization table 0x|Huffman table 0x|JPEG datastream contains no image|"
    r"Unsupported JPEG process|Suspension not allowed here|Warning: unknown JFIF|"
    r"Empty JPEG image|Wrong JPEG library version|Invalid SOS parameters|"
    r"[EW]\d{4} [\d:. ]+\d+ (jpeg_mem|decode_image_op|png_io|gif_io)\.cc)"
)


def _saved_stderr():
    """A duplicate of file descriptor 2 to restore it from, or None where output is not
    to be touched (KT_TRANSFER_VERBOSE) or there is no real stderr (some notebooks)."""
    if verbose():
        return None
    try:
        sys.stderr.flush()
        return os.dup(2)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def without_decoder_noise():
    """Drops the image decoders' per-file lines from stderr meanwhile (see DECODER_NOISE)
    and passes every other line through, in order: native code writes to file
    descriptor 2, so it is pointed at a pipe read by a thread that filters lines."""
    saved = _saved_stderr()
    if saved is None:
        yield
        return
    read_end, write_end = os.pipe()

    def pump():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:  # keeps reading whatever happens: writers must never block
                if not DECODER_NOISE.match(line.decode(errors="replace")):
                    with contextlib.suppress(OSError):
                        os.write(saved, line)

    thread = threading.Thread(target=pump, name="kt_transfer-stderr", daemon=True)
    os.dup2(write_end, 2)
    os.close(write_end)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer closes: the thread reads to the end
        thread.join(timeout=10)
        if not thread.is_alive():  # else a child holds the pipe: the thread keeps `saved`
            os.close(saved)


@contextlib.contextmanager
def quiet_native_stderr():
    """Hides what native code (TensorFlow's C++ start-up: oneDNN, CUDA, CPU features)
    writes to stderr meanwhile; replays it if the block fails. TF 2.21 prints these
    before its logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hide them."""
    saved = _saved_stderr()
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def probe_devices():
    """Imports TensorFlow (the input pipeline's, whatever the Keras backend) and lists its
    GPUs, so that its and the CUDA runtime's start-up messages come out now, e.g. under
    quiet_native_stderr. Does not fix the logical device configuration, which
    distribute.split_cpu may still change."""
    try:
        import tensorflow as tf
    except ImportError:  # the core alone (KERAS_BACKEND=jax): nothing of TensorFlow's to hide
        return
    tf.config.list_physical_devices("GPU")


@contextlib.contextmanager
def quiet_tensorflow_info():
    """Hides TensorFlow's Python INFO lines (SavedModel export) meanwhile."""
    if verbose():
        yield
        return
    from absl import logging as absl_logging  # TensorFlow's saving code logs through absl

    logger = logging.getLogger("tensorflow")
    level, absl_level = logger.level, absl_logging.get_verbosity()
    logger.setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        absl_logging.set_verbosity(absl_level)


def weights_file_bytes(model):
    """The bytes of the `.weights.h5` file `model.save_weights` would write (weights and
    the optimizer's state), built in memory (see the module's docstring), or None on a
    Keras version where this is unchecked (callers then use save_weights)."""
    low, high = IN_MEMORY_WEIGHTS_CHECKED
    if not low <= keras_version() < high:
        return None
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(
            model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set()
        )
    finally:
        store.close()
    return buffer.getvalue()


def build_for_training(model, batch):
    """Creates a compiled model's metric, loss and optimizer variables from one batch
    (x, y), as its own `fit` does on its first batch: a member of a pack
    (packing.PackedModel) is trained by the pack's `fit`, never its own. Keras' private
    Trainer._symbolic_build (Keras 3.x) is what `fit` calls for this."""
    model._symbolic_build(data_batch=batch)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def block_outputs(model, names):
    """The outputs of `model`'s layers `names` in `model`'s own graph, for a model that
    returns them (per-layer curves, similarity). `layer.output` will not do for a block
    that is a nested functional model (ResNet, ViT): that is the inner graph's tensor,
    not connected to `model.input`. The node where `model` calls the layer is: Keras
    keeps it in the private `_inbound_nodes` (a block is called once)."""
    return [model.get_layer(name)._inbound_nodes[-1].output_tensors[0] for name in names]
