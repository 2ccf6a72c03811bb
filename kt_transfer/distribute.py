"""The distribution strategy, from one config string (Model Garden's distribute_utils).

    auto          MirroredStrategy over all local GPUs; the default strategy without GPUs
    mirrored      MirroredStrategy over local GPUs, or over logical CPU devices
    multi_worker  MultiWorkerMirroredStrategy from TF_CONFIG: refused for now, see below
    one_device    OneDeviceStrategy on the first GPU, else the CPU

`logical_cpus=N` splits the host CPU into N logical devices so that mirroring runs (and is
tested) without GPUs. It must happen before TensorFlow initializes its devices.
The config's batch size is the global batch; each of R replicas gets batch / R.
"""

import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def split_cpu(logical_cpus):
    """Makes the host CPU appear as `logical_cpus` devices (once, before first use)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == logical_cpus:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {logical_cpus} devices: TensorFlow is already "
            "initialized; set distribute.logical_cpus before anything else runs") from e


def make_strategy(distribute_config):
    """A tf.distribute.Strategy for the `config.distribute` block (strategy, logical_cpus)."""
    name = distribute_config.strategy
    if name not in STRATEGIES:
        raise ValueError(f"unknown --config.distribute.strategy={name!r}; use one of "
                         f"{', '.join(STRATEGIES)}")
    if distribute_config.logical_cpus > 1:
        split_cpu(distribute_config.logical_cpus)
    if name == "multi_worker":
        # Keras 3's model.fit fails under MultiWorkerMirroredStrategy ("Attempt to convert
        # a value (PerReplica ...)", keras-team/keras#20585, seen here with Keras 3.15 and
        # TF 2.21 on two workers on 127.0.0.1). Fail before any work instead of mid-run.
        raise ValueError(
            "--config.distribute.strategy=multi_worker is not supported yet: Keras 3's "
            "model.fit cannot train under MultiWorkerMirroredStrategy (keras-team/keras"
            "#20585). Use mirrored (all GPUs of one machine) instead.")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "auto" and not gpus:
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)

