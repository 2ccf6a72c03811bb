"""The distribution strategy, from one config string (Model Garden's distribute_utils).

    auto          MirroredStrategy over all local GPUs; the default strategy without GPUs
    mirrored      MirroredStrategy over local GPUs, or over logical CPU devices
    multi_worker  MultiWorkerMirroredStrategy from TF_CONFIG (several machines)
    one_device    OneDeviceStrategy on the first GPU, else the CPU

`logical_cpus=N` splits the host CPU into N logical devices so that mirroring runs (and is
tested) without GPUs. It must happen before TensorFlow initializes its devices.
The config's batch size is the global batch; each of R replicas gets batch / R.

On the JAX backend (KERAS_BACKEND=jax) the same names give a `KerasDistribution`: Keras'
own `keras.distribution.DataParallel` over the local devices ("auto" without GPUs and
"one_device": none), fed by the same tf.data pipelines. Several machines need TensorFlow's
multi_worker (validate.py says so before anything runs).
"""

import contextlib
import os

import keras
import tensorflow as tf

from kt_transfer.training import keras_compat

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def uses_tf_distribute():
    """Whether runs train under tf.distribute (the TensorFlow backend) or under
    keras.distribution (JAX)."""
    return keras.backend.backend() == "tensorflow"


class KerasDistribution:
    """What a run trains under on the JAX backend: a keras.distribution (set globally, so
    that fit shards each batch over the devices) or none, with the two things kt_transfer
    asks of a tf.distribute strategy, `scope()` and `num_replicas_in_sync`."""

    def __init__(self, distribution=None):
        self.distribution = distribution
        self.num_replicas_in_sync = (
            distribution.device_mesh.devices.size if distribution is not None else 1
        )
        keras.distribution.set_distribution(distribution)

    def scope(self):
        return (
            self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()
        )


def has_gpus():
    """Whether the backend sees a GPU (a grid then runs one worker per machine)."""
    if uses_tf_distribute():
        return bool(tf.config.list_physical_devices("GPU"))
    return _backend_has("gpu")


def current_strategy():
    """What a run trains under when the caller gives nothing: tf.distribute's current
    strategy, or on JAX the keras.distribution set (if any)."""
    if uses_tf_distribute():
        return tf.distribute.get_strategy()
    return KerasDistribution(keras.distribution.distribution())


def _backend_has(platform):
    import jax

    try:
        return bool(jax.devices(platform))
    except RuntimeError:  # no such platform on this machine
        return False


def split_cpu_jax(logical_cpus):
    """JAX's counterpart of split_cpu: `logical_cpus` CPU devices (before JAX starts)."""
    import jax

    jax.config.update("jax_num_cpu_devices", logical_cpus)
    found = len(jax.devices("cpu"))
    if found != logical_cpus:
        raise RuntimeError(
            f"cannot split the CPU into {logical_cpus} devices: JAX already started with "
            f"{found}; set distribute.logical_cpus before anything else runs"
        )


def make_keras_distribution(distribute_config):
    """The JAX backend's KerasDistribution for the `config.distribute` block."""
    name, backend = distribute_config.strategy, keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"training runs on KERAS_BACKEND=tensorflow or jax, not {backend}; "
            "see README, Keras backends"
        )
    if name == "multi_worker":  # validate.py refuses this first; here for direct callers
        raise ValueError(
            "--config.distribute.strategy=multi_worker needs the TensorFlow "
            "backend (KERAS_BACKEND=tensorflow); see README"
        )
    if distribute_config.logical_cpus > 1:
        split_cpu_jax(distribute_config.logical_cpus)
    gpus = keras.distribution.list_devices("gpu") if _backend_has("gpu") else []
    if name == "one_device" or (name == "auto" and not gpus):
        return KerasDistribution(None)
    devices = gpus or keras.distribution.list_devices("cpu")
    return KerasDistribution(keras.distribution.DataParallel(devices=devices))


def split_cpu(logical_cpus):
    """Makes the host CPU appear as `logical_cpus` devices (once, before first use)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {logical_cpus} devices: TensorFlow is already "
            "initialized; set distribute.logical_cpus before anything else runs"
        ) from e


def make_strategy(distribute_config):
    """A tf.distribute.Strategy for the `config.distribute` block (strategy, logical_cpus),
    or on the JAX backend a KerasDistribution."""
    name = distribute_config.strategy
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown --config.distribute.strategy={name!r}; use one of {', '.join(STRATEGIES)}"
        )
    if not uses_tf_distribute():
        return make_keras_distribution(distribute_config)
    if distribute_config.logical_cpus > 1:
        split_cpu(distribute_config.logical_cpus)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--config.distribute.strategy=multi_worker needs TF_CONFIG (the cluster's "
                'workers and this process\'s task), e.g. TF_CONFIG=\'{"cluster": {"worker": '
                '["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                '"index": 0}}\'; see README'
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        keras_compat.patch_multi_worker_log_reduction()
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "auto" and not gpus:
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


is_multi_worker = keras_compat.is_multi_worker


def barrier(strategy):
    """Under MultiWorkerMirroredStrategy, returns when every worker has called it (an
    all-reduce of one number): a worker that goes on to read what the chief writes at the
    end of a run (a base's model.keras, copied next) finds it complete. Elsewhere a no-op."""
    if is_multi_worker(strategy):
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def is_chief(strategy):
    """Whether this process writes the run's files: the chief, or worker 0 without one."""
    if strategy is None or not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
