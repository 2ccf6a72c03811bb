"""Command line: flags -> config -> run a treatment -> print a summary.

    python -m kt_transfer.main --mode=AnB --n=4
    python -m kt_transfer.main --config=configs/imagenet_paper.py \
        --config.dataset.data_dir=/data/imagenet --mode=BnB+ --n=3
    python -m kt_transfer.main --mode=grid     # every treatment and n; run several at once
    python -m kt_transfer.main --mode=tune --n=4   # keras-tuner: copied layers' lr scale

Every value of the config file can be overridden, e.g. --config.train.total_steps=400;
a misspelled key is an error.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from kt_transfer import config_files

_DEFAULT_CONFIG = config_files.config_path("embedded")
try:  # ml_collections applies the --config.* overrides of sys.argv here, at definition
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Experiment config file (see configs/).", lock_config=True
    )
except (AttributeError, KeyError) as e:
    sys.exit(config_files.unknown_key_message(e, sys.argv, "configs/embedded.py by default"))
flags.DEFINE_string(
    "mode",
    None,
    "Treatment: baseA, baseB, AnB, AnB+, BnB, BnB+, BnA, "
    "BnA+, AnA, AnA+, RnB, RnA (R = random frozen features); or grid (the "
    "whole experiment, config.grid); or tune (keras-tuner searches the copied "
    "layers' lr scale, config.tune, with --n); or similarity (CKA, linear "
    "probes and LogME from trained networks, config.similarity). Overrides "
    "config.mode.",
)
flags.DEFINE_integer(
    "n", None, "Layers copied, 1..7 (8: the restart control, BnB+ or AnA+). Overrides config.n."
)
flags.DEFINE_string("workdir", None, "Where runs are written. Overrides config.workdir.")
flags.DEFINE_string(
    "base_model",
    None,
    "Copy layers from this exported base network (a "
    ".keras file or SavedModel directory) instead of the workdir's own base. "
    "Overrides config.base_model.",
)
flags.DEFINE_bool(
    "traceback",
    False,
    "On an error, show Python's traceback as well as the one error: line (for reporting a bug).",
)
FLAGS = flags.FLAGS


def resolve_config():
    """The config file with the --mode/--n/--workdir shortcuts applied."""
    config = _CONFIG.value  # a file that does not load was refused in _parse_flags
    with config.unlocked():
        for key in ("mode", "n", "workdir", "base_model"):
            if FLAGS[key].value is not None:
                config[key] = FLAGS[key].value
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    config = resolve_config()
    _set_output_verbosity(FLAGS.verbosity)
    # Every value is checked before any work: no dataset generated, nothing written.
    from kt_transfer import validate

    try:
        validate.validate(config)
    except validate.ConfigError as e:
        _fail(e)
    from kt_transfer.analysis import summary
    from kt_transfer.data import sources
    from kt_transfer.networks import families, transfer
    from kt_transfer.runs import experiment, tune
    from kt_transfer.training import distribute

    treatment = None
    if config.mode not in ("grid", "tune", "similarity"):
        treatment = transfer.parse_treatment(  # validated above
            config.mode, config.n, families.block_names(config.model)
        )
    if config.mode == "grid":
        _run_grid(config)
        return
    try:
        strategy = distribute.make_strategy(config.distribute)
        dataset = sources.resolve_dataset(config)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # incl. a full disk
        _fail(e)
    try:
        if config.mode == "tune":
            tune.run_sweep(config, dataset, strategy=strategy)
            return
        if config.mode == "similarity":
            from kt_transfer.analysis import representations
            from kt_transfer.runs import grid

            representations.run_similarity(config, dataset)
            grid.write_results(config, dataset, only_if_written=True)  # + its rank lines
            return
        metrics, out = experiment.run_treatment(config, dataset, treatment, strategy=strategy)
    except (
        RuntimeError,  # busy run dir, failed base, full disk, unreadable backup
        FileNotFoundError,  # no runs
        ValueError,  # an unfit or unreadable base, an unreadable half of a grid's split
    ) as e:
        _fail(e)
    print(summary.summary(config, dataset, treatment, metrics, out, argv=sys.argv[1:]))
    if metrics["status"] != "finished":
        sys.exit(1)


def _run_grid(config):
    """--mode=grid: this process schedules, its workers (or Ray's) train. A Ray address
    that does not answer and the workdir's grid lock come first, so a typo or a second
    grid on the same workdir is refused at once."""
    from kt_transfer.data import sources
    from kt_transfer.runs import executors, grid

    try:
        if config.grid.executor == "ray":  # before the data: an address typo fails in seconds
            executors.check_ray_address(executors.ray_address(config.grid))
        with grid.grid_lock(config.workdir):
            dataset = sources.resolve_dataset(config)
            for sized in grid.target_size_configs(config):
                grid.run_grid(sized, dataset)
    except (RuntimeError, ValueError, FileNotFoundError) as e:  # incl. GridIncompleteError
        _fail(e)


def _fail(error):
    """Ends the command with one `error:` line (and the traceback with --traceback)."""
    if FLAGS.traceback:
        raise error
    sys.exit(f"error: {error}")


def _set_output_verbosity(verbosity):
    """kt_transfer's own lines and Keras' progress bars by default; with absl's
    --verbosity=1 also TensorFlow's INFO lines (the SavedModel export's). The native
    start-up lines come before flags are parsed: KT_TRANSFER_VERBOSE=1 shows those too
    (keras_compat's quiet_* helpers read it)."""
    from kt_transfer.training import keras_compat

    if verbosity >= 1:
        os.environ[keras_compat.VERBOSE_ENV] = "1"


def _parse_flags(argv):
    """absl's parsing, with a bad flag value or a misspelled --config.* key (of a
    --config file; the default file's keys are checked at the flag's definition)
    reported as one error line rather than ml_collections' traceback."""
    config_file = _config_file_argument(argv)
    if config_file is not None and not os.path.isfile(config_file):
        sys.exit(
            f"error: --config={config_file}: no such file; give a config file, e.g. "
            f"--config={_DEFAULT_CONFIG} (the default) or one of configs/"
        )
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --help to see the flags.")
    except (AttributeError, KeyError) as e:
        sys.exit(config_files.unknown_key_message(e, argv, "the --config file"))
    except Exception as e:  # the --config file itself fails to run (a syntax error, ...)
        sys.exit(
            f"error: --config={config_file} could not be loaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); fix that file, or give "
            "another (see configs/)"
        )


def _config_file_argument(argv):
    """The path given to --config, if any (without its ":override" suffix)."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            return arg[len("--config=") :].split(":")[0]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
    return None


def run():
    """Console-script entry point (`kt-transfer`)."""
    from kt_transfer.training import keras_compat

    # Once absl has parsed the flags, TensorFlow looks for GPUs at some later point (even
    # at interpreter exit) and the CUDA runtime prints its "no driver" line: look first.
    with keras_compat.quiet_native_stderr():
        keras_compat.probe_devices()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
