"""Every config value checked before any work: one `validate(config)` in front of it all.

main.py calls it first, before the embedded dataset is generated, before a strategy is
made, before anything is written under the workdir or the data directory. A bad value is
a `ConfigError` naming the `--config.` key (or flag), what it got and what it accepts.
Only the config is read here (and whether paths exist): no model is built, no TensorFlow
op runs; a user's network function (--config.model.network=module:function) alone is
called, on a symbolic input, to learn its cut points.
"""

import importlib.util
import json
import math
import os
import re

from kt_transfer import atomic
from kt_transfer.data import mean, splits
from kt_transfer.networks import architecture, families, hub, transfer
from kt_transfer.networks.caffenet import INITS
from kt_transfer.training import distribute

DATASETS = ("embedded", "folder", "tfds")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
TUNERS = ("random", "bayesian", "hyperband")
# A split, optionally a seeded replicate of it (natman.s1: train.seed + 1; splits.py).
SPLIT_PATTERN = re.compile(r"(random\d+|natman|all|cross)(\.s[1-9]\d*)?")
WHOLE_SPLIT_MODES = ("baseB", "RnB")  # split=all: the whole-dataset base and its control
MAX_EMBEDDED_CLASSES = 100


class ConfigError(ValueError):
    """A config value that cannot work; the message says which key and what to give."""


class _Checker:
    """Collects the problems of a config, so a user sees all of them at once."""

    def __init__(self, config):
        self.config = config
        self.problems = []

    def value(self, key):
        node = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def fail(self, key, accepts, got=None):
        got = self.value(key) if got is None else got
        flag = key if key in ("mode", "n", "workdir", "base_model") else f"config.{key}"
        self.problems.append(f"--{flag}={got!r}: {accepts}")

    def one_of(self, key, choices):
        if self.value(key) not in choices:
            self.fail(key, f"use one of {', '.join(choices)}")

    def number(self, key, low=None, high=None, integer=False, low_open=False):
        """low <= value <= high (low < value with low_open); an int if `integer`."""
        value = self.value(key)
        kind = int if integer else (int, float)
        if (
            isinstance(value, bool)
            or not isinstance(value, kind)
            or (not integer and not math.isfinite(value))
        ):
            self.fail(key, f"must be {'an integer' if integer else 'a number'}")
            return False
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            bounds = (
                f"{'>' if low_open else '>='} {low:g}" if low is not None else "",
                f"<= {high:g}" if high is not None else "",
            )
            self.fail(key, "must be " + " and ".join(b for b in bounds if b))
            return False
        return True

    def boolean(self, key):
        if not isinstance(self.value(key), bool):
            self.fail(key, "must be True or False")


def validate(config):
    """Checks every value of a resolved config (after the --mode/--n/... shortcuts).

    Raises:
      ConfigError: listing every problem found, one per line, each naming its key.
    """
    check = _Checker(config)
    check.blocks = _check_network(check, config)
    _check_run(check, config)
    _check_dataset(check, config.dataset)
    _check_source_dataset(check, config)
    _check_model(check, config)
    _check_train(check, config.train)
    _check_distribute(check)
    _check_grid(check, config.grid)
    _check_tune(check, config)
    _check_target_size(check, config)
    if check.problems:
        raise ConfigError("\n  ".join(["bad config:"] + check.problems))


def _check_run(check, config):
    check.one_of("verbose", (0, 1, 2))
    if not isinstance(config.workdir, str) or not config.workdir:
        check.fail("workdir", "give a directory for the runs")
    else:
        _check_writable_dir(check, "workdir", config.workdir)
    if not isinstance(config.split, str) or not SPLIT_PATTERN.fullmatch(config.split):
        check.fail(
            "split",
            "use random<seed> (e.g. random0; the paper's halves are "
            "random0..random3), natman, or all (every class: the whole-dataset "
            "base and the random-weights control), or cross (between two datasets: "
            "--config.source_dataset), optionally with .s<k> for a "
            "seeded replicate (natman.s1: the same halves, train.seed + k)",
        )
    mode = config.mode
    if mode == "similarity":
        sc = config.similarity
        if not sc.halves or any(h not in ("A", "B") for h in sc.halves):
            check.fail("similarity.halves", 'give A and/or B, e.g. \'("A", "B")\'')
        for key in ("max_images", "probe_train_images", "probe_epochs", "transfer_images"):
            check.number(f"similarity.{key}", low=4, integer=True)
        check.number("similarity.max_transfer_runs", low=0, integer=True)
        return
    if mode in ("grid", "tune"):
        if config.base_model and mode == "grid":
            check.fail(
                "base_model",
                "--mode=grid trains its own bases and copies from "
                "them; --base_model is for one transfer run (e.g. --mode=AnB --n=4)",
            )
        if config.distribute.strategy == "multi_worker":
            check.fail(
                "distribute.strategy",
                f"--mode={mode} spreads whole runs over its "
                "workers, multi_worker spreads one run over machines: give each grid "
                "or tuner worker mirrored (or auto) instead",
            )
        return
    try:
        treatment = transfer.parse_treatment(mode, config.n, check.blocks)
    except ValueError as e:
        check.problems.append(str(e))
        return
    if splits.base_name(config.split) == splits.WHOLE and treatment.mode not in WHOLE_SPLIT_MODES:
        check.fail(
            "mode",
            "with --config.split=all (every class) run the whole-dataset "
            "base (--mode=baseB) or the random-weights control (--mode=RnB --n=N); "
            "transfer between halves needs a split into halves (random0, natman)",
            got=mode,
        )
    if config.base_model:
        if treatment.base_mode is None:
            check.fail(
                "base_model",
                f"--base_model is for treatments that copy layers from "
                f"a base (AnB, AnB+, BnB, ...); --mode={mode} copies none",
            )
        else:
            try:
                form = transfer.base_model_format(config.base_model)
            except (ValueError, FileNotFoundError) as e:
                check.problems.append(str(e))
            else:
                if form == "keras_hub" and families.network_name(config.model) != "keras_hub":
                    check.fail(
                        "base_model",
                        f"is a keras-hub preset ({hub.preset_class(config.base_model)}): "
                        "build the network from it, --config.model.network=keras_hub "
                        f"--config.model.keras_hub.preset={config.base_model}",
                    )


def _check_dataset(check, dc):
    _check_image_source(check, "dataset", dc)
    check.number("dataset.resize_size", low=1, integer=True)
    check.one_of("dataset.mean", mean.MEANS)
    mean_rgb = dc.mean_rgb
    if not (
        isinstance(mean_rgb, (tuple, list))
        and len(mean_rgb) == 3
        and all(isinstance(v, (int, float)) and 0 <= v <= 255 for v in mean_rgb)
    ):
        check.fail(
            "dataset.mean_rgb", "give three numbers in 0..255, e.g. '(123.68, 116.78, 103.94)'"
        )
    check.number("dataset.mean_images", low=1, integer=True)
    check.boolean("dataset.deterministic")
    check.number("dataset.scale", low=0, low_open=True)


def _check_image_source(check, key, dc):
    """Where one dataset's images come from (`key`: dataset or source_dataset)."""
    check.one_of(f"{key}.name", DATASETS)
    if dc.name == "folder" and not (dc.data_dir and os.path.isdir(dc.data_dir)):
        check.fail(
            f"{key}.data_dir",
            "must be an existing ImageNet-style folder (train/, val/) when "
            f"--config.{key}.name=folder",
        )
    if dc.name == "tfds" and not dc.tfds_name:
        check.fail(
            f"{key}.tfds_name",
            f"name a TFDS dataset (imagenet2012, cifar100, ...) when --config.{key}.name=tfds",
        )
    if dc.name == "embedded":
        check.number(f"{key}.embedded.num_classes", low=2, high=MAX_EMBEDDED_CLASSES, integer=True)
        check.number(f"{key}.embedded.train_per_class", low=1, integer=True)
        check.number(f"{key}.embedded.val_per_class", low=1, integer=True)
        check.number(f"{key}.embedded.image_size", low=16, integer=True)
        check.number(f"{key}.embedded.seed", low=0, integer=True)
        check.number(f"{key}.embedded.first_class", low=0, integer=True)
        last = dc.embedded.get("first_class", 0) + dc.embedded.num_classes
        if isinstance(last, int) and last > MAX_EMBEDDED_CLASSES:
            check.fail(
                f"{key}.embedded.first_class",
                f"the generator draws {MAX_EMBEDDED_CLASSES} classes: keep first_class + "
                f"num_classes <= {MAX_EMBEDDED_CLASSES}",
            )


def _check_source_dataset(check, config):
    """Between two datasets the split is `cross` (A: the source, B: the target), and
    `cross` means nothing without a source dataset."""
    sd = config.get("source_dataset")
    between = sd is not None and bool(sd.name)
    if between:
        _check_image_source(check, "source_dataset", sd)
    names = [config.split]
    if config.mode == "grid":
        names += [n for n in config.grid.splits if isinstance(n, str)]
    for name in names:
        if not isinstance(name, str) or not SPLIT_PATTERN.fullmatch(name):
            continue  # named by _check_run / _check_grid
        key = "split" if name == config.split else "grid.splits"
        is_cross = splits.base_name(name) == splits.CROSS
        if between and not is_cross:
            check.fail(
                key,
                f"between two datasets (--config.source_dataset.name) the split is "
                f"{splits.CROSS!r}: half A the source's classes, half B the target's "
                f"(seeded replicates: {splits.CROSS}.s1, ...)",
                got=name,
            )
        elif is_cross and not between:
            check.fail(
                key,
                f"{splits.CROSS!r} is the split between two datasets: name the source with "
                "--config.source_dataset.name (embedded, folder or tfds), or use random0",
                got=name,
            )


FC8_OUTPUTS = ("half", "all")


def _check_network(check, config):
    """The network's cut points (families.py), or None where --config.model.network or
    its sub-config cannot build one (each problem named)."""
    mc = config.model
    network = families.network_name(mc)
    if network not in families.BUILT_IN and not families.is_user_function(network):
        check.fail(
            "model.network",
            f"use one of {', '.join(families.BUILT_IN)}, or module:function for your own "
            "network (README, 'Your network, your data')",
        )
        return None
    check.one_of("model.batchnorm_fine_tune", transfer.BATCHNORM_FINE_TUNE)
    problems = len(check.problems)
    if network == "resnet":
        stages = mc.resnet.stages
        if (
            not isinstance(stages, tuple | list)
            or not stages
            or not all(isinstance(c, int) and c >= 1 for c in stages)
        ):
            check.fail("model.resnet.stages", "give residual blocks per stage, e.g. '(2, 2, 2, 2)'")
        check.one_of("model.resnet.block", ("basic", "bottleneck"))
        check.one_of("model.resnet.stem", ("small", "imagenet"))
    elif network == "vit":
        for key in ("patch_size", "hidden_dim", "num_heads", "num_blocks", "mlp_dim"):
            check.number(f"model.vit.{key}", low=1, integer=True)
        vc = mc.vit
        if len(check.problems) == problems and vc.hidden_dim % vc.num_heads:
            check.fail("model.vit.hidden_dim", f"must be a multiple of num_heads={vc.num_heads}")
        if len(check.problems) == problems and vc.patch_size > mc.input_size:
            check.fail("model.vit.patch_size", f"must be at most model.input_size={mc.input_size}")
    elif network == "keras_hub":
        if not mc.keras_hub.preset:
            check.fail(
                "model.keras_hub.preset",
                "name a local keras-hub preset directory (what save_to_preset writes)",
            )
        cuts = mc.keras_hub.cut_points
        if not isinstance(cuts, tuple | list) or not all(isinstance(c, str) for c in cuts):
            check.fail("model.keras_hub.cut_points", "give layer names, e.g. '(\"pool1_pool\",)'")
    if len(check.problems) > problems:
        return None
    try:
        return families.block_names(mc)
    except Exception as e:  # a user's function that does not build
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if message.startswith("--config.model.network") or isinstance(e, hub.HubError):
            check.problems.append(message)
        else:
            check.fail("model.network", f"the function does not build a network: {message}")
        return None


def _check_model(check, config):
    mc = config.model
    check.one_of("model.fc8_outputs", FC8_OUTPUTS)
    minimum = architecture.min_input_size()
    if check.number("model.input_size", low=1, integer=True):
        if mc.input_size < minimum and families.network_name(mc) == "caffenet":
            check.fail(
                "model.input_size",
                f"the 8-layer network needs at least {minimum} "
                "(pool5 must keep a 1x1 map); smaller images can be upscaled with "
                f"--config.dataset.resize_size >= {minimum}",
            )
        elif (
            isinstance(config.dataset.resize_size, int)
            and mc.input_size > config.dataset.resize_size
        ):
            check.fail(
                "model.input_size",
                f"crops are taken from images resized to "
                f"--config.dataset.resize_size={config.dataset.resize_size}; use at "
                "most that (or raise the resize size)",
            )
    check.number("model.width", low=0, low_open=True)
    check.number("model.dropout", low=0, high=0.99)
    check.one_of("model.init", INITS)


def _check_target_size(check, config):
    """A smaller target task samples each class's files: folder datasets only."""
    sizes = (
        config.train.get("target_images_per_class", 0),
        *config.grid.get("target_images_per_class", ()),
    )
    if config.dataset.name == "tfds" and any(isinstance(k, int) and k > 0 for k in sizes):
        check.fail(
            "train.target_images_per_class",
            "needs a folder dataset (embedded or folder), not tfds: export the TFDS data as a "
            "folder (docs/data.md) and use --config.dataset.name=folder",
        )


def _check_train(check, tc):
    for key in (
        "batch_size",
        "total_steps",
        "steps_per_epoch",
        "lr_step_size",
        "backup_every_steps",
        "log_every_steps",
    ):
        check.number(f"train.{key}", low=1, integer=True)
    check.number("train.base_lr", low=0, low_open=True)
    check.number("train.lr_gamma", low=0, low_open=True, high=1)
    check.number("train.warmup_steps", low=0, integer=True)
    check.number("train.budget_epochs", low=0, integer=True)
    check.number("train.momentum", low=0, high=0.999)
    check.number("train.weight_decay", low=0)
    check.number("train.bias_lr_mult", low=0)
    check.number("train.copied_lr_mult", low=0)
    check.number("train.copied_fc_lr_mult")  # < 0: copied fc layers use copied_lr_mult
    check.number("train.holdout_fraction", low=0, high=0.5)
    check.number("train.target_images_per_class", low=0, integer=True)
    check.number("train.seed", low=0, integer=True)
    check.one_of("train.precision", PRECISIONS)
    check.boolean("train.jit_compile")
    if (
        isinstance(tc.total_steps, int)
        and isinstance(tc.steps_per_epoch, int)
        and tc.steps_per_epoch > 0
        and tc.total_steps % tc.steps_per_epoch
    ):
        check.fail(
            "train.total_steps",
            f"must be a multiple of --config.train.steps_per_epoch"
            f"={tc.steps_per_epoch} (validation runs after each epoch); change either",
        )


def _check_distribute(check):
    check.one_of("distribute.strategy", distribute.STRATEGIES)
    check.number("distribute.logical_cpus", low=0, integer=True)
    config = check.config
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if config.distribute.strategy == "multi_worker" and backend != "tensorflow":
        check.fail(
            "distribute.strategy",
            f"multi_worker is TensorFlow's (several machines); "
            f"KERAS_BACKEND={backend} runs on the devices of one machine: unset "
            "KERAS_BACKEND, or use --config.distribute.strategy=auto",
        )
    if config.distribute.strategy == "multi_worker":
        _check_tf_config(check)
    replicas = config.distribute.logical_cpus
    if (
        isinstance(replicas, int)
        and replicas > 1
        and isinstance(config.train.batch_size, int)
        and config.train.batch_size % replicas
    ):
        check.fail(
            "train.batch_size",
            f"is the global batch, split over "
            f"--config.distribute.logical_cpus={replicas} replicas: give a multiple "
            f"of {replicas}",
        )


def _check_writable_dir(check, key, path):
    """A folder kt_transfer will write in: a folder (or nothing yet) whose nearest
    existing parent this user may write in."""
    existing = atomic.nearest_existing(path)
    if not os.path.isdir(existing):
        check.fail(key, f"{existing} is a file, not a folder: give a folder for the runs")
    elif not os.access(existing, os.W_OK | os.X_OK):
        check.fail(
            key,
            f"{existing} is not writable by this user (read-only, or another "
            "account's): give a folder you can write in",
        )


def _check_tf_config(check):
    """multi_worker reads the cluster from TF_CONFIG: it must be JSON with a cluster and
    this process's task, or TensorFlow fails with a JSON error that names nothing."""
    raw = os.environ.get("TF_CONFIG")
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
        '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
    )
    if raw is None:
        check.fail(
            "distribute.strategy",
            "multi_worker needs the environment variable "
            f"TF_CONFIG (the cluster's workers and this process's task), {example}",
        )
        return
    try:
        tf_config = json.loads(raw)
        if not isinstance(tf_config, dict) or "cluster" not in tf_config or "task" not in tf_config:
            raise ValueError("it needs the keys cluster and task")
    except ValueError as e:
        check.fail(
            "distribute.strategy",
            f"multi_worker reads the environment variable "
            f"TF_CONFIG, which is not valid ({str(e).splitlines()[0]}; it holds "
            f"{raw[:80]!r}): set it to JSON, {example}",
        )


def _check_grid(check, gc):
    if (
        not gc.directions
        or any(d not in splits.DIRECTIONS for d in gc.directions)
        or len(set(gc.directions)) != len(gc.directions)
    ):
        check.fail(
            "grid.directions", 'give AtoB and/or BtoA, e.g. \'("AtoB", "BtoA")\'', got=gc.directions
        )
    for split in gc.splits:
        if not isinstance(split, str) or not SPLIT_PATTERN.fullmatch(split):
            check.fail(
                "grid.splits",
                "give split names, random<seed>, natman, all or cross, "
                "each optionally with .s<k> (a seeded replicate), e.g. "
                '\'("random0", "random1")\' or \'("natman", "natman.s1")\' '
                "(empty: the config's split)",
                got=split,
            )
    check.one_of("grid.executor", ("local", "ray"))
    if gc.executor == "ray" and importlib.util.find_spec("ray") is None:
        check.fail(
            "grid.executor", 'Ray is not installed: pip install "kt_transfer[ray]", or use local'
        )
    check.number("grid.cpus_per_cell", low=0, low_open=True)
    check.number("grid.gpus_per_cell", low=0)
    check.number("grid.retries", low=0, integer=True)
    check.number("grid.pack_size", low=1, integer=True)
    if not isinstance(gc.ray_address, str):
        check.fail(
            "grid.ray_address",
            "give a Ray address, e.g. '10.0.0.1:6379' (empty: $RAY_ADDRESS, else a local Ray)",
        )
    check.boolean("grid.paper_overlay")
    records_dir = gc.get("records_dir", "")
    if not isinstance(records_dir, str):
        check.fail("grid.records_dir", "give a folder for the grid's records, or '' for none")
    elif records_dir:
        _check_writable_dir(check, "grid.records_dir", records_dir)
    check.boolean("grid.restart_control")
    sizes = gc.get("target_images_per_class", ())
    if not isinstance(sizes, tuple | list) or not all(isinstance(k, int) and k >= 0 for k in sizes):
        check.fail(
            "grid.target_images_per_class",
            "give the target task's training images per class to run, e.g. '(0, 10, 5)' "
            "(0: all of them; empty: train.target_images_per_class alone)",
        )
    last = len(check.blocks or architecture.LAYER_NAMES) - 1
    ns_ok = gc.ns and all(isinstance(n, int) and 1 <= n <= last for n in gc.ns)
    # grid.ns defaults to CaffeNet's 1..7; one treatment of a smaller network never reads it
    if not ns_ok and (check.config.mode == "grid" or not gc.ns):
        check.fail(
            "grid.ns",
            f"give the n values to run, each 1..{last} (blocks of --config.model.network "
            "copied), e.g. '(1, 2, 3)'",
        )
    if not gc.treatments:
        check.fail("grid.treatments", 'name the treatments to run, e.g. \'("AnB", "BnB")\'')
    for mode in gc.treatments:
        try:
            treatment = transfer.parse_treatment(mode, 1)
        except ValueError:
            treatment = None
        if treatment is None or treatment.source is None or treatment.target != "B":
            check.fail(
                "grid.treatments",
                "name treatments in the A -> B direction (BnB, "
                "BnB+, AnB, AnB+, RnB); direction BtoA of grid.directions runs their "
                "mirror images",
                got=mode,
            )


def _check_tune(check, config):
    tc = config.tune
    check.one_of("tune.tuner", TUNERS)
    check.number("tune.max_trials", low=1, integer=True)
    check.number("tune.hyperband_factor", low=2, integer=True)
    check.number("tune.seed", low=0, integer=True)
    check.number("tune.holdout_fraction", low=0, high=0.5)
    if not tc.copied_lr_mults or not all(
        isinstance(v, (int, float)) and v >= 0 for v in tc.copied_lr_mults
    ):
        check.fail(
            "tune.copied_lr_mults", "give the scales to try, each >= 0, e.g. '(1.0, 0.1, 0.0)'"
        )
    if not all(isinstance(v, (int, float)) and v >= 0 for v in tc.copied_fc_lr_mults):
        check.fail(
            "tune.copied_fc_lr_mults", "give scales >= 0, or () to tune them with the conv layers"
        )
    if config.mode == "tune":
        try:
            tune_treatment(config)
        except ValueError as e:
            check.problems.append(str(e))


def tune_treatment(config):
    """The fine-tuned treatment whose copied-layer rate --mode=tune searches.

    Raises:
      ValueError naming --config.tune.treatment, --n or --config.tune.copied_fc_lr_mults.
    """
    treatment = transfer.parse_treatment(
        config.tune.treatment, config.n, families.block_names(config.model)
    )
    if not treatment.fine_tune or treatment.base_mode is None:
        raise ValueError(
            f"--config.tune.treatment={config.tune.treatment!r}: the sweep "
            "tunes copied layers that learn; use AnB+ or BnB+ (or BnA+, AnA+)"
        )
    if config.tune.copied_fc_lr_mults and (
        treatment.n < 6 or families.network_name(config.model) != "caffenet"
    ):
        raise ValueError(
            f"--config.tune.copied_fc_lr_mults needs copied fc layers (n >= 6); "
            f"with --n={treatment.n} only conv layers are copied"
        )
    return treatment
