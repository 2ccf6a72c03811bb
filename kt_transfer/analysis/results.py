"""Finished runs under a workdir -> tables (CSV, Markdown), the figure and findings.md.

Per run: results.csv / results.md. Per experiment and split family (the random splits
pooled as replicates; natman on its own): replicates.csv / .md (mean, sd, count and 95%
interval per treatment and n), the paper's Figure 2 (figures.py) and findings.md
(findings.py). The figure and findings use the final validation top-1 (unbiased); the
tables also give the paper's figure of merit, the mean of each network's 10 highest
validation evaluations (mean_highest_top1), which picks on the validation set itself.
"""

import csv
import dataclasses
import glob
import importlib.resources
import io
import json
import os

from kt_transfer import atomic
from kt_transfer.analysis import figures, findings, forest, replicates, target_sizes
from kt_transfer.data import splits

COLUMNS = (
    "dataset",
    "split",
    "experiment",
    "run",
    "mode",
    "n",
    "status",
    "top1",
    "top5",
    "mean_highest_top1",
    "base_top1",
    "train_seconds",
    "note",
)
AT_CHANCE = 1.5  # top-1 at most this many times chance: the network did not learn


def at_chance(top1, num_classes):
    """Whether a finished network stayed at chance (its fresh layers died early)."""
    return bool(num_classes) and top1 is not None and top1 <= AT_CHANCE / num_classes


def gather(workdir):
    """One row per run with a metrics.json under workdir (finished or failed)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(workdir, "*", "*", "*", "*", "metrics.json"))):
        run_dir = os.path.dirname(path)
        experiment_dir, run = os.path.split(run_dir)
        split_dir, experiment = os.path.split(experiment_dir)
        dataset_dir, split = os.path.split(split_dir)
        with open(path) as f:
            metrics = json.load(f)
        rows.append(
            {
                "dataset": os.path.basename(dataset_dir),
                "split": split,
                "experiment": experiment,
                "run": run,
                "mode": metrics.get("mode", run),
                "n": metrics.get("n", 0),
                # Cut points of the run's network (families.py); CaffeNet's 8 before
                # other families existed. n equal to it is the restart control.
                "blocks": metrics.get("blocks", 8),
                "status": metrics.get("status", "finished"),
                "top1": metrics.get("top1"),
                "top5": metrics.get("top5"),
                "mean_highest_top1": metrics.get("mean_highest_top1"),
                "train_seconds": _whole_seconds(metrics.get("seconds")),
                "note": _note(metrics),
            }
        )
    # Runs of different datasets or splits can share an experiment id (it hashes the
    # settings, not the split): a base is looked up under all three.
    bases = {
        (r["dataset"], r["split"], r["experiment"], r["mode"]): r["top1"]
        for r in rows
        if r["mode"].startswith("base") and "_" not in r["run"]
    }
    for row in rows:  # the base of the half the run was trained on, for comparison
        target = row["mode"].rstrip("+")[-1]  # baseA -> A, AnB+ -> B
        row["base_top1"] = bases.get(
            (row["dataset"], row["split"], row["experiment"], f"base{target}")
        )
    order = {m: i for i, m in enumerate(["baseA", "baseB", *replicates.TREATMENTS])}
    rows.sort(
        key=lambda r: (
            r["dataset"],
            r["split"],
            r["experiment"],
            order.get(r["mode"], 99),
            r["n"],
            r["run"],
        )
    )
    return rows


def _whole_seconds(seconds):
    return None if seconds is None else int(round(seconds))


def _note(metrics):
    """Flags a finished network that stayed at chance (its fresh layers died early)."""
    if at_chance(metrics.get("top1"), metrics.get("num_classes")):
        return "at chance: did not learn"
    return ""


def _fmt(value):
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def to_csv(rows, columns=COLUMNS):
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _fmt(r.get(k)) for k in columns} for r in rows)
    return out.getvalue()


def to_markdown(rows, columns=COLUMNS):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def paper_results():
    text = (
        importlib.resources.files("kt_transfer")
        .joinpath("resources/paper_results.json")
        .read_text()
    )
    return json.loads(text)


def figure_title(dataset, split_names):
    title = f"{dataset}, split{'s' if len(split_names) > 1 else ''} {', '.join(split_names)}"
    natman = any(split_family(name) == "natman" for name in split_names)
    return title + (" (A = man-made, B = natural)" if natman else "")


def group_by_family(rows):
    """{(dataset, experiment, split family): rows}."""
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["experiment"], split_family(r["split"])), []).append(r)
    return groups


def split_family(split):
    """Splits pooled as replicates: every random<seed> together, and every seeded
    replicate with its split (natman, natman.s1, natman.s2: "natman")."""
    name = splits.base_name(split)
    return "random" if name.startswith("random") else name


def write_tables(rows, out_dir):
    """results.csv and results.md in out_dir (atomically); returns their paths."""
    written = []
    for name, text in (("results.csv", to_csv(rows)), ("results.md", to_markdown(rows))):
        path = os.path.join(out_dir, name)
        atomic.write_text(path, text)
        written.append(path)
    return written


def _write_text(path, text, written):
    atomic.write_text(path, text)
    written.append(path)


def report_experiment(
    rows,
    out_dir,
    dataset,
    split_names,
    paper_overlay=True,
    expected=None,
    ns=None,
    directions=splits.DIRECTIONS,
    related_rows=(),
    prefix="",
    similarity=None,
):
    """The replicate table, figure and findings of one experiment's pooled splits.

    Args:
      rows: result rows (gather) of this experiment; those of split_names are pooled.
      expected: replicates.expected_networks() of the grid, to name what is missing.
      ns: the grid's n values (default: those that have networks).
      directions: the directions pooled (a one-direction grid's base is its target's).
      related_rows: rows of the same experiment on other splits (natman), for finding (e).
      prefix: file name prefix (several experiments in one directory).
      similarity: {label: {n: value}}, the training-free curves of --mode=similarity
        (similarity_curves), ranked against the pooled AnB curve in findings.md.
    Returns:
      (paths written, findings.md text; findings only for the random splits, whose
      networks the findings are about; natman and all runs enter them as related rows).
    """
    records = [r for r in replicates.networks(rows, split_names) if r["direction"] in directions]
    missing = replicates.missing(records, expected) if expected else []
    written = []
    table = replicates.summary_rows(replicates.summarize(records))
    _write_text(
        os.path.join(out_dir, prefix + "replicates.csv"),
        to_csv(table, replicates.SUMMARY_COLUMNS),
        written,
    )
    _write_text(
        os.path.join(out_dir, prefix + "replicates.md"),
        to_markdown(table, replicates.SUMMARY_COLUMNS),
        written,
    )
    paper = paper_results()
    figure = os.path.join(out_dir, prefix + "results.png")
    figures.plot(
        records,
        figure,
        figure_title(dataset, split_names),
        # The paper's curves are CaffeNet's: drawn over CaffeNet's n only.
        paper=paper
        if paper_overlay
        and split_family(split_names[0]) == "random"
        and max((r.get("blocks", 8) for r in rows), default=8) == 8
        else None,
        absolute_paper=dataset == "imagenet2012",
        missing=missing,
    )
    written.append(figure)
    family = split_family(split_names[0])
    if family not in ("random", splits.CROSS):  # findings pool the random splits (or seeds
        return written, ""  # of one dataset pair); natman and all enter as related rows
    ns = ns or sorted({r["n"] for r in records if r["treatment"] != "base"}) or [1]
    natman = replicates.networks([r for r in related_rows if split_family(r["split"]) == "natman"])
    whole = [
        r
        for r in replicates.networks(
            [r for r in related_rows if split_family(r["split"]) == splits.WHOLE]
        )
        if r["treatment"] == "RnB"
    ]
    # n runs to the network's blocks - 1 (CaffeNet: 7; another family: families.py).
    last_n = max((r.get("blocks", 8) for r in rows), default=8) - 1
    found = findings.evaluate(
        records, paper, ns, natman_records=natman, whole_records=whole, last_n=last_n
    )
    replicate_keys = sorted({(r["split"], r["direction"]) for r in records})
    notes = (
        [
            "Between two datasets: half A is the source dataset, half B the target, baseB "
            "the target's own base (the reference). One pair of datasets is one partition: "
            "its replicates are seeds (cross, cross.s1, ...), so every interval below measures "
            "training noise only, what these two datasets' networks do, not tasks in general.",
        ]
        if family == splits.CROSS
        else []
    )
    notes += [
        f"Networks: {len(records)} finished in {len(replicate_keys)} replicate(s) "
        f"(split, direction): {', '.join(f'{s} {d}' for s, d in replicate_keys)}.",
        "Metric: final validation top-1 (the table replicates.md has every point; "
        "results.md also has the paper's mean of the 10 highest evaluations).",
        f"Missing or failed networks (not averaged in): {len(missing)}"
        + (
            ": "
            + ", ".join(f"{s} {d} {t}{'' if t == 'base' else f' n={n}'}" for s, d, t, n in missing)
            if missing
            else ""
        )
        + ".",
    ]
    transfer_curve = {
        entry["n"]: entry["estimate"].mean
        for entry in replicates.summarize(records)
        if entry["treatment"] == "AnB"
    }
    text = findings.to_markdown(
        found,
        "Findings: " + figure_title(dataset, split_names),
        notes,
        findings.rank_agreement(similarity or {}, transfer_curve),
        unit="seed" if family == splits.CROSS else "partition",
    )
    _write_text(os.path.join(out_dir, prefix + "findings.md"), text, written)
    forest_path = os.path.join(out_dir, prefix + "forest.png")
    forest.plot(
        found, forest_path, "Contrasts of findings.md: " + figure_title(dataset, split_names)
    )
    written.append(forest_path)
    return written, text


SIMILARITY_DIR, SIMILARITY_TABLE = "similarity", "similarity.csv"


def is_layer_curve(measure):
    """Whether a --mode=similarity measure is a transferability curve over the layers of
    the bases (CKA of baseA with baseB, probe, LogME), not one transfer network's CKA
    (CKA(A3B+, baseA)), the seed control or the CKA null, which are its yardsticks."""
    return measure.startswith(("CKA(baseA, baseB)", "probe", "LogME"))


def similarity_curves(workdir, dataset, experiment, split_names):
    """{"<measure>, <split>": {n: value}}: the per-layer curves of the bases (CKA of baseA
    with baseB, probe, LogME) that --mode=similarity wrote for these splits; not the
    per-network CKA of transfer networks."""
    curves = {}
    for split in split_names:
        path = os.path.join(workdir, dataset, split, experiment, SIMILARITY_DIR, SIMILARITY_TABLE)
        if not os.path.exists(path):
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if not is_layer_curve(row["measure"]):
                    continue
                curves.setdefault(f"{row['measure']}, {split}", {})[int(row["n"])] = float(
                    row["value"]
                )
    return curves


@dataclasses.dataclass(frozen=True)
class GridScope:
    """What a grid's report covers (runs/grid.py makes it from the config): the runs of
    one experiment id on these splits, directions, treatments (paper names) and n."""

    dataset: str
    experiment: str
    splits: tuple
    directions: tuple
    treatments: tuple
    ns: tuple


def write_report(workdir, out_dir=None, paper=False, grid=None, log=lambda line: None):
    """The one report of finished runs: the tables, each split family's pooled replicates,
    figure and findings.md, and Figure 4. Every report is written here: by
    tools/plot_results.py (every experiment under `workdir`), and by the grid and
    --mode=similarity (one grid's scope, `grid`).

    Writes results.csv and results.md (every run in scope); without `grid`, per
    experiment and split family <dataset>_<family>_<id>_{replicates.csv, replicates.md,
    results.png, findings.md} and <dataset>_<id>_figure4.png; with it, the random family's
    files unprefixed, the others' prefixed by their family, and figure4.png.

    Returns:
      The paths written.
    """
    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    every_row = rows = gather(workdir)
    if grid is not None:
        rows = [
            r for r in rows if (r["dataset"], r["experiment"]) == (grid.dataset, grid.experiment)
        ]
    if not rows and grid is None:
        raise FileNotFoundError(
            f"no finished runs (metrics.json) under {workdir!r}; check --workdir"
        )
    if grid is None:
        written = _report_every_experiment(workdir, rows, out_dir, paper)
    else:
        written = _report_grid(workdir, rows, every_row, out_dir, paper, grid, log)
    return written


def _report_every_experiment(workdir, rows, out_dir, paper):
    written = write_tables(rows, out_dir)
    _write_target_sizes(workdir, rows, os.path.join(out_dir, "target_sizes.md"), written)
    groups = group_by_family(rows)
    for (dataset, experiment, family), group in sorted(groups.items()):
        split_names = sorted({r["split"] for r in group})
        # A one-direction grid (between two datasets: A -> B only) also trained the other
        # half's base, the source's: its transfers' reference is the target's base alone.
        directions = (
            sorted(
                {
                    r["direction"]
                    for r in replicates.networks(group, split_names)
                    if r["treatment"] != "base"
                }
            )
            or splits.DIRECTIONS
        )
        related = [
            r
            for r in rows
            if (r["dataset"], r["experiment"]) == (dataset, experiment)
            and split_family(r["split"]) != family
        ]
        paths, _ = report_experiment(
            group,
            out_dir,
            dataset,
            split_names,
            paper_overlay=paper,
            directions=directions,
            related_rows=related,
            prefix=f"{dataset}_{family}_{experiment}_",
            similarity=similarity_curves(workdir, dataset, experiment, split_names),
        )
        written += paths
    for dataset, experiment in sorted({(d, e) for d, e, _ in groups}):
        path = figure4(
            groups,
            dataset,
            experiment,
            os.path.join(out_dir, f"{dataset}_{experiment}_figure4.png"),
            paper,
        )
        if path:
            written.append(path)
    return written


def _write_target_sizes(workdir, rows, path, written, only=None):
    """target_sizes.md, where a reduced-target experiment and its full half both ran."""
    compared = target_sizes.compare(rows, target_sizes.sizes(workdir), only)
    if compared:
        _write_text(path, target_sizes.to_markdown(compared), written)


def _report_grid(workdir, rows, every_row, out_dir, paper, grid, log):
    grid_rows = [r for r in rows if r["split"] in grid.splits]
    written = write_tables(grid_rows, out_dir)
    _write_target_sizes(  # rows of every experiment: the full half's is another
        workdir,
        every_row,
        os.path.join(out_dir, "target_sizes.md"),
        written,
        only=(grid.dataset, grid.experiment),
    )
    families = {}  # the random splits pooled; natman apart (files prefixed natman_)
    for name in grid.splits:
        families.setdefault(split_family(name), []).append(name)
    ordered = sorted(families.items(), key=lambda kv: kv[0] != "random")
    for i, (family, names) in enumerate(ordered):
        expected = replicates.expected_networks(names, grid.directions, grid.treatments, grid.ns)
        paths, text = report_experiment(
            [r for r in grid_rows if r["split"] in names],
            out_dir,
            grid.dataset,
            names,
            paper_overlay=paper,
            expected=expected,
            ns=sorted(grid.ns),
            directions=grid.directions,
            related_rows=[r for r in rows if r["split"] not in names],
            prefix="" if i == 0 else f"{family}_",
            similarity=similarity_curves(workdir, grid.dataset, grid.experiment, names),
        )
        written += paths
        if text:
            log(text)
    path = figure4(
        group_by_family(rows),  # every split of this experiment
        grid.dataset,
        grid.experiment,
        os.path.join(out_dir, "figure4.png"),
        paper=paper,
    )
    if path:
        written.append(path)
    return written


def figure4(groups, dataset, experiment, path, paper=True):
    """Draws the paper's Figure 4 when natman or whole-dataset ("all") runs exist.

    Args:
      groups: {(dataset, experiment, split family): rows}.
    Returns:
      The path, or None when there is nothing of Figure 4 to draw.
    """

    def records(family):
        return replicates.networks(groups.get((dataset, experiment, family), []))

    natman, whole = records("natman"), records("all")
    if not natman and not whole:
        return None
    figures.plot_figure4(
        records("random"),
        natman,
        whole,
        path,
        f"{dataset}: the paper's Figure 4",
        paper=paper_results() if paper else None,
    )
    return path
