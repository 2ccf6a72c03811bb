"""Has the base converged? Trains it at the config's budget and at `--factor` times it.

    python tools/check_convergence.py --workdir=workdir_convergence [--mode=baseB] \
        [--factor=2] [--config=configs/embedded.py] [--config.train.total_steps=...]

The longer run scales the step schedule with the budget (total steps, lr step and
validation interval x factor; the warmup stays), as the paper's solver would be
stretched. It prints both validation curves and the final top-1 gain of the longer run,
and draws convergence_<mode>.png in the workdir. A base is converged for this project's
purpose when the gain is under 1 point top-1 (`--threshold`): then training the transfer
networks the same number of steps measures transfer, not extra training. Both runs are
ordinary runs (resumable; a finished one is not trained again).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from kt_transfer import config_files

_CONFIG = config_flags.DEFINE_config_file("config", config_files.config_path("embedded"),
                                          "experiment config", lock_config=True)
flags.DEFINE_string("workdir", "workdir_convergence", "where both runs are written")
flags.DEFINE_string("mode", "baseB", "the base to check: baseA or baseB")
flags.DEFINE_integer("factor", 2, "the longer run's budget, in multiples of the config's")
flags.DEFINE_float("threshold", 0.01, "top-1 gain under which the base counts as converged")
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
    from kt_transfer import experiment, sources, transfer, validate

    config = _CONFIG.value
    with config.unlocked():
        config.workdir = FLAGS.workdir
    validate.validate(config)
    dataset = sources.resolve_dataset(config)
    treatment = transfer.parse_treatment(FLAGS.mode)
    runs = {}
    for factor in (1, FLAGS.factor):
        metrics, _ = experiment.run_treatment(scaled(config, factor), dataset, treatment)
        if metrics["status"] != "finished":
            raise SystemExit(f"error: the x{factor} run failed: {metrics['reason']}")
        runs[factor] = metrics
    for factor, metrics in runs.items():
        curve = ", ".join(f"{e['step']}: {e['top1']:.3f}" for e in metrics["evaluations"])
        print(f"x{factor} ({metrics['steps']} steps, {metrics['seconds']:.0f} s): final "
              f"top-1 {metrics['top1']:.4f}; curve {curve}")
    gain = runs[FLAGS.factor]["top1"] - runs[1]["top1"]
    verdict = "converged" if gain < FLAGS.threshold else "NOT converged"
    print(f"{FLAGS.mode}: x{FLAGS.factor} budget gains {gain:+.4f} top-1 -> {verdict} "
          f"(threshold {FLAGS.threshold:.3f})")
    _plot(runs, os.path.join(FLAGS.workdir, f"convergence_{FLAGS.mode}.png"))


def _plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for factor, metrics in runs.items():
        steps = [e["step"] for e in metrics["evaluations"]]
        ax.plot(steps, [e["top1"] for e in metrics["evaluations"]], marker="o",
                label=f"x{factor}: {metrics['steps']} steps")
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
