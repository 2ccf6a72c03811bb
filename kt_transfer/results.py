"""Finished runs under a workdir -> tables (CSV, Markdown) and the paper's figure.

The figure is the paper's Figure 2: validation top-1 against n (layers copied) for BnB,
BnB+, AnB, AnB+ and the random-features control RnB, with baseB as a dashed line.
"""

import csv
import glob
import importlib.resources
import io
import json
import os
import tempfile

from kt_transfer import atomic, splits

COLUMNS = ("dataset", "split", "experiment", "run", "mode", "n", "status", "top1", "top5",
           "base_top1", "train_seconds", "note")
AT_CHANCE = 1.5  # top-1 at most this many times chance: the network did not learn


def at_chance(top1, num_classes):
    """Whether a finished network stayed at chance (its fresh layers died early)."""
    return bool(num_classes) and top1 is not None and top1 <= AT_CHANCE / num_classes


TREATMENTS = {  # mode -> (label, colour, marker)
    "BnB": ("BnB (selffer, frozen)", "tab:blue", "o"),
    "BnB+": ("BnB+ (selffer, fine-tuned)", "tab:cyan", "s"),
    "AnB": ("AnB (transfer, frozen)", "tab:red", "o"),
    "AnB+": ("AnB+ (transfer, fine-tuned)", "tab:orange", "s"),
    "RnB": ("RnB (random frozen features)", "tab:gray", "v"),
}


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
        rows.append({"dataset": os.path.basename(dataset_dir), "split": split,
                     "experiment": experiment, "run": run, "mode": metrics.get("mode", run),
                     "n": metrics.get("n", 0), "status": metrics.get("status", "finished"),
                     "top1": metrics.get("top1"), "top5": metrics.get("top5"),
                     "train_seconds": _whole_seconds(metrics.get("seconds")),
                     "note": _note(metrics)})
    # Runs of different datasets or splits can share an experiment id (it hashes the
    # settings, not the split): a base is looked up under all three.
    bases = {(r["dataset"], r["split"], r["experiment"], r["mode"]): r["top1"]
             for r in rows if r["mode"].startswith("base") and "_" not in r["run"]}
    for row in rows:  # the base of the half the run was trained on, for comparison
        target = row["mode"].rstrip("+")[-1]  # baseA -> A, AnB+ -> B
        row["base_top1"] = bases.get((row["dataset"], row["split"], row["experiment"],
                                      f"base{target}"))
    order = {m: i for i, m in enumerate(["baseA", "baseB", *TREATMENTS])}
    rows.sort(key=lambda r: (r["dataset"], r["split"], r["experiment"],
                             order.get(r["mode"], 99), r["n"], r["run"]))
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


def to_csv(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: _fmt(r.get(k)) for k in COLUMNS} for r in rows)
    return out.getvalue()


def to_markdown(rows):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def paper_results():
    text = importlib.resources.files("kt_transfer").joinpath(
        "resources/paper_results.json").read_text()
    return json.loads(text)


def figure_title(dataset, split):
    return f"{dataset}, split {split}" + (" (A = man-made, B = natural)"
                                          if split == "natman" else "")


def _as_target_b(mode):
    """The B-target name of a treatment: AnA -> BnB, BnA+ -> AnB+, baseA -> baseB.

    The figure is drawn in the paper's A -> B terms; a B -> A grid is its mirror image.
    """
    return splits.swap_halves(mode) if mode.rstrip("+")[-1] == "A" else mode


def plot(rows, path, title, paper=False):
    """Draws top-1 vs n for one experiment (rows of one dataset/split/experiment).

    Only runs under their plain name are drawn (A4B+, not the sweep's A4B+_lr0.1 or a
    --base_model run's A4B_base-...). Rows training on half A (a B -> A grid) are drawn as
    their mirror image, so the lines keep the paper's names. Written atomically.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    plain = [r for r in rows if r["status"] == "finished" and "_" not in r["run"]]
    to_a = any(r["mode"].rstrip("+").endswith("nA") for r in plain)  # a B -> A grid
    if to_a:
        title += " (B -> A runs, drawn as their A -> B mirror)"
    finished = [dict(r, mode=_as_target_b(r["mode"])) for r in plain
                if (r["mode"].rstrip("+")[-1] == "A") == to_a]
    for mode, (label, colour, marker) in TREATMENTS.items():
        points = sorted((r["n"], r["top1"]) for r in finished if r["mode"] == mode)
        if points:
            ax.plot(*zip(*points), marker=marker, color=colour, label=label)
    collapsed = [(r["n"], r["top1"]) for r in finished
                 if r.get("note") and r["mode"] in TREATMENTS]
    if collapsed:
        ax.plot(*zip(*collapsed), linestyle="none", marker="x", markersize=10, color="black",
                label="did not learn (at chance)")
    base = [r["top1"] for r in finished if r["mode"] == "baseB"]
    if base:
        ax.axhline(base[0], color="black", linestyle="--", label="baseB (target base)")
    if paper:
        published = paper_results()
        for key, series in published["random_halves"].items():
            mode = key.split()[0]
            if mode in TREATMENTS:
                pts = sorted((int(n), v["mean"]) for n, v in series.items())
                ax.plot(*zip(*pts), linestyle=":", color=TREATMENTS[mode][1], alpha=0.6,
                        label=f"paper {mode}")
        control = sorted((int(n), v["mean"]) for n, v in
                         published["random_frozen_control_whole_imagenet"].items())
        ax.plot(*zip(*control), linestyle=":", color="tab:gray", alpha=0.6,
                label="paper random control (all ImageNet)")
        halves = published["base_random_halves"].values()
        ax.axhline(sum(halves) / len(halves), color="black", linestyle=":", alpha=0.6,
                   label="paper base")
    ax.set_xlabel("n (layers copied)")
    ax.set_ylabel("validation top-1")
    ax.set_xticks(range(0, 8))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    # A unique temporary name: two workers finishing a grid together may both draw it.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-",
                               suffix=".png")
    with os.fdopen(fd, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_tables(rows, out_dir):
    """results.csv and results.md in out_dir (atomically); returns their paths."""
    written = []
    for name, text in (("results.csv", to_csv(rows)), ("results.md", to_markdown(rows))):
        path = os.path.join(out_dir, name)
        atomic.write_text(path, text)
        written.append(path)
    return written


def write_report(workdir, out_dir=None, paper=False):
    """Writes results.csv, results.md and one results_<dataset>_<split>_<id>.png per
    experiment that has runs; returns the paths written."""
    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    rows = gather(workdir)
    if not rows:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {workdir!r}; "
                                "check --workdir")
    written = write_tables(rows, out_dir)
    for key in sorted({(r["dataset"], r["split"], r["experiment"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["split"], r["experiment"]) == key]
        path = os.path.join(out_dir, "results_{}_{}_{}.png".format(*key))
        plot(group, path, figure_title(key[0], key[1]),
             paper=paper and key[1].startswith("random"))
        written.append(path)
    return written
