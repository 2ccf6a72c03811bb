"""The paper's findings, each tested on a grid's networks with its 95% interval.

Every finding is one or more *contrasts*: a difference between treatments (or a treatment
and its base), averaged over pre-set n values, computed within each replicate (one split
and direction, whose networks share their bases) and then averaged over replicates with
a t interval. A contrast *shows* when its interval excludes zero on the side the paper
found, *does not show* when it excludes zero on the other side, and is *inconclusive*
when the interval spans zero (or there are fewer than 2 replicates); *not run* when the
grid has none of the networks it needs. A finding shows when
all its contrasts show. The n values are fixed in advance (MIDDLE, HIGH), not picked after
seeing the curve, which would bias the test.

Pure Python (no TensorFlow), like replicates.py.
"""

import dataclasses
import math
import statistics

from kt_transfer.analysis import replicates

MIDDLE, HIGH = (3, 4, 5), (6, 7)  # the paper's dip (BnB) and its recovery / specificity


@dataclasses.dataclass
class Contrast:
    label: str  # what is measured, e.g. "AnB+ - BnB+, n = 1..7"
    sign: str  # the paper's direction: "positive", "negative" or "not_below" (>= 0)
    paper: float  # the paper's value of the same contrast
    estimate: object  # replicates.Estimate or None

    def verdict(self):
        est = self.estimate
        if est is None:
            return "not run"  # the grid has none of the networks it needs
        if est.count < 2:
            return "inconclusive"
        if self.sign == "not_below":
            return "does not show" if est.high < 0 else "shows"
        if not est.excludes_zero():
            return "inconclusive"
        agrees = est.low > 0 if self.sign == "positive" else est.high < 0
        return "shows" if agrees else "does not show"


@dataclasses.dataclass
class Finding:
    key: str
    claim: str
    contrasts: list
    todo: str = ""  # what to run, when the networks it needs do not exist

    def verdict(self):
        if self.todo:
            return "not run"
        verdicts = [c.verdict() for c in self.contrasts]
        if all(v == "not run" for v in verdicts):
            return "not run"
        if "does not show" in verdicts:
            return "does not show"
        return "shows" if all(v == "shows" for v in verdicts) else "inconclusive"


def _paper_means(paper):
    """{treatment: {n: mean}} of the paper's random-halves curves, and its base."""
    curves = {
        name.split()[0]: {int(n): v["mean"] for n, v in series.items()}
        for name, series in paper["random_halves"].items()
    }
    base = statistics.fmean(paper["base_random_halves"].values())
    return curves, base


def _mean_over(curve, ns):
    return statistics.fmean(curve[n] for n in ns)


def _welch(first, second):
    """Estimate of mean(first) - mean(second) for unpaired groups (Welch's interval); with
    one value on a side, the difference without an interval (count 1: inconclusive)."""
    if not first or not second:
        return None
    m1, m2 = statistics.fmean(first), statistics.fmean(second)
    if len(first) < 2 or len(second) < 2:
        return replicates.Estimate(m1 - m2, math.nan, 1, math.nan, math.nan)
    v1, v2 = statistics.variance(first) / len(first), statistics.variance(second) / len(second)
    se = (v1 + v2) ** 0.5
    df = (
        (v1 + v2) ** 2 / (v1**2 / (len(first) - 1) + v2**2 / (len(second) - 1))
        if se > 0
        else len(first) + len(second) - 2
    )
    half = replicates.t975(max(int(df), 1)) * se
    return replicates.Estimate(
        m1 - m2, se, min(len(first), len(second)), m1 - m2 - half, m1 - m2 + half
    )


def evaluate(records, published, ns, natman_records=(), whole_records=()):
    """The findings (a)-(f) on the networks of a grid.

    Args:
      records: replicates.networks() of the random-split grid.
      published: the published numbers (results.paper_results()).
      ns: the grid's n values; each contrast uses those of its pre-set n it has.
      natman_records: replicates.networks() of the natman split, if run (finding e).
      whole_records: replicates.networks() of the random-weights control on all
        classes (the paper's nolearn), if run (finding f); else RnB on the halves is used.
    Returns:
      [Finding].
    """
    curves, paper_base = _paper_means(published)
    ns = sorted(ns)
    # A grid without these n has no networks for the contrasts that need them ("no
    # networks", inconclusive); the paper's value is still given.
    middle = [n for n in MIDDLE if n in ns] or list(MIDDLE)
    high = [n for n in HIGH if n in ns] or list(HIGH)
    base = replicates.base_by_replicate(records)

    def arm(treatment, n_values):
        """{replicate: mean top-1 of `treatment` over n_values}."""
        return replicates.by_replicate(records, treatment, n_values)

    def paper(treatment, n_values):
        """The paper's mean top-1 of `treatment` over n_values."""
        return _mean_over(curves[treatment], n_values)

    def contrast(label, sign, paper_value, first, second):
        return Contrast(label, sign, paper_value, replicates.paired(first, second))

    lo, hi, mid, every = ns[0], ns[-1], _ns(middle), _ns(ns)
    found = [
        Finding(
            "a",
            "frozen transfer (AnB) falls as more layers are copied: higher layers are specific",
            [
                contrast(
                    f"AnB(n={hi}) - AnB(n={lo})",
                    "negative",
                    paper("AnB", [hi]) - paper("AnB", [lo]),
                    arm("AnB", [hi]),
                    arm("AnB", [lo]),
                )
            ],
        ),
        Finding(
            "b",
            "the frozen selffer (BnB) dips below its base at middle n and recovers "
            "at n = 6-7: fragile co-adaptation",
            [
                contrast(
                    f"BnB - base, n = {mid}",
                    "negative",
                    paper("BnB", middle) - paper_base,
                    arm("BnB", middle),
                    base,
                ),
                contrast(
                    f"BnB(n = {_ns(high)}) - BnB(n = {mid})",
                    "positive",
                    paper("BnB", high) - paper("BnB", middle),
                    arm("BnB", high),
                    arm("BnB", middle),
                ),
            ],
        ),
        Finding(
            "c",
            "fine-tuning removes the dip: BnB+ at its base",
            [
                contrast(
                    f"BnB+ - BnB, n = {mid}",
                    "positive",
                    paper("BnB+", middle) - paper("BnB", middle),
                    arm("BnB+", middle),
                    arm("BnB", middle),
                ),
                contrast(
                    f"BnB+ - base, n = {mid} (not below)",
                    "not_below",
                    paper("BnB+", middle) - paper_base,
                    arm("BnB+", middle),
                    base,
                ),
            ],
        ),
        Finding(
            "d",
            "fine-tuned transfer (AnB+) beats its base and the fine-tuned selffer: "
            "transfer boosts generalization",
            [
                contrast(
                    f"AnB+ - base, n = {every}",
                    "positive",
                    paper("AnB+", ns) - paper_base,
                    arm("AnB+", ns),
                    base,
                ),
                contrast(
                    f"AnB+ - BnB+, n = {every}",
                    "positive",
                    paper("AnB+", ns) - paper("BnB+", ns),
                    arm("AnB+", ns),
                    arm("BnB+", ns),
                ),
            ],
        ),
    ]
    found.append(_dissimilar(records, natman_records, published, curves, paper_base, high))
    found.append(_random_features(records, whole_records, published, curves, paper_base, ns))
    return found


def _relative(records, treatment, ns):
    """Per replicate: mean over ns of top-1 / base top-1 (the paper's relative top-1)."""
    return replicates.by_replicate(records, treatment, ns, value=replicates.relative_top1)


def _dissimilar(records, natman_records, paper, curves, paper_base, high):
    claim = "dissimilar halves (man-made / natural) transfer worse than random halves at high n"
    nat = paper["natman"]
    bases = paper["base_natman"]
    paper_natman = statistics.fmean(
        [
            _mean_over(
                {int(n): v["mean"] for n, v in nat["natural -> man-made, frozen"].items()}, high
            )
            / bases["man-made (551 classes)"],
            _mean_over(
                {int(n): v["mean"] for n, v in nat["man-made -> natural, frozen"].items()}, high
            )
            / bases["natural (449 classes)"],
        ]
    )
    paper_random = _mean_over(curves["AnB"], high) / paper_base
    label = f"AnB / base (natman) - AnB / base (random), n = {_ns(high)}"
    if not natman_records:
        return Finding(
            "e",
            claim,
            [Contrast(label, "negative", paper_natman - paper_random, None)],
            todo="run the natman grid, with seeded replicates for an interval: "
            "python -m kt_transfer.main --mode=grid --config.grid.splits="
            '\'("natman", "natman.s1", "natman.s2")\' '
            "--config.grid.treatments='(\"AnB\",)'",
        )
    natman, random = (list(_relative(rs, "AnB", high).values()) for rs in (natman_records, records))
    return Finding(
        "e",
        claim,
        [
            Contrast(
                label + f" (unpaired: {len(natman)} natman, {len(random)} random replicates)",
                "negative",
                paper_natman - paper_random,
                _welch(natman, random),
            )
        ],
    )


def _random_features(records, whole_records, paper, curves, paper_base, ns):
    claim = "random frozen features fall far below transferred ones"
    deep = [n for n in ns if n >= 3] or ns
    control = {int(n): v["mean"] for n, v in paper["random_frozen_control_whole_imagenet"].items()}
    paper_value = (
        _mean_over(control, deep) / paper["whole_imagenet_1000_classes"]
        - _mean_over(curves["AnB"], deep) / paper_base
    )
    label = f"random / its base - AnB / base, n = {_ns(deep)}"
    if whole_records:  # one replicate per seed of the all-class split (all, all.s1, ...)
        control, transfer = (
            list(_relative(rs, treatment, deep).values())
            for rs, treatment in ((whole_records, "RnB"), (records, "AnB"))
        )
        return Finding(
            "f",
            claim,
            [
                Contrast(
                    label + f" (all-class control, unpaired: {len(control)} seeds, {len(transfer)} "
                    "random replicates)",
                    "negative",
                    paper_value,
                    _welch(control, transfer),
                )
            ],
        )
    estimate = replicates.paired(_relative(records, "RnB", deep), _relative(records, "AnB", deep))
    return Finding(
        "f",
        claim,
        [
            Contrast(
                label + " (RnB on the half, paired; not the paper's all-class control)",
                "negative",
                paper_value,
                estimate,
            )
        ],
    )


def _ns(ns):
    ns = list(ns)
    if len(ns) > 2 and ns == list(range(ns[0], ns[-1] + 1)):
        return f"{ns[0]}..{ns[-1]}"
    return ",".join(str(n) for n in ns) or "-"


def _interval(estimate):
    if estimate is None:
        return "no networks"
    if estimate.count < 2:
        return f"{estimate.mean:+.4f} (1 replicate: no interval)"
    return (
        f"{estimate.mean:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}] "
        f"({estimate.count} replicates)"
    )


RANK_ALPHA = 0.05


def rank_agreement(measures, transfer_curve):
    """Does a training-free curve (--mode=similarity: CKA, probe, LogME per layer) rank
    the layers as the grid's transfer networks do?

    Args:
      measures: {label: {n: value}}, e.g. the probe top-1 on baseA's layer n.
      transfer_curve: {n: mean top-1 of the grid's AnB networks (pooled) at n}.
    Returns:
      [{"measure", "ns", "rho", "p", "verdict"}]: Spearman's rho over the n both have, its
      exact two-sided permutation p-value, and "ranks as the grid does" (rho > 0,
      p < 0.05), "ranks against the grid" (rho < 0, p < 0.05) or "inconclusive".
    """
    from kt_transfer.analysis import similarity  # NumPy only

    rows = []
    for label, curve in sorted(measures.items()):
        ns = sorted(set(curve) & set(transfer_curve))
        if not 3 <= len(ns) <= similarity.MAX_EXACT_POINTS:
            continue
        first, second = [curve[n] for n in ns], [transfer_curve[n] for n in ns]
        rho, p = similarity.spearman(first, second), similarity.spearman_p_value(first, second)
        verdict = (
            "inconclusive"
            if p >= RANK_ALPHA
            else ("ranks as the grid does" if rho > 0 else "ranks against the grid")
        )
        rows.append({"measure": label, "ns": ns, "rho": rho, "p": p, "verdict": verdict})
    return rows


def _rank_lines(ranks):
    if not ranks:
        return []
    lines = [
        "",
        "## Training-free measures against the grid (--mode=similarity)",
        "",
        "| measure (per layer n) | n | Spearman rho with the grid's AnB top-1 | "
        "exact p | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['measure']} | {_ns(r['ns'])} | {r['rho']:+.2f} | {r['p']:.3f} | {r['verdict']} |"
        for r in ranks
    ]
    lines += [
        "",
        f"With {len(ranks[0]['ns'])} layers a rank correlation is a coarse test: "
        f"only p < {RANK_ALPHA} (from all orderings of the layers) counts as agreement.",
    ]
    return lines


def to_markdown(found, title, notes=(), ranks=()):
    """findings.md: one line per finding (and per contrast), with the paper's value, then
    the training-free measures' rank agreement with the grid (rank_agreement) if any."""
    lines = [f"# {title}", ""]
    lines += [f"{note}" for note in notes]
    lines += [
        "",
        "| finding | contrast | paper | this grid: mean [95% interval] | verdict |",
        "|---|---|---|---|---|",
    ]
    for finding in found:
        for i, contrast in enumerate(finding.contrasts):
            first = i == 0
            verdict = contrast.verdict() if not finding.todo else "not run"
            lines.append(
                f"| {'(' + finding.key + ') ' + finding.claim if first else ''} "
                f"| {contrast.label} | {contrast.paper:+.4f} "
                f"| {_interval(contrast.estimate) if not finding.todo else finding.todo} "
                f"| {verdict} |"
            )
        lines.append(f"| | **({finding.key}) overall** | | | **{finding.verdict()}** |")
    lines += [
        "",
        "A contrast *shows* when its 95% interval excludes zero on the paper's "
        "side, *does not show* when it excludes zero on the other side, and is "
        "*inconclusive* when the interval spans zero: a difference smaller than its "
        "interval is not a finding.",
    ]
    lines += _rank_lines(ranks)
    return "\n".join(lines) + "\n"
