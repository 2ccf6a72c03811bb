"""Have the bases converged? Trains each at the config's budget and at `--factor` times it.

    python tools/check_convergence.py --workdir=workdir_convergence \
        [--modes=baseA,baseB] [--splits=random0,random1] [--factor=2] \
        [--config=configs/embedded.py] [--config.train.total_steps=...]

The longer run scales the step schedule with the budget (total steps, lr step and
validation interval x factor; the warmup stays), as the paper's solver would be
stretched. For every (split, base) it prints both validation curves and the final top-1
gain of the longer run, then the mean gain over all of them with its 95% t interval, and
draws convergence_<split>_<base>.png in the workdir.

The bases are converged for this project's purpose when twice the budget gains under 1
point top-1 (`--threshold`): then training the transfer networks the same number of
steps measures transfer, not extra training. One pair of runs cannot say that: two
runs of the same base differ by a few points, so the verdict is on the interval of the
mean gain, as for the grid's findings (replicates.convergence_verdict).
All runs are ordinary runs (resumable; a finished one is not trained again).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from kt_transfer import config_files

_CONFIG = config_flags.DEFINE_config_file(
    "config", config_files.config_path("embedded"), "experiment config", lock_config=True
)
flags.DEFINE_string("workdir", "workdir_convergence", "where the runs are written")
flags.DEFINE_list("modes", ["baseA", "baseB"], "the bases to check")
flags.DEFINE_list(
    "splits",
    [],
    "the splits whose bases are checked (default: the config's grid.splits, or its split)",
)
flags.DEFINE_integer("factor", 2, "the longer run's budget, in multiples of the config's")
flags.DEFINE_float("threshold", 0.01, "top-1 gain under which the bases count as converged")
FLAGS = flags.FLAGS


def scaled(config, factor):
    """The config with its step schedule stretched `factor` times."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.total_steps *= factor
        config.train.lr_step_size *= factor
        config.train.steps_per_epoch *= factor
    return config


def main(argv):
    del argv
    from kt_transfer import validate
    from kt_transfer.analysis import replicates
    from kt_transfer.data import sources
    from kt_transfer.networks import transfer
    from kt_transfer.runs import experiment

    config = _CONFIG.value
    with config.unlocked():
        config.workdir = FLAGS.workdir
    validate.validate(config)
    split_names = FLAGS.splits or list(config.grid.splits) or [config.split]
    resolved = sources.resolve_dataset(config)
    gains = []
    for split in split_names:
        dataset = resolved.with_split(split)  # as the grid does: the same images
        for mode in FLAGS.modes:
            runs = {}
            for factor in (1, FLAGS.factor):
                metrics, _ = experiment.run_treatment(
                    scaled(config, factor), dataset, transfer.parse_treatment(mode)
                )
                if metrics["status"] != "finished":
                    raise SystemExit(f"error: {split} {mode} x{factor} failed: {metrics['reason']}")
                runs[factor] = metrics
            for factor, metrics in runs.items():
                curve = ", ".join(f"{e['step']}: {e['top1']:.3f}" for e in metrics["evaluations"])
                print(
                    f"{split} {mode} x{factor} ({metrics['steps']} steps, "
                    f"{metrics['seconds']:.0f} s): final top-1 {metrics['top1']:.4f}; "
                    f"curve {curve}"
                )
            gain = runs[FLAGS.factor]["top1"] - runs[1]["top1"]
            gains.append(gain)
            print(f"{split} {mode}: x{FLAGS.factor} budget gains {gain:+.4f} top-1")
            _plot(runs, os.path.join(FLAGS.workdir, f"convergence_{split}_{mode}.png"))
    estimate, verdict = replicates.convergence_verdict(gains, FLAGS.threshold)
    interval = (
        ""
        if estimate.count < 2
        else f" [{estimate.low:+.4f}, {estimate.high:+.4f}], sd {estimate.sd:.4f}"
    )
    print(
        f"mean gain of x{FLAGS.factor} over {estimate.count} bases: {estimate.mean:+.4f}"
        f"{interval} -> {verdict} "
        f"(threshold {FLAGS.threshold:.3f})"
    )


def _plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for factor, metrics in runs.items():
        steps = [e["step"] for e in metrics["evaluations"]]
        ax.plot(
            steps,
            [e["top1"] for e in metrics["evaluations"]],
            marker="o",
            label=f"x{factor}: {metrics['steps']} steps",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("validation top-1")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(path)


if __name__ == "__main__":
    app.run(main)
