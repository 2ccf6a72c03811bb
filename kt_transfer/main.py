"""Command line: flags -> config -> run a treatment -> print a summary.

    python -m kt_transfer.main --mode=AnB --n=4
    python -m kt_transfer.main --config=configs/imagenet_paper.py \
        --config.dataset.data_dir=/data/imagenet --mode=BnB+ --n=3
    python -m kt_transfer.main --mode=grid     # every treatment and n; run several at once
    python -m kt_transfer.main --mode=tune --n=4   # keras-tuner: copied layers' lr scale

Every value of the config file can be overridden, e.g. --config.train.total_steps=400;
a misspelled key is an error.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from kt_transfer import config_files

_DEFAULT_CONFIG = config_files.config_path("embedded")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Experiment config file (see configs/).", lock_config=True)
flags.DEFINE_string("mode", None, "Treatment: baseA, baseB, AnB, AnB+, BnB, BnB+, BnA, "
                    "BnA+, AnA, AnA+, RnB, RnA (R = random frozen features); or grid (the "
                    "whole experiment, config.grid); or tune (keras-tuner searches the copied "
                    "layers' lr scale, config.tune, with --n). Overrides config.mode.")
flags.DEFINE_integer("n", None, "Layers copied, 1..7. Overrides config.n.")
flags.DEFINE_string("workdir", None, "Where runs are written. Overrides config.workdir.")
flags.DEFINE_string("base_model", None, "Copy layers from this exported base network (a "
                    ".keras file or SavedModel directory) instead of the workdir's own base. "
                    "Overrides config.base_model.")
FLAGS = flags.FLAGS


def resolve_config():
    """The config file with the --mode/--n/--workdir shortcuts applied."""
    config = _CONFIG.value
    with config.unlocked():
        for key in ("mode", "n", "workdir", "base_model"):
            if FLAGS[key].value is not None:
                config[key] = FLAGS[key].value
    return config


def check_base_model(config, treatment):
    """--base_model: an existing .keras file or SavedModel dir, for a copying treatment."""
    from kt_transfer import transfer
    if not config.base_model:
        return
    if treatment.base_mode is None:
        raise ValueError(f"--base_model is for treatments that copy layers from a base (AnB, "
                         f"AnB+, BnB, ...); --mode={treatment.mode} copies none")
    transfer.base_model_format(config.base_model)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    config = resolve_config()
    # Validate the cheap things before any long work (dataset generation, training).
    from kt_transfer import grid, train, transfer, tune
    try:
        train.num_epochs(config.train)  # total_steps must be whole epochs
        treatment = None
        if config.mode in ("grid", "tune") and config.distribute.strategy == "multi_worker":
            raise ValueError(
                f"--mode={config.mode} spreads whole runs over its workers; "
                "--config.distribute.strategy=multi_worker spreads one run over machines. "
                "Give each grid or tuner worker mirrored (or auto) instead")
        if config.mode == "grid":
            grid.cells(config.grid)
        elif config.mode == "tune":
            tune.treatment_of(config)
        else:
            treatment = transfer.parse_treatment(config.mode, config.n)
            check_base_model(config, treatment)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    # TensorFlow loads here, after validation; the strategy first, before any TF op.
    from kt_transfer import distribute, experiment, report
    try:
        strategy = distribute.make_strategy(config.distribute)
        dataset = experiment.resolve_dataset(config)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    try:
        if config.mode == "grid":
            grid.run_grid(config, dataset, strategy=strategy)
            return
        if config.mode == "tune":
            tune.run_sweep(config, dataset, strategy=strategy)
            return
        metrics, out = experiment.run_treatment(config, dataset, treatment, strategy=strategy)
    except (RuntimeError, transfer.BaseMismatchError) as e:  # busy run dir, failed or unfit base
        sys.exit(f"error: {e}")
    print(report.summary(config, dataset, treatment, metrics, out))
    if metrics["status"] != "finished":
        sys.exit(1)


def run():
    """Console-script entry point (`kt-transfer`)."""
    app.run(main)


if __name__ == "__main__":
    run()
