"""Finding (d) as the target shrinks: AnB+ - BnB+ at each target size of a
grid.target_images_per_class grid, and its change from the full half, paired.

The paper's generalization boost (AnB+ above BnB+) can only show where the source taught
the copied layers something the target's own images could not: on the default's halves
both have 1,500 images. A reduced-target experiment trains every network on k images a
class of its half while transfers copy a source base trained on the whole other half
(runs/experiment.base_config). Each size is its own experiment (its own id); this module
finds, for each reduced experiment, the full-half experiment it was cut from (the same
config with train.target_images_per_class = 0) and compares them replicate by replicate:
the same class partitions and directions, so the change with size is a paired contrast,
nested in partitions like every contrast of findings.md.
"""

import glob
import json
import os

import ml_collections

from kt_transfer.analysis import findings, replicates
from kt_transfer.runs import experiment


def sizes(workdir):
    """{(dataset, experiment id): (target images per class, the full half's experiment id)}
    from a run's config.json in each experiment directory (0: the full half)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(workdir, "*", "*", "*", "*", "config.json"))):
        experiment_dir = os.path.dirname(os.path.dirname(path))
        dataset = os.path.basename(os.path.dirname(os.path.dirname(experiment_dir)))
        key = (dataset, os.path.basename(experiment_dir))
        if key in found:
            continue
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        size = config.train.get("target_images_per_class", 0)
        with config.unlocked():
            config.train.target_images_per_class = 0
        found[key] = (size, experiment.experiment_id(config))
    return found


def _d(records, ns):
    """{replicate: mean over ns of AnB+ - BnB+}, over the replicates that have both."""
    transfer = replicates.by_replicate(records, "AnB+", ns)
    selffer = replicates.by_replicate(records, "BnB+", ns)
    return {rep: transfer[rep] - selffer[rep] for rep in set(transfer) & set(selffer)}


def compare(rows, known, only=None):
    """One row per reduced-target experiment whose full-half experiment is also in `rows`
    (results.gather), `known` being sizes(workdir) and `only` a (dataset, experiment id)
    to restrict it to: {"dataset", "size", "experiment", "full_experiment", "ns",
    "base_full", "base_reduced", "d_full", "d_reduced", "change"} (Estimates over
    partitions: the target's base, AnB+ - BnB+ at each size over the n both have, and
    d_reduced - d_full paired)."""
    compared = []
    for (dataset, reduced_id), (size, full_id) in sorted(known.items()):
        if size <= 0 or (dataset, full_id) not in known:
            continue
        if only is not None and (dataset, reduced_id) != tuple(only):
            continue
        reduced_rows = [r for r in rows if (r["dataset"], r["experiment"]) == (dataset, reduced_id)]
        reduced = replicates.networks(reduced_rows)
        # The full half's networks of the same splits (not its natman or all runs).
        full = replicates.networks(
            [r for r in rows if (r["dataset"], r["experiment"]) == (dataset, full_id)],
            sorted({r["split"] for r in reduced_rows}),
        )
        ns = sorted(
            {r["n"] for r in reduced if r["treatment"] in ("AnB+", "BnB+")}
            & {r["n"] for r in full if r["treatment"] in ("AnB+", "BnB+")}
        )
        if not ns:
            continue
        d_full, d_reduced = _d(full, ns), _d(reduced, ns)
        base_full = replicates.base_by_replicate(full)
        base_reduced = replicates.base_by_replicate(reduced)
        compared.append(
            {
                "dataset": dataset,
                "size": size,
                "experiment": reduced_id,
                "full_experiment": full_id,
                "ns": ns,
                "base_full": replicates.Estimate.of(replicates.nest(base_full)),
                "base_reduced": replicates.Estimate.of(replicates.nest(base_reduced)),
                "d_full": replicates.Estimate.of(replicates.nest(d_full), len(d_full)),
                "d_reduced": replicates.Estimate.of(replicates.nest(d_reduced), len(d_reduced)),
                "change": replicates.paired(d_reduced, d_full),
            }
        )
    return compared


def to_markdown(compared):
    """The comparison as a table, with the reading rule of findings.md."""
    lines = [
        "| dataset | target images a class | n | target's base: full half / reduced "
        "| AnB+ - BnB+, full half | AnB+ - BnB+, reduced | change (reduced - full), paired "
        "| p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in compared:
        change = row["change"]
        p = change.p_value(0.0) if change is not None and change.count >= 2 else None
        lines.append(
            f"| {row['dataset']} | {row['size']} (id {row['experiment']}; full: "
            f"{row['full_experiment']}) | {findings._ns(row['ns'])} "
            f"| {row['base_full'].mean:.4f} / {row['base_reduced'].mean:.4f} "
            f"| {findings._interval(row['d_full'])} | {findings._interval(row['d_reduced'])} "
            f"| {findings._interval(change) if change is not None else '-'} "
            f"| {'-' if p is None else f'{p:.3f}'} |"
        )
    lines += [
        "",
        "Intervals are 95% Student's t over class partitions (the directions of a partition "
        "averaged first). The change pairs each replicate's AnB+ - BnB+ at the reduced size "
        "with the same replicate's at the full half. A difference smaller than its interval "
        f"is not a finding; fewer than {findings.MIN_PARTITIONS} partitions give none.",
    ]
    return "\n".join(lines) + "\n"
