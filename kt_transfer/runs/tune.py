"""--mode=tune: keras-tuner searches how fast the copied layers should learn.

    python -m kt_transfer.main --mode=tune --n=4       # AnB+ (config.tune.treatment)

Each trial is an ordinary run of the fine-tuned treatment (AnB+ or BnB+) whose copied
layers learn at `copied_lr_mult` times the base rate (and, with n >= 6, the copied fc
layers at `copied_fc_lr_mult`), through the same per-layer learning-rate multipliers as
any run: it is stored, resumed, exported and logged to TensorBoard (with HParams) like
any run, in `<experiment>/A4B+_lr0.1_ho0.1/` etc.

The sweep does not grade itself on its own exam: with `tune.holdout_fraction` > 0 (the
default 0.1) a fixed, seeded part of the target half's training images is held out, the
trials train on the rest, and the objective is top-1 on that held-out part. The
validation top-1 of each trial is reported beside it, untouched by the choice; it is the
number to quote for the winner. With holdout_fraction = 0 the objective is validation
top-1 itself, and the winner's figure is biased upward by the selection.

The oracle's state lives in `<experiment>/tune_A4B+/`, so a killed search started again
reruns no finished trial (an interrupted one resumes from its backup). With keras-tuner's
environment variables (KERASTUNER_TUNER_ID=chief on one process, tuner1, tuner2, ... on
the others, all with KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT) the chief runs the
oracle and the others run trials; each trial can itself use MirroredStrategy.
"""

import json
import os

import keras_tuner

from kt_transfer import atomic, validate
from kt_transfer.runs import experiment
from kt_transfer.training import train


def objective_name(config):
    """What the oracle maximizes: held-out training top-1, or validation top-1."""
    return "holdout_top1" if config.tune.holdout_fraction > 0 else "val_top1"


def treatment_of(config):
    """The fine-tuned treatment whose copied-layer rate is searched (see validate)."""
    return validate.tune_treatment(config)


def search_space(tune_config):
    hp = keras_tuner.HyperParameters()
    hp.Choice("copied_lr_mult", [float(v) for v in tune_config.copied_lr_mults])
    if tune_config.copied_fc_lr_mults:
        hp.Choice("copied_fc_lr_mult", [float(v) for v in tune_config.copied_fc_lr_mults])
    return hp


def make_oracle(config):
    tc = config.tune
    objective = keras_tuner.Objective(objective_name(config), direction="max")
    common = dict(objective=objective, hyperparameters=search_space(tc), seed=tc.seed)
    if tc.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=tc.max_trials, **common)
    if tc.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=tc.max_trials, num_initial_points=min(2, tc.max_trials), **common
        )
    return keras_tuner.oracles.HyperbandOracle(
        max_epochs=train.num_epochs(config.train),
        factor=tc.hyperband_factor,
        hyperband_iterations=1,
        **common,
    )


def trial_config(config, hp):
    """The run config of one trial: its learning-rate scales, its held-out images (and
    Hyperband's budget)."""
    trial = config.copy_and_resolve_references()
    with trial.unlocked():
        trial.train.holdout_fraction = config.tune.holdout_fraction
        trial.train.copied_lr_mult = hp.get("copied_lr_mult")
        if "copied_fc_lr_mult" in hp.values:
            trial.train.copied_fc_lr_mult = hp.get("copied_fc_lr_mult")
        if "tuner/epochs" in hp.values:  # Hyperband: fewer epochs for early brackets
            trial.train.budget_epochs = hp.get("tuner/epochs")
    return trial


class CopiedLayerRateTuner(keras_tuner.Tuner):
    """Runs each trial as a stored kt_transfer run; the oracle picks the scales."""

    def __init__(self, oracle, config, dataset, treatment, strategy=None, log=print):
        self.config, self.dataset, self.treatment = config, dataset, treatment
        self.strategy, self.log = strategy, log
        super().__init__(
            oracle,
            hypermodel=None,
            directory=tune_dir(config, dataset, treatment),
            project_name="oracle",
            overwrite=False,
        )

    def run_trial(self, trial, *args, **kwargs):
        config = trial_config(self.config, trial.hyperparameters)
        self.log(f"tune: trial {trial.trial_id}: {describe(trial.hyperparameters.values)}")
        metrics, out = experiment.run_treatment(
            config, self.dataset, self.treatment, log=self.log, strategy=self.strategy
        )
        if metrics["status"] != "finished":
            raise keras_tuner.errors.FailedTrialError(f"{out}: {metrics['reason']}")
        trial.metrics.update("val_top5", metrics["top5"])
        result = {"val_top1": metrics["top1"], "val_top5": metrics["top5"]}
        if "holdout_top1" in metrics:
            result["holdout_top1"] = metrics["holdout_top1"]
        return result

    def save_model(self, trial_id, model, step=0):
        """Nothing: every trial's run already stores model.keras and saved_model/."""

    def load_model(self, trial):
        config = trial_config(self.config, trial.hyperparameters)
        return experiment.load_network(experiment.run_dir(config, self.dataset, self.treatment))


def describe(values):
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(values.items())
        if not k.startswith("tuner/")
    )


def tune_dir(config, dataset, treatment):
    return os.path.join(experiment.experiment_dir(config, dataset), f"tune_{treatment.run_name}")


def role():
    """ "chief" (runs only the oracle), "worker" (runs trials) or "single" (both)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def run_sweep(config, dataset, log=print, strategy=None):
    """Runs (or joins, or serves) the sweep; the chief or single process writes its table.

    Returns:
      The rows of the sweep's table (best first), or None for a worker.
    """
    treatment = treatment_of(config)
    if role() != "chief":  # the base before any trial; workers wait for the one training it
        experiment.ensure_base(config, dataset, treatment, log, strategy, wait_s=2.0)
    tuner = CopiedLayerRateTuner(make_oracle(config), config, dataset, treatment, strategy, log)
    tuner.search()
    if role() == "worker":
        return None
    return write_table(config, dataset, treatment, tuner, log)


def write_table(config, dataset, treatment, tuner, log=print):
    """tune_<run>/results.md and best.json: every finished trial, best objective first.

    Each row has the objective ("objective": held-out top-1, or validation top-1 when
    nothing is held out) and the validation top-1 ("top1"), which is the figure to report
    for the chosen trial when the objective was held out.
    """
    name = objective_name(config)
    trials = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    trials.sort(key=lambda t: -t.metrics.get_best_value(name))
    rows = []
    for trial in trials:
        config_of_trial = trial_config(config, trial.hyperparameters)
        rows.append(
            {
                "trial": trial.trial_id,
                "scales": describe(trial.hyperparameters.values),
                "objective": name,
                "objective_top1": trial.metrics.get_best_value(name),
                "top1": trial.metrics.get_best_value("val_top1"),
                "run": experiment.run_dir(config_of_trial, dataset, treatment),
            }
        )
    out = tune_dir(config, dataset, treatment)
    held = name == "holdout_top1"
    chosen_by = (
        f"top-1 on {config.tune.holdout_fraction:g} of the training images held out"
        if held
        else "validation top-1 (nothing held out: the best figure is biased upward by the choice)"
    )
    lines = [
        f"# {treatment.run_name}: learning-rate scale of the copied layers",
        "",
        f"Chosen by {chosen_by}.",
        "",
        "| trial | scales | objective top-1 | val top-1 | run |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['trial']} | {r['scales']} | {r['objective_top1']:.4f} | {r['top1']:.4f} "
        f"| {r['run']} |"
        for r in rows
    ]
    if rows:
        lines += [
            "",
            f"Best: {rows[0]['scales']} (objective top-1 "
            f"{rows[0]['objective_top1']:.4f}; validation top-1 {rows[0]['top1']:.4f}"
            f"{', not used to choose' if held else ''}); its exported model: "
            f"{os.path.join(rows[0]['run'], 'saved_model')}",
        ]
        atomic.write_json(os.path.join(out, "best.json"), rows[0])
    atomic.write_text(os.path.join(out, "results.md"), "\n".join(lines) + "\n")
    for line in lines[2:]:
        log(line)
    write_summary(os.path.dirname(out))
    return rows


def write_summary(experiment_path):
    """tune_summary.md: for every sweep run in the experiment, the scale that won."""
    lines = [
        "| treatment | n | best scales | objective top-1 | val top-1 | run |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(os.listdir(experiment_path)):
        best_path = os.path.join(experiment_path, name, "best.json")
        if name.startswith("tune_") and os.path.exists(best_path):
            with open(best_path) as f:
                best = json.load(f)
            treatment = name[len("tune_") :]
            n = "".join(c for c in treatment if c.isdigit())
            objective = best.get("objective_top1", best["top1"])
            lines.append(
                f"| {treatment} | {n} | {best['scales']} | {objective:.4f} | "
                f"{best['top1']:.4f} | {best['run']} |"
            )
    atomic.write_text(os.path.join(experiment_path, "tune_summary.md"), "\n".join(lines) + "\n")
