"""Runs treatments: where each run lives, which base it needs, what it stores.

Layout under the workdir:
    <workdir>/<dataset>/<split>/<experiment id>/<run>/
        config.json  checkpoints/  logs/  model.keras  saved_model/  metrics.json
The experiment id hashes everything that defines a base network (dataset, model, solver),
so a transfer run only ever reuses a base trained under the same settings. metrics.json is
written last, atomically: its presence marks a finished (or failed) run.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib

import keras

from kt_transfer import atomic
from kt_transfer.data import mean, pipeline
from kt_transfer.networks import caffenet, transfer
from kt_transfer.training import distribute, export, keras_compat, layer_logging, timing, train

METRICS_FILE, MODEL_FILE, CONFIG_FILE = "metrics.json", "model.keras", "config.json"
# Training settings that do not change what a base network is.
NOT_DEFINING_A_BASE = (
    "copied_lr_mult",
    "copied_fc_lr_mult",
    "budget_epochs",
    "holdout_fraction",
    "backup_every_steps",
    "jit_compile",
    "log_every_steps",
)


def experiment_dir(config, dataset):
    """<workdir>/<dataset>/<split>/<id>: id = hash of what defines a base network."""
    defining = {
        "dataset": config.dataset.to_dict(),
        "model": config.model.to_dict(),
        "train": {k: v for k, v in config.train.to_dict().items() if k not in NOT_DEFINING_A_BASE},
    }
    digest = hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(config.workdir, dataset.name, dataset.split.name, digest)


def run_dir(config, dataset, treatment):
    """The run's directory: <experiment dir>/<run name>[_lr<mult>][_base-<hash>].

    A run copying from an exported base (--base_model) gets a name of its own, so it never
    passes for (or resumes) the run that copies from the workdir's own base.
    """
    name = treatment.run_name
    if treatment.fine_tune and config.train.copied_lr_mult != 1.0:
        name += f"_lr{config.train.copied_lr_mult:g}"
    fc_mult = copied_fc_lr_mult(config, treatment)
    if fc_mult is not None:
        name += f"_fc{fc_mult:g}"
    if config.train.get("budget_epochs", 0) > 0:  # a Hyperband trial's shorter budget
        name += f"_e{train.num_epochs(config.train)}"
    if config.train.get("holdout_fraction", 0.0) > 0:  # a tuning trial: trained on less
        name += f"_ho{config.train.holdout_fraction:g}"
    if external_base(config, treatment):
        path = os.path.abspath(config.base_model)
        name += "_base-" + hashlib.sha1(path.encode()).hexdigest()[:8]
    return os.path.join(experiment_dir(config, dataset), name)


def fc8_outputs(config, dataset, half):
    """fc8's width for a network trained on `half`: one output per class of the half
    ("half"), or one per class of the whole dataset ("all", the paper's half networks:
    500 of their 1000 outputs never see a label). Labels are the same either way (the
    class's position in the half); accuracy is taken over all outputs, as Caffe's
    accuracy layer does."""
    if not half:
        return None
    return len(dataset.classes) if config.model.get("fc8_outputs", "half") == "all" else len(half)


def copied_fc_lr_mult(config, treatment):
    """The separate multiplier of copied fc layers, or None (they use copied_lr_mult)."""
    mult = config.train.get("copied_fc_lr_mult", -1.0)
    copies_fc = treatment.n > caffenet.LAYER_NAMES.index("fc6")
    return float(mult) if mult >= 0 and treatment.fine_tune and copies_fc else None


def base_config(config):
    """The config a treatment's base is trained under: without a tuning trial's shorter
    step budget (train.budget_epochs) or held-out images (train.holdout_fraction)."""
    if config.train.get("budget_epochs", 0) <= 0 and config.train.get("holdout_fraction", 0.0) <= 0:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.budget_epochs = 0
        config.train.holdout_fraction = 0.0
    return config


def external_base(config, treatment):
    """True when the treatment copies from --base_model rather than the workdir's base."""
    return bool(config.get("base_model")) and treatment.base_mode is not None


def read_metrics(path):
    """The stored metrics of a finished run, or None."""
    return atomic.read_json(os.path.join(path, METRICS_FILE))


class RunBusyError(RuntimeError):
    """Another process is training in the same run directory."""


@contextlib.contextmanager
def run_lock(out):
    """An exclusive lock on a run directory, released by the OS if the process dies."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(
                f"another process is running in {out}; wait for it to finish, or use "
                "another --workdir"
            ) from None
        yield


def ensure_base(config, dataset, treatment, log=print, strategy=None, wait_s=None):
    """The run directory of the workdir's base that `treatment` copies from, trained
    first if it is missing: the one place a base is trained on demand (a transfer run,
    a tuning sweep).

    Args:
      wait_s: when another process is training the base, poll every wait_s seconds
        until it is done (a sweep's workers); None raises RunBusyError instead.
    Raises:
      RuntimeError: the base failed (nothing to copy from).
    """
    base = transfer.parse_treatment(treatment.base_mode)
    config_of_base = base_config(config)  # a tuning trial still copies a full base
    base_out = run_dir(config_of_base, dataset, base)
    base_metrics = read_metrics(base_out)
    if base_metrics is None:
        log(
            f"{treatment.run_name} copies layers from {base.run_name}, which is not "
            f"trained yet under this config: training {base.run_name} first."
        )
        while base_metrics is None:
            try:
                base_metrics, _ = run_treatment(config_of_base, dataset, base, log, strategy)
            except RunBusyError:
                if wait_s is None:
                    raise
                time.sleep(wait_s)
    if base_metrics["status"] != "finished":
        raise RuntimeError(
            f"{base.run_name} failed ({base_metrics['reason']}); "
            f"nothing to copy from. Its record: {base_out}"
        )
    return base_out


def load_network(path):
    """The trained Keras network stored in run directory `path` (its model.keras), or
    None if there is none: how the analyses and the tuner read a finished run."""
    model_path = os.path.join(path, MODEL_FILE)
    if not os.path.exists(model_path):
        return None
    return keras.saving.load_model(model_path, safe_mode=True, compile=False)


def run_treatment(config, dataset, treatment, log=print, strategy=None, guard=None):
    """Trains and evaluates one treatment (its base first, if missing).

    Args:
      strategy: tf.distribute strategy (or on JAX a distribute.KerasDistribution) to build
        and train under (default: the current).
      guard: a Keras callback added to this treatment's training (the grid's claim
        check, which stops a cell whose claim another worker took over).

    Returns:
      (metrics dict, run directory). A finished (or failed) run is not trained again.
    Raises:
      RunBusyError: another process holds the run directory.
    """
    out = run_dir(config, dataset, treatment)
    stored = read_metrics(out)
    if stored is not None:
        log(
            f"{treatment.run_name}: {stored.get('status', 'finished')} earlier, stored "
            f"result in {out}"
        )
        return stored, out
    base, stopwatch = None, timing.Stopwatch()
    if external_base(config, treatment):
        log(f"{treatment.run_name} copies layers from --base_model={config.base_model}")
        with stopwatch.phase("base_loading"):
            base = transfer.load_base(config.base_model)
    elif treatment.base_mode:
        base_out = ensure_base(config, dataset, treatment, log, strategy)
        with stopwatch.phase("base_loading"):
            base = transfer.load_base(
                os.path.join(base_out, MODEL_FILE),
                label=f"the base network {base_out}/{MODEL_FILE}",
            )
    strategy = strategy or distribute.current_strategy()
    if not distribute.is_chief(strategy):
        # Every worker trains (the steps are collective), but only the chief writes the
        # run; this one writes to a scratch directory, removed afterwards, and resumes from
        # the chief's backup.
        os.makedirs(config.workdir, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".tmp-worker-", dir=config.workdir)
        try:
            metrics = _train_run(
                config,
                dataset,
                treatment,
                base,
                scratch,
                log,
                strategy,
                guard,
                stopwatch,
                run_path=out,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        distribute.barrier(strategy)  # the chief has written the run: e.g. a base to copy
        return metrics, out
    created = not os.path.exists(out)
    try:
        with run_lock(out):
            stored = read_metrics(out)  # another process may have finished it meanwhile
            if stored is not None:
                return stored, out
            metrics = _train_run(
                config, dataset, treatment, base, out, log, strategy, guard, stopwatch
            )
    except transfer.BaseMismatchError:
        if created:  # refused before any training: leave no run directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    distribute.barrier(strategy)  # the other workers wait here for what was written
    return metrics, out


def _train_run(
    config, dataset, treatment, base, out, log, strategy, guard, stopwatch, run_path=None
):
    """Builds, trains, evaluates and stores one run in `out`; the caller holds its lock.

    stopwatch: gets the phases of this run's time (metrics.json "timings").
    run_path: the run's own directory when `out` is a non-chief worker's scratch copy.
    """
    run_path = run_path or out
    bad_files = pipeline.BadFiles()  # named by the run: the decoders' own lines are dropped
    try:
        with keras_compat.without_decoder_noise():
            return _train_and_store(
                config,
                dataset,
                treatment,
                base,
                out,
                log,
                strategy,
                guard,
                stopwatch,
                run_path,
                bad_files,
            )
    except Exception as e:  # the input pipeline's watchdog (pipeline.make_dataset)
        if pipeline.NOTHING_READ in str(e):
            raise pipeline.nothing_readable_error(bad_files) from None
        raise


def _train_and_store(
    config, dataset, treatment, base, out, log, strategy, guard, stopwatch, run_path, bad_files
):
    with stopwatch.phase("setup"):
        model, plans, inputs = _set_up(
            config, dataset, treatment, base, out, strategy, log, bad_files
        )
    train_data, val_ds, probe, *holdout_ds = inputs
    half = dataset.split.half(treatment.target)
    log(
        f"Training {os.path.basename(run_path)} on half {treatment.target} ({len(half)} "
        f"classes) for {train.num_epochs(config.train) * config.train.steps_per_epoch} steps "
        f"-> {run_path}"
    )
    hparams = {
        "dataset": dataset.name,
        "split": dataset.split.name,
        "mode": treatment.mode,
        "n": treatment.n,
        "copied_lr_mult": float(config.train.copied_lr_mult),
        "copied_fc_lr_mult": copied_fc_lr_mult(config, treatment) or -1.0,
        "base_lr": float(config.train.base_lr),
        "seed": pipeline.run_seed(config, dataset),
    }
    counter = train.StepCounter()
    logger = layer_logging.LayerLogger(
        os.path.join(out, "logs"),
        probe,  # a fixed validation batch across the classes
        [p.name for p in plans if p.trainable],
        config.train.log_every_steps,
        hparams,
        counter,
        stopwatch,
    )
    with stopwatch.phase("training_steps"):
        metrics = train.fit_and_evaluate(
            model,
            train_data,
            val_ds,
            out,
            config.train,
            verbose=config.verbose,
            log=log,
            extra_callbacks=[
                logger,
                train.BadFileReport(bad_files, out, log),
                *([guard] if guard else []),
            ],
            restore_dir=run_path,
            counter=counter,
            holdout_ds=holdout_ds[0] if holdout_ds else None,
            stopwatch=stopwatch,
        )
    log(f"{os.path.basename(run_path)}: weights fingerprint {weights_fingerprint(model)}")
    metrics.update(
        mode=treatment.mode,
        n=treatment.n,
        run=treatment.run_name,
        split=dataset.split.name,
        dataset=dataset.name,
        seed=hparams["seed"],
        copied_lr_mult=float(config.train.copied_lr_mult),
        mean_rgb=model.get_layer(caffenet.NORMALIZATION_LAYER).mean_rgb,
        num_classes=len(half),
        bad_files=len(bad_files.all()),
        base_model=config.base_model if external_base(config, treatment) else None,
    )
    if metrics["status"] == "finished":
        with stopwatch.phase("export"):
            save_model(model, out)
            export.export_saved_model(model, out)
    metrics["timings"] = stopwatch.rounded()  # this process's part of a resumed run
    with atomic.reporting_full_disk(os.path.join(out, METRICS_FILE)):
        atomic.write_json(os.path.join(out, METRICS_FILE), metrics)
    return metrics


def save_model(model, out):
    """Writes <out>/model.keras atomically, with the permissions of a plain write."""
    tmp_model = os.path.join(out, ".tmp-" + MODEL_FILE)
    try:
        with atomic.reporting_full_disk(os.path.join(out, MODEL_FILE)):
            model.save(tmp_model)
            atomic.plain_file_mode(tmp_model)
            os.replace(tmp_model, os.path.join(out, MODEL_FILE))
    finally:
        if os.path.exists(tmp_model):
            os.remove(tmp_model)


def _set_up(config, dataset, treatment, base, out, strategy, log, bad_files):
    """The run's config record, seed, model (compiled, layers copied) and inputs.

    Returns:
      (model, layer plans, (train, val, probe[, holdout])); files the inputs skip are
      recorded in `bad_files`.
    """
    with atomic.reporting_full_disk(os.path.join(out, CONFIG_FILE)):
        atomic.write_json(
            os.path.join(out, CONFIG_FILE),
            {**config.to_dict(), "mode": treatment.mode, "n": treatment.n},
        )
    # A distinct but reproducible seed per run: fresh layers never repeat the base's init.
    keras.utils.set_random_seed(
        pipeline.run_seed(config, dataset) * 1000 + zlib.crc32(treatment.run_name.encode()) % 1000
    )
    half = dataset.split.half(treatment.target)
    # Its own mean if it copies nothing; a transfer network inherits its base's.
    mean_rgb, mean_image = (
        (None, None)
        if base is not None and treatment.base_mode
        else mean.run_mean(config, dataset, treatment, log)
    )
    # float32, or mixed_float16 / mixed_bfloat16 (float16 gets loss scaling from compile).
    keras.config.set_dtype_policy(config.train.precision)
    with strategy.scope():  # variables (model and optimizer) are created per replica
        base_half = dataset.split.half(treatment.source) if treatment.base_mode else ()
        model, plans = transfer.build_model(
            treatment,
            config.model,
            fc8_outputs(config, dataset, half),
            base,
            config.train.copied_lr_mult,
            fc8_outputs(config, dataset, base_half),
            mean_rgb=mean_rgb,
            scale=config.dataset.scale,
            mean_image=mean_image,
            copied_fc_lr_mult=copied_fc_lr_mult(config, treatment),
        )
        train.compile_model(model, config.train, plans)
    holdout = config.train.get("holdout_fraction", 0.0)
    inputs = pipeline.make_run_inputs(
        config,
        dataset,
        half,
        strategy,
        bad_files,
        holdout=(holdout, pipeline.run_seed(config, dataset)) if holdout > 0 else None,
    )
    return model, plans, inputs


def weights_fingerprint(model):
    """sha1 of all weights: equal on every worker of a multi-worker run, or they diverged."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()[:16]
