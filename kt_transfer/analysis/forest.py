"""The forest plot of findings.md: every contrast on one relative scale, its 95% interval
and its familywise one, the paper's value beside it, raw and Holm-adjusted p.

One row per contrast, on the relative scale (the difference divided by its replicate's
base top-1) so that contrasts of different treatments, and the paper's ImageNet numbers
at a base of 0.625, share one axis. The thick bar is the 95% interval; the thin one the
familywise interval (Bonferroni's t quantile at 0.05 / m over the m tested contrasts,
the widest Holm's correction can need), so a thin bar that crosses zero is a contrast that
the adjusted verdict does not call.
"""

import math

from kt_transfer import atomic
from kt_transfer.analysis import findings, stats

COLOURS = {
    "shows": "tab:green",
    "does not show": "tab:red",
    "higher": "tab:blue",
    "lower": "tab:blue",
}


def rows(found):
    """[(finding key, contrast)] of every contrast with a relative estimate, in order."""
    return [
        (finding.key, contrast)
        for finding in found
        if not finding.todo
        for contrast in finding.contrasts
        if contrast.relative is not None
    ]


def familywise_half_width(estimate, tested):
    """Half-width of the Bonferroni interval of an estimate among `tested` contrasts."""
    if estimate is None or estimate.count < 2 or tested < 1:
        return math.nan
    return stats.t_quantile(findings.ALPHA / tested, estimate.df) * estimate.se


def plot(found, path, title):
    """Draws the forest plot of `found` (findings.evaluate) to `path` (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = rows(found)
    tested = sum(1 for _, c in entries if c.testable)
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.42 * max(len(entries), 1)))
    for i, (key, contrast) in enumerate(entries):
        y = len(entries) - i
        rel = contrast.relative
        colour = COLOURS.get(contrast.verdict(), "tab:gray")
        if rel.count >= 2:
            wide = familywise_half_width(rel, tested)
            ax.plot([rel.mean - wide, rel.mean + wide], [y, y], color=colour, linewidth=1)
            ax.plot([rel.low, rel.high], [y, y], color=colour, linewidth=4, alpha=0.8)
        ax.plot([rel.mean], [y], "o", color=colour)
        if not math.isnan(contrast.paper_relative):
            ax.plot([contrast.paper_relative], [y], "D", color="black", markersize=5)
        p, adjusted = contrast.p_value(), contrast.adjusted_p
        ax.annotate(
            f"p {_p(p)}, Holm {_p(adjusted)}: {contrast.verdict()}",
            xy=(1.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="center",
        )
    ax.set_yticks(
        range(len(entries), 0, -1), [f"({key}) {c.label}" for key, c in entries], fontsize=7
    )
    ax.axvline(0.0, color="black", linewidth=1)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v * 100:+.0f}%"))
    ax.set_xlabel(
        "difference / its base's top-1 (thick: 95% interval; thin: familywise over "
        f"{tested} contrasts; black diamond: the paper)"
    )
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic.write_figure(fig, path, dpi=110, bbox_inches="tight")


def _p(value):
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
