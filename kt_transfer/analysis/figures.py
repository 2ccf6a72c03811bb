"""The paper's Figure 2 from replicated networks: every network, and the mean with its
95% interval, against n; the base as a band.

Top: validation top-1 (left) and top-1 relative to each network's own base (right). The
paper's published curves are overlaid like with like: absolute top-1 only on ImageNet
itself, relative top-1 on any dataset (a 50-class CPU-scale task has another absolute
accuracy than ImageNet's 500-class halves, but the relative drop is comparable).
Bottom: the paired differences the findings test, per replicate: each network minus its
own base (left), and the fine-tuned transfer minus the fine-tuned selffer and the restart
control of the same replicate (right). Intervals that overlap on top can exclude zero
here: the top panels' intervals are marginal, the bottom ones paired.

Every interval is over class partitions (replicates.nest), as in findings.md.
"""

import statistics

from kt_transfer import atomic
from kt_transfer.analysis import replicates
from kt_transfer.data import splits

STYLE = {  # treatment -> (label, colour, marker)
    "BnB": ("BnB (selffer, frozen)", "tab:blue", "o"),
    "BnB+": ("BnB+ (selffer, fine-tuned)", "tab:cyan", "s"),
    "AnB": ("AnB (transfer, frozen)", "tab:red", "o"),
    "AnB+": ("AnB+ (transfer, fine-tuned)", "tab:orange", "s"),
    "RnB": ("RnB (random frozen features, on the half: not the paper's control)", "tab:gray", "v"),
}
OFFSETS = {"BnB": -0.16, "BnB+": -0.08, "AnB": 0.0, "AnB+": 0.08, "RnB": 0.16}


def plot(records, path, title, paper=None, absolute_paper=False, missing=()):
    """Draws the figure to `path` (PNG, written atomically).

    Args:
      records: replicates.networks() of one experiment.
      paper: the published numbers (results.paper_results()) to overlay, or None.
      absolute_paper: overlay the paper's absolute top-1 too (ImageNet only).
      missing: expected networks without a finished record, named under the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ax_abs, ax_rel), (ax_base, ax_pair)) = plt.subplots(2, 2, figsize=(13, 9.5))
    base_est = replicates.Estimate.of(
        replicates.nest({(r["split"], r["direction"]): r["top1"] for r in _bases(records)}),
        replicates=len(_bases(records)),
    )
    for ax, relative in ((ax_abs, False), (ax_rel, True)):
        if relative:
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="base")
        elif base_est is not None:
            ax.axhline(
                base_est.mean,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"base (mean of {base_est.replicates}, {base_est.count} "
                f"{'seeds' if _between_datasets(records) else 'partitions'})",
            )
            if base_est.count > 1:
                ax.axhspan(
                    base_est.low,
                    base_est.high,
                    color="black",
                    alpha=0.08,
                    label="base 95% interval",
                )
        for treatment, (label, colour, marker) in STYLE.items():
            _draw_treatment(ax, records, treatment, relative, label, colour, marker)
        if paper:
            _overlay_paper(ax, paper, relative, absolute_paper)
        ax.set_xlabel("n (layers copied)")
        ax.set_ylabel("top-1 / its base's top-1" if relative else "validation top-1")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    _draw_paired_panels(ax_base, ax_pair, records)
    ax_abs.set_title(title + "\n(marginal intervals)", fontsize=10)
    ax_rel.set_title("relative to each network's own base", fontsize=10)
    legend = {}
    for ax in (ax_abs, ax_rel, ax_base):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(
        legend.values(),
        legend.keys(),
        fontsize=7,
        loc="lower center",
        ncol=4,
        frameon=False,
        bbox_to_anchor=(0.5, 0.02),
    )
    note = (
        (
            f"{len(missing)} expected network(s) missing or failed: "
            + ", ".join(
                f"{s} {d} {t}{'' if t == 'base' else ' n=%d' % n}" for s, d, t, n in missing[:8]
            )
            + (" ..." if len(missing) > 8 else "")
        )
        if missing
        else ""
    )
    if note:
        fig.text(0.5, 0.005, note, ha="center", fontsize=7, color="tab:red")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    atomic.write_figure(fig, path, dpi=110)


def _between_datasets(records):
    """A grid between two datasets: its units are seeds of one pair (replicates.partition)."""
    return bool(records) and all(splits.base_name(r["split"]) == splits.CROSS for r in records)


def _bases(records):
    return [r for r in records if r["treatment"] == "base"]


def _draw_treatment(ax, records, treatment, relative, label, colour, marker):
    def value(r):
        if relative:
            return r["top1"] / r["base_top1"] if r["base_top1"] else None
        return r["top1"]

    _draw_points_and_means(ax, records, treatment, value, OFFSETS[treatment], colour, marker, label)


def _draw_points_and_means(
    ax, records, treatment, value, offset, colour, marker, label, unit=replicates.partition
):
    """Every network's value(record) faint, and per n the mean with its 95% interval over
    partitions (the replicates of a partition averaged first; `unit`: over other units,
    e.g. the seeds of the one natman partition)."""
    by_n = {}
    for r in records:
        v = value(r) if r["treatment"] == treatment else None
        if v is not None:
            by_n.setdefault(r["n"], {})[(r["split"], r["direction"])] = v
    if not by_n:
        return
    for n, values in by_n.items():  # every network, faint
        ax.scatter(
            [n + offset] * len(values),
            list(values.values()),
            color=colour,
            alpha=0.45,
            s=14,
            marker=marker,
            linewidths=0,
        )
    ns = sorted(by_n)
    estimates = [replicates.Estimate.of(replicates.nest(by_n[n], unit)) for n in ns]
    errors = [
        [e.mean - e.low if e.count > 1 else 0 for e in estimates],
        [e.high - e.mean if e.count > 1 else 0 for e in estimates],
    ]
    ax.errorbar(
        [n + offset for n in ns],
        [e.mean for e in estimates],
        yerr=errors,
        color=colour,
        marker=marker,
        capsize=3,
        label=label + " (mean, 95% interval)",
    )


def _integer_ticks(ax):
    """n on the x axis: whole numbers only, however many blocks the network has."""
    from matplotlib import ticker

    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _draw_paired_panels(ax_base, ax_pair, records):
    """The findings' paired differences per n: each network minus its own base (left);
    AnB+ - BnB+, AnB - BnB and AnB+ - restart within each replicate (right)."""
    for treatment, (label, colour, marker) in STYLE.items():
        _draw_points_and_means(
            ax_base,
            records,
            treatment,
            lambda r: r["top1"] - r["base_top1"] if r["base_top1"] is not None else None,
            OFFSETS[treatment],
            colour,
            marker,
            label,
        )
    values = {(r["treatment"], r["n"], r["split"], r["direction"]): r["top1"] for r in records}
    restart = {(s, d): v for (t, _, s, d), v in values.items() if t == replicates.RESTART}
    pairs = (
        ("AnB+ - BnB+", "tab:orange", "s", lambda key: values.get(("BnB+", *key))),
        ("AnB - BnB", "tab:red", "o", lambda key: values.get(("BnB", *key))),
        ("AnB+ - restart (B8B+)", "tab:brown", "D", lambda key: restart.get(key[1:])),
    )
    for i, (label, colour, marker, other) in enumerate(pairs):
        first = "AnB+" if label.startswith("AnB+") else "AnB"
        differences = [
            {
                **r,
                "treatment": label,
                "top1": r["top1"] - other((r["n"], r["split"], r["direction"])),
            }
            for r in records
            if r["treatment"] == first and other((r["n"], r["split"], r["direction"])) is not None
        ]
        _draw_points_and_means(
            ax_pair, differences, label, lambda r: r["top1"], (i - 1) * 0.12, colour, marker, label
        )
    for ax, heading in (
        (ax_base, "paired: each network minus its own base"),
        (ax_pair, "paired within a replicate (as findings.md tests)"),
    ):
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel("n (layers copied)")
        ax.set_ylabel("difference in validation top-1")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    if ax_pair.get_legend_handles_labels()[0]:
        ax_pair.legend(fontsize=7)


def _overlay_paper(ax, paper, relative, absolute_paper):
    base = statistics.fmean(paper["base_random_halves"].values())
    if not relative and not absolute_paper:
        return
    for name, series in paper["random_halves"].items():
        treatment = name.split()[0]
        points = sorted(
            (int(n), v["mean"] / (base if relative else 1.0)) for n, v in series.items()
        )
        ax.plot(
            *zip(*points),
            linestyle=":",
            color=STYLE[treatment][1],
            alpha=0.7,
            label=f"paper {treatment} (ImageNet)",
        )
    if not relative:
        ax.axhline(base, color="black", linestyle=":", alpha=0.6, label="paper base (ImageNet)")


def plot_figure4(random_records, natman_records, whole_records, path, title, paper=None):
    """The paper's Figure 4 from the runs that exist, three panels:
    (a) frozen transfer between dissimilar halves (natman, both directions) and its bases;
    (b) the random-weights control on all classes and the whole-dataset base;
    (c) top-1 relative to the base against n: transfer between random halves, between
        dissimilar halves, and random weights, in one panel.
    `paper` overlays the published numbers, relative ones on (c) and absolute ones on
    (a) and (b) only when the data are ImageNet's (`absolute` in the title's dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_nat, ax_rand, ax_rel) = plt.subplots(1, 3, figsize=(16, 4.8))
    directions = {
        "AtoB": ("A -> B: man-made -> natural (AnB)", "tab:green", "baseB (natural)"),
        "BtoA": ("B -> A: natural -> man-made (BnA)", "tab:purple", "baseA (man-made)"),
    }
    for direction, (label, colour, base_label) in directions.items():
        nets = [r for r in natman_records if r["direction"] == direction]
        _draw_seeds(ax_nat, nets, "AnB", "o", colour, label)  # BnA is "AnB" mirrored
        # (c): each direction on its own; they differ (the paper: 0.73 vs 0.87 of base).
        _draw_seeds(
            ax_rel,
            nets,
            "AnB",
            "o",
            colour,
            f"dissimilar halves, {label}",
            value=replicates.relative_top1,
        )
        bases = [r["top1"] for r in nets if r["treatment"] == "base"]
        if bases:
            ax_nat.axhline(
                statistics.fmean(bases),
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"{base_label}: the target half's base",
            )
    _draw_seeds(
        ax_rand, whole_records, "RnB", "v", "tab:gray", "random frozen layers 1..n, all classes"
    )
    bases = [r["top1"] for r in whole_records if r["treatment"] == "base"]
    if bases:
        ax_rand.axhline(
            statistics.fmean(bases),
            color="black",
            linestyle="--",
            linewidth=1,
            label="whole-dataset base",
        )
    _draw_points_and_means(
        ax_rel,
        random_records,
        "AnB",
        replicates.relative_top1,
        0.0,
        "tab:red",
        "o",
        "transfer, random halves (AnB)",
    )
    _draw_seeds(
        ax_rel,
        whole_records,
        "RnB",
        "v",
        "tab:gray",
        "random weights, all classes (RnB)",
        value=replicates.relative_top1,
    )
    if paper:
        _overlay_figure4(ax_nat, ax_rand, ax_rel, paper, absolute="imagenet2012" in title)
    ax_rel.axhline(1.0, color="black", linestyle="--", linewidth=1)
    for ax, heading in (
        (ax_nat, "(a) dissimilar halves (natman)"),
        (ax_rand, "(b) random weights, all classes"),
        (ax_rel, "(c) top-1 relative to the base"),
    ):
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel("n (layers copied or random)")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", transform=ax.transAxes)
    ax_nat.set_ylabel("validation top-1")
    ax_rel.set_ylabel("top-1 / base top-1")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=110)


def _draw_seeds(ax, records, treatment, marker, colour, label, value=lambda r: r["top1"]):
    """Each network a faint point and, over a split's seeded replicates (natman,
    natman.s1, ...), the mean per n with its 95% interval over the seeds: training noise
    of the one partition, not partition-to-partition spread."""
    seeded = any(r["split"] != replicates.partition((r["split"], "")) for r in records)
    _draw_points_and_means(
        ax,
        records,
        treatment,
        value,
        0.0,
        colour,
        marker,
        label + (" (over seeds)" if seeded else ""),
        unit=lambda replicate: replicate[0],
    )


def _overlay_figure4(ax_nat, ax_rand, ax_rel, paper, absolute):
    natman, bases = paper["natman"], paper["base_natman"]
    series = {
        "man-made -> natural, frozen": ("natural (449 classes)", "tab:green"),
        "natural -> man-made, frozen": ("man-made (551 classes)", "tab:purple"),
    }
    relative_natman = []
    for name, (base_name, colour) in series.items():
        points = sorted((int(n), v["mean"]) for n, v in natman[name].items())
        relative_natman.append({n: v / bases[base_name] for n, v in points})
        if absolute:
            ax_nat.plot(
                *zip(*points), linestyle=":", color=colour, alpha=0.7, label=f"paper {name}"
            )
    control = sorted(
        (int(n), v["mean"]) for n, v in paper["random_frozen_control_whole_imagenet"].items()
    )
    whole = paper["whole_imagenet_1000_classes"]
    if absolute:
        ax_rand.plot(
            *zip(*control),
            linestyle=":",
            color="tab:gray",
            alpha=0.7,
            label="paper random weights (ImageNet)",
        )
        ax_rand.axhline(whole, color="black", linestyle=":", alpha=0.6, label="paper netbase")
    base = statistics.fmean(paper["base_random_halves"].values())
    transfer = sorted(
        (int(n), v["mean"] / base)
        for n, v in paper["random_halves"]["AnB (transfer, frozen)"].items()
    )
    ax_rel.plot(
        *zip(*transfer), linestyle=":", color="tab:red", alpha=0.7, label="paper, random halves"
    )
    ns = sorted(relative_natman[0])
    ax_rel.plot(
        ns,
        [statistics.fmean(r[n] for r in relative_natman) for n in ns],
        linestyle=":",
        color="tab:green",
        alpha=0.7,
        label="paper, natman (mean)",
    )
    ax_rel.plot(
        [n for n, _ in control],
        [v / whole for _, v in control],
        linestyle=":",
        color="tab:gray",
        alpha=0.7,
        label="paper, random weights",
    )
