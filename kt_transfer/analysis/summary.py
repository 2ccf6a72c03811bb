"""Human-readable summaries of finished runs."""

import os
import shlex

from kt_transfer.analysis import results
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment


def summary(config, dataset, treatment, metrics, out, argv=()):
    """The closing lines of a run: figures, the base to compare with, where things are.

    `argv`: the command's flags, so the command suggested for the missing base is the
    user's own (config file, overrides, workdir) with only --mode changed."""
    half = dataset.split.half(treatment.target)
    lines = [
        f"== {treatment.run_name} ({treatment.mode}, n={treatment.n}) on {dataset.name}, "
        f"split {dataset.split.name}, half {treatment.target} ({len(half)} classes) =="
    ]
    if metrics.get("status", "finished") == "finished":
        lines.append(
            f"validation top-1 {metrics['top1']:.4f}   top-5 {metrics['top5']:.4f}   "
            f"(chance top-1 {1 / len(half):.4f})"
        )
        if results.at_chance(metrics["top1"], len(half)):
            lines.append(
                "WARNING: this network did not learn (validation at chance level): "
                "its fresh layers likely died early; try a lower "
                "--config.train.base_lr and run it again in a new --workdir"
            )
    else:
        lines.append(f"FAILED: {metrics['reason']} (lower --config.train.base_lr?)")
    reference = f"base{treatment.target}"
    if treatment.mode != reference:
        ref_metrics = experiment.read_metrics(
            experiment.run_dir(config, dataset, transfer.parse_treatment(reference))
        )
        if ref_metrics and ref_metrics.get("status", "finished") == "finished":
            lines.append(
                f"{reference} for comparison: top-1 {ref_metrics['top1']:.4f}   "
                f"top-5 {ref_metrics['top5']:.4f}"
            )
        else:
            lines.append(
                f"{reference} (for comparison) is not trained yet: {same_command(argv, reference)}"
            )
    exp_dir = os.path.dirname(out)
    lines += [
        f"outputs: {out}  (model.keras, saved_model/, metrics.json, config.json, logs/, "
        "checkpoints/)",
        f"TensorBoard: tensorboard --logdir {exp_dir}",
    ]
    return "\n".join(lines)


def same_command(argv, mode):
    """`python -m kt_transfer.main` with the flags of `argv`, but --mode=`mode` (no --n)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--mode", "--n"):  # the value is the next argument
            skip = True
            continue
        if not arg.startswith(("--mode=", "--n=")):
            kept.append(arg)
    return " ".join(["python -m kt_transfer.main", *map(shlex.quote, kept), f"--mode={mode}"])
