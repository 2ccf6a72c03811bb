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
from kt_transfer.networks import caffenet, families, transfer
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


# Settings added after experiments were run, at the value that changes nothing: left out
# of the id there, so the experiments run before them keep their ids.
NEUTRAL = {"train": {"target_images_per_class": 0}, "embedded": {"first_class": 0}}


def experiment_dir(config, dataset):
    """<workdir>/<dataset>/<split>/<id>: id = hash of what defines a base network."""
    return os.path.join(config.workdir, dataset.name, dataset.split.name, experiment_id(config))


def experiment_id(config):
    """The hash of what defines a base network: the id of the config's experiment."""
    train_config = _without_neutral(config.train.to_dict(), NEUTRAL["train"])
    for key in NOT_DEFINING_A_BASE:
        train_config.pop(key, None)
    dataset_config = config.dataset.to_dict()
    dataset_config["embedded"] = _without_neutral(dataset_config["embedded"], NEUTRAL["embedded"])
    defining = {
        "dataset": dataset_config,
        "model": families.defining_fields(config.model),
        "train": train_config,
    }
    source_dataset = config.get("source_dataset")
    if source_dataset is not None and source_dataset.name:  # absent: the ids of before
        defining["source_dataset"] = source_dataset.to_dict()
    return hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]


def _without_neutral(values, neutral):
    """`values` less the settings at their NEUTRAL value."""
    return {k: v for k, v in values.items() if neutral.get(k, object()) != v}


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
    copies_fc = families.network_name(config.model) == "caffenet" and (
        treatment.n > caffenet.LAYER_NAMES.index("fc6")
    )
    return float(mult) if mult >= 0 and treatment.fine_tune and copies_fc else None


def base_config(config, treatment=None):
    """The config a treatment's base is trained under: without a tuning trial's shorter
    step budget (train.budget_epochs) or held-out images (train.holdout_fraction); and,
    for a transfer from the other half under a smaller target task
    (train.target_images_per_class), with all of the source half's images: the source
    saw its whole half, the target (and the selffer's base) only the sample."""
    full_source = (
        config.train.get("target_images_per_class", 0) > 0
        and treatment is not None
        and treatment.source != treatment.target
    )
    if (
        config.train.get("budget_epochs", 0) <= 0
        and config.train.get("holdout_fraction", 0.0) <= 0
        and not full_source
    ):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.budget_epochs = 0
        config.train.holdout_fraction = 0.0
        if full_source:
            config.train.target_images_per_class = 0
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
    config_of_base = base_config(config, treatment)  # e.g. a tuning trial copies a full base
    base_out = run_dir(config_of_base, dataset, base)
    base_metrics = _without_lost_weights(read_metrics(base_out), base_out, log)
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


def _without_lost_weights(metrics, out, log):
    """A finished base whose network file is gone (its record restored from a grid's
    saved records, tools/grid_records.py, or the file deleted) cannot be copied from: its
    record is set aside and the base trained again. Under one config a base trains to the
    same weights (the logged fingerprint), so its transfers are those of the record."""
    model = os.path.join(out, MODEL_FILE)
    if metrics is None or metrics.get("status") != "finished" or os.path.exists(model):
        return metrics
    log(
        f"{os.path.basename(out)} finished earlier but {model} is gone: training it again "
        "(the same config trains the same weights)"
    )
    os.replace(os.path.join(out, METRICS_FILE), os.path.join(out, "metrics-without-weights.json"))
    return None


def load_network(path):
    """The trained Keras network stored in run directory `path` (its model.keras), or
    None if there is none: how the analyses and the tuner read a finished run."""
    model_path = os.path.join(path, MODEL_FILE)
    if not os.path.exists(model_path):
        return None
    return keras.saving.load_model(model_path, safe_mode=True, compile=False)


def run_treatment(config, dataset, treatment, log=print, strategy=None):
    """Trains and evaluates one treatment (its base first, if missing).

    Args:
      strategy: tf.distribute strategy (or on JAX a distribute.KerasDistribution) to build
        and train under (default: the current).

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
    stopwatch = timing.Stopwatch()
    base = _base_of(config, dataset, treatment, log, strategy, stopwatch)
    strategy = strategy or distribute.current_strategy()
    if not distribute.is_chief(strategy):
        # Every worker trains (the steps are collective), but only the chief writes the
        # run; this one writes to a scratch directory, removed afterwards, and resumes from
        # the chief's backup.
        os.makedirs(config.workdir, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".tmp-worker-", dir=config.workdir)
        try:
            [metrics] = _train_runs(
                config,
                dataset,
                [_Run(treatment, base, scratch, run_path=out)],
                log,
                strategy,
                stopwatch,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        distribute.barrier(strategy)  # the chief has written the run: e.g. a base to copy
        return metrics, out
    [(metrics, out)] = _run_locked(
        config, dataset, [_Run(treatment, base, out)], log, strategy, stopwatch
    )
    distribute.barrier(strategy)  # the other workers wait here for what was written
    return metrics, out


def can_pack(strategy):
    """Whether networks can train as a pack (training/packing.py) under `strategy`: on
    TensorFlow, under its default strategy (one device, one process: the CPU machines'
    grids). Packs under a mirrored or multi-worker strategy are not tested, so there each
    network trains alone."""
    return (
        keras.backend.backend() == "tensorflow"
        and type(strategy).__name__ == "_DefaultDistributionStrategy"
    )


def run_pack(config, dataset, treatments, log=print, strategy=None):
    """Trains treatments that read the same target half as one pack (training/packing.py):
    one input stream, one step for all; each keeps its own run directory, backups, logs
    and metrics. Bases are trained first where missing; finished runs are skipped.

    Returns:
      [(metrics dict, run directory)] in the order of `treatments`.
    Raises:
      ValueError: the treatments read different target halves.
      RunBusyError: another process holds one of the run directories.
    """
    strategy = strategy or distribute.current_strategy()
    if len({t.target for t in treatments}) > 1:
        raise ValueError(
            "a pack's networks read one target half: " + ", ".join(t.run_name for t in treatments)
        )
    stored = {t: read_metrics(run_dir(config, dataset, t)) for t in treatments}
    todo = [t for t in treatments if stored[t] is None]
    if len(todo) < 2 or not can_pack(strategy):
        return [run_treatment(config, dataset, t, log, strategy) for t in treatments]
    stopwatch, bases = timing.Stopwatch(), {}
    runs = []
    for treatment in todo:
        if treatment.base_mode not in bases:
            bases[treatment.base_mode] = _base_of(
                config, dataset, treatment, log, strategy, stopwatch
            )
        out = run_dir(config, dataset, treatment)
        runs.append(_Run(treatment, bases[treatment.base_mode], out))
    trained = dict(
        zip(
            [r.treatment for r in runs],
            _run_locked(config, dataset, runs, log, strategy, stopwatch),
        )
    )
    return [trained.get(t) or (stored[t], run_dir(config, dataset, t)) for t in treatments]


class _Run:
    """A treatment to train, its base (or None), where it is written (`out`), and its own
    run directory when `out` is a non-chief worker's scratch copy."""

    def __init__(self, treatment, base, out, run_path=None):
        self.treatment, self.base, self.out = treatment, base, out
        self.run_path = run_path or out


def _base_of(config, dataset, treatment, log, strategy, stopwatch):
    """The base network the treatment copies from (trained first if missing), or None."""
    if external_base(config, treatment):
        log(f"{treatment.run_name} copies layers from --base_model={config.base_model}")
        with stopwatch.phase("base_loading"):
            return transfer.load_base(config.base_model, model_config=config.model)
    if treatment.base_mode:
        base_out = ensure_base(config, dataset, treatment, log, strategy)
        with stopwatch.phase("base_loading"):
            return transfer.load_base(
                os.path.join(base_out, MODEL_FILE),
                label=f"the base network {base_out}/{MODEL_FILE}",
            )
    return None


def _run_locked(config, dataset, runs, log, strategy, stopwatch):
    """Trains the runs holding each one's lock (a run another process finished meanwhile
    is read, not trained). Returns [(metrics, out)] in order. A run refused before any
    training (its base does not fit) leaves no run directory behind."""
    created = [r.out for r in runs if not os.path.exists(r.out)]
    try:
        with contextlib.ExitStack() as locks:
            for r in runs:
                locks.enter_context(run_lock(r.out))
            finished = {r.out: read_metrics(r.out) for r in runs}
            todo = [r for r in runs if finished[r.out] is None]
            if todo:
                for r, metrics in zip(
                    todo, _train_runs(config, dataset, todo, log, strategy, stopwatch)
                ):
                    finished[r.out] = metrics
    except transfer.BaseMismatchError:
        for out in created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return [(finished[r.out], r.out) for r in runs]


def _train_runs(config, dataset, runs, log, strategy, stopwatch):
    """Builds, trains (as one pack), evaluates and stores runs in their `out`; the caller
    holds their locks. stopwatch: gets the phases of the runs' time (each run's
    metrics.json "timings" gets its share)."""
    bad_files = pipeline.BadFiles()  # named by the run: the decoders' own lines are dropped
    try:
        with keras_compat.without_decoder_noise():
            return _train_and_store(config, dataset, runs, log, strategy, stopwatch, bad_files)
    except Exception as e:  # the input pipeline's watchdog (pipeline.make_dataset)
        if pipeline.NOTHING_READ in str(e):
            raise pipeline.nothing_readable_error(bad_files) from None
        raise


def _train_and_store(config, dataset, runs, log, strategy, stopwatch, bad_files):
    target = runs[0].treatment.target
    half = dataset.split.half(target)
    with stopwatch.phase("setup"):
        networks = [_set_up_network(config, dataset, r, strategy, log) for r in runs]
        train_data, val_ds, probe, *holdout_ds = _set_up_inputs(
            config, dataset, half, strategy, bad_files
        )
    steps = train.num_epochs(config.train) * config.train.steps_per_epoch
    members = []
    for r, (model, plans) in zip(runs, networks):
        log(
            f"Training {os.path.basename(r.run_path)} on half {target} ({len(half)} "
            f"classes) for {steps} steps -> {r.run_path}"
        )
        counter = train.StepCounter()
        logger = layer_logging.LayerLogger(
            os.path.join(r.out, "logs"),
            probe,  # a fixed validation batch across the classes
            [p.name for p in plans if p.trainable],
            config.train.log_every_steps,
            _hparams(config, dataset, r.treatment),
            counter,
            stopwatch,
            blocks=[p.name for p in plans],
        )
        members.append(
            train.Member(
                model,
                r.out,
                (logger, train.BadFileReport(bad_files, r.out, log)),
                restore_dir=r.run_path,
                counter=counter,
            )
        )
    with stopwatch.phase("training_steps"):
        results = train.fit_pack(
            members,
            train_data,
            val_ds,
            config.train,
            verbose=config.verbose,
            log=log,
            holdout_ds=holdout_ds[0] if holdout_ds else None,
            stopwatch=stopwatch,
        )
    stored = []
    for r, (model, _), metrics in zip(runs, networks, results):
        log(f"{os.path.basename(r.run_path)}: weights fingerprint {weights_fingerprint(model)}")
        metrics.update(
            mode=r.treatment.mode,
            n=r.treatment.n,
            blocks=len(families.block_names(config.model)),
            run=r.treatment.run_name,
            split=dataset.split.name,
            dataset=dataset.name,
            seed=pipeline.run_seed(config, dataset),
            copied_lr_mult=float(config.train.copied_lr_mult),
            mean_rgb=model.get_layer(caffenet.NORMALIZATION_LAYER).mean_rgb,
            num_classes=len(half),
            bad_files=len(bad_files.all()),
            base_model=config.base_model if external_base(config, r.treatment) else None,
        )
        if len(runs) > 1:
            metrics["pack"] = [other.treatment.run_name for other in runs]
        if metrics["status"] == "finished":
            with stopwatch.phase("export"):
                save_model(model, r.out)
                export.export_saved_model(model, r.out)
        stored.append(metrics)
    for r, metrics in zip(runs, stored):
        # This process's part of a resumed run; a pack's time is shared by its members.
        metrics["timings"] = {
            phase: round(seconds / len(runs), 2) for phase, seconds in stopwatch.rounded().items()
        }
        with atomic.reporting_full_disk(os.path.join(r.out, METRICS_FILE)):
            atomic.write_json(os.path.join(r.out, METRICS_FILE), metrics)
    return stored


def _hparams(config, dataset, treatment):
    """The run's hyperparameters, as TensorBoard's HParams dashboard shows them."""
    return {
        "dataset": dataset.name,
        "split": dataset.split.name,
        "mode": treatment.mode,
        "n": treatment.n,
        "copied_lr_mult": float(config.train.copied_lr_mult),
        "copied_fc_lr_mult": copied_fc_lr_mult(config, treatment) or -1.0,
        "base_lr": float(config.train.base_lr),
        "seed": pipeline.run_seed(config, dataset),
    }


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


def _set_up_network(config, dataset, run, strategy, log):
    """The run's config record, seed and model (compiled, layers copied).

    Returns:
      (model, layer plans).
    """
    treatment, base, out = run.treatment, run.base, run.out
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
        model, plans = transfer.build_model(
            treatment,
            config.model,
            fc8_outputs(config, dataset, half),
            base,
            config.train.copied_lr_mult,
            mean_rgb=mean_rgb,
            scale=config.dataset.scale,
            mean_image=mean_image,
            copied_fc_lr_mult=copied_fc_lr_mult(config, treatment),
        )
        train.compile_model(model, config.train, plans)
    return model, plans


def _set_up_inputs(config, dataset, half, strategy, bad_files):
    """The inputs of the runs on `half`: (train, val, probe[, holdout]); files they skip
    are recorded in `bad_files`.

    Every network of a split reads the same stream (files, crops and mirrors), whatever
    its treatment: the op seeds of tf.data's shuffles and random draws combine with the
    global seed, set here from the split's seed alone. That is the paper's design (its
    networks read one fixed LevelDB order), it pairs the treatments, and it is what lets
    a network trained in a pack (training/packing.py) train exactly as it does alone.
    """
    keras.utils.set_random_seed(pipeline.run_seed(config, dataset))
    holdout = config.train.get("holdout_fraction", 0.0)
    return pipeline.make_run_inputs(
        config,
        dataset,
        half,
        strategy,
        bad_files,
        holdout=(holdout, pipeline.run_seed(config, dataset)) if holdout > 0 else None,
    )


def weights_fingerprint(model):
    """sha1 of all weights: equal on every worker of a multi-worker run, or they diverged."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()[:16]
