"""The paper's findings, each tested on a grid's networks, with verdicts that hold.

Every finding is one or more *contrasts*: a difference between treatments (or a treatment
and its base), averaged over pre-set n values, computed within each replicate (one split
and direction, whose networks share their bases), averaged within each class partition
(directions and seeds are nested in their partition: replicates.nest), and then over the
partitions with a t interval and p-value. The n values are fixed in advance (MIDDLE,
HIGH), not picked after seeing the curve, which would bias the test.

Verdicts:
- Every tested contrast of the report is one family: its p-values are Holm-adjusted
  together (stats.holm), and the verdict is on the adjusted p. A contrast *shows* when
  the adjusted p is below ALPHA on the paper's side, *does not show* when it is below
  ALPHA on the other side, and is *inconclusive* otherwise (or with fewer than
  MIN_PARTITIONS partitions); *not run* when the grid has none of the networks it needs.
- "Not below" is a non-inferiority test with a stated margin (NON_INFERIORITY_MARGIN):
  *shows* when the treatment is significantly above base - margin, *does not show* when
  significantly below it, else inconclusive. A wide interval is inconclusive, never a
  finding by absence of evidence.
- (c) "fine-tuning removes the dip" is conditional on (b): with no dip shown, there is
  no dip to remove.
- Every contrast is also given on the relative scale (the difference divided by its
  replicate's base top-1), where networks at a base of 0.35 and the paper's at 0.625
  compare; the paper's value is compared with ours on that scale.

A finding shows when all its tested contrasts show. Pure Python (no TensorFlow), like
replicates.py.
"""

import dataclasses
import math
import statistics

from kt_transfer.analysis import replicates, stats

MIDDLE, HIGH = (3, 4, 5), (6, 7)  # the paper's dip (BnB) and its recovery / specificity
PAPER_LAST_N = 7  # CaffeNet: n = 1..7


def thirds(last_n):
    """(early, middle, late) n of a network whose n runs 1..last_n (its blocks but the
    classifier): the outer two floor(last_n / 3) long, at least 1. CaffeNet's are the
    paper's (1, 2), (3, 4, 5) = MIDDLE, (6, 7) = HIGH; a 6-block ResNet or ViT (n = 1..5)
    has (1,), (2, 3, 4), (5,)."""
    k = max(1, last_n // 3)
    every = tuple(range(1, last_n + 1))
    return every[:k], every[k : last_n - k], every[last_n - k :]


def at_depth(curve, last_n):
    """The paper's {n: value} curve read at another network's n = 1..last_n: at the
    paper's n of the same relative depth, round(7 n / last_n). The paper measured
    CaffeNet only; for another family its value is a reference, not a prediction."""
    if last_n == PAPER_LAST_N:
        return curve
    return {n: curve[max(1, round(PAPER_LAST_N * n / last_n))] for n in range(1, last_n + 1)}


# What the CPU-scale regime (configs/embedded.py: converged small bases, halves of equal
# size, 2,000 steps) can and cannot test of each finding: printed under findings.md.
REGIME = {
    "a": "Tests it as the paper does: frozen copies of more layers, the same target data.",
    "b": "Tests it, but a dip needs co-adapted middle layers; the CPU-scale bases are "
    "small (the default: CaffeNet at width 0.125) and converge within the budget, so a "
    "missing dip may be the "
    "regime's rather than a refutation of the paper's.",
    "c": "Conditional on (b). Where BnB+ ends above its base, the restart control (g) "
    "tells restarting the schedule apart from re-initialising the top layers.",
    "d": "Where source and target have as many images as each other (the default's "
    "halves: 1,500 each), the source taught the copied layers nothing the target could "
    "not: (d) asks the paper's question only on a smaller target task "
    "(grid.target_images_per_class, or a smaller target dataset), whose reports give "
    "AnB+ - BnB+ per target size.",
    "e": "natman is one partition (the paper's one split): its seeds measure training "
    "noise, not other man-made/natural splits; the embedded dataset's groups are "
    "generated, not ImageNet's.",
    "f": "With the all-class control it is the paper's comparison; with RnB on a half it "
    "is not (the figure says so).",
    "g": "Not in the paper: a control for (c) and (d) that the paper's regime (450,000 "
    "steps, a base at its schedule's end) made less needed.",
}
# Between two datasets (split "cross"), where these differ from one dataset's halves.
CROSS_REGIME = {
    "a": "Tests it across datasets: frozen copies of more of the source's layers, the "
    "target's data.",
    "d": "Asks the paper's question across datasets: whether features learnt on the "
    "source help the target beyond what its own data teach (BnB+). With one dataset pair "
    "it says what holds for these two datasets, not for tasks in general.",
}
ALPHA = 0.05  # familywise, after Holm's correction
# "Not below its base" means not more than 1 point of top-1 below it (2.9% of a 0.35
# base): about the spread of one base trained again (0.9 points) and the binomial
# standard error of one evaluation on 2,000 images (1.1 points).
NON_INFERIORITY_MARGIN = 0.01
# A verdict needs at least 3 partitions: a t interval from 2 values (1 df) rests wholly
# on normality, and two partitions that happen to agree give a tiny interval.
MIN_PARTITIONS = 3
SIGNS = ("positive", "negative", "not_below", "either")  # "either": a control, no side


@dataclasses.dataclass
class Contrast:
    label: str  # what is measured, e.g. "AnB+ - BnB+, n = 1..7"
    sign: str  # the paper's direction (SIGNS); "either" for a control the paper lacks
    paper: float  # the paper's value of the same contrast (NaN: not in the paper)
    estimate: object  # replicates.Estimate or None
    relative: object = None  # the same on the relative scale (/ base top-1)
    paper_relative: float = math.nan
    adjusted_p: float | None = None  # Holm over the report's contrasts (set by evaluate)

    @property
    def null(self):
        """The value the test rejects: 0, or -margin for non-inferiority."""
        return -NON_INFERIORITY_MARGIN if self.sign == "not_below" else 0.0

    def p_value(self):
        """Two-sided p of the estimate against `null`; None with fewer than 2 partitions."""
        est = self.estimate
        if est is None or est.count < 2:
            return None
        return est.p_value(self.null)

    @property
    def testable(self):
        """Enough partitions for a verdict (MIN_PARTITIONS); the others are shown with
        their raw p but are left out of the Holm family."""
        return self.estimate is not None and self.estimate.count >= MIN_PARTITIONS

    def verdict(self):
        est = self.estimate
        if est is None:
            return "not run"  # the grid has none of the networks it needs
        if not self.testable:
            return "inconclusive"
        p = self.adjusted_p if self.adjusted_p is not None else self.p_value()
        if p is None or math.isnan(p) or p >= ALPHA:
            return "inconclusive"
        above = est.mean > self.null
        if self.sign == "either":
            return "higher" if above else "lower"
        agrees = above if self.sign in ("positive", "not_below") else not above
        return "shows" if agrees else "does not show"

    def paper_inside(self):
        """Is the paper's relative value inside our relative 95% interval? None if either
        is missing."""
        rel = self.relative
        if rel is None or rel.count < 2 or math.isnan(self.paper_relative):
            return None
        return rel.low <= self.paper_relative <= rel.high


@dataclasses.dataclass
class Finding:
    key: str
    claim: str
    contrasts: list
    todo: str = ""  # what to run, when the networks it needs do not exist
    requires: object = None  # a Contrast that must show for this finding to be asked
    unmet: str = ""  # the verdict when `requires` does not show

    def verdict(self):
        if self.todo:
            return "not run"
        verdicts = [c.verdict() for c in self.contrasts if c.sign != "either"]
        if all(v == "not run" for v in verdicts):
            return "not run"
        if self.requires is not None and self.requires.verdict() != "shows":
            return self.unmet
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


def _welch(first, second, replicates_count=0):
    """Estimate of mean(first) - mean(second) for unpaired groups (Welch's interval and
    df); with one value on a side, the difference without an interval (inconclusive)."""
    if not first or not second:
        return None
    m1, m2 = statistics.fmean(first), statistics.fmean(second)
    count = min(len(first), len(second))
    if count < 2:
        return replicates.Estimate(m1 - m2, math.nan, 1, math.nan, math.nan, replicates_count)
    v1, v2 = statistics.variance(first) / len(first), statistics.variance(second) / len(second)
    se = (v1 + v2) ** 0.5
    df = (
        (v1 + v2) ** 2 / (v1**2 / (len(first) - 1) + v2**2 / (len(second) - 1))
        if se > 0
        else len(first) + len(second) - 2
    )
    half = replicates.t975(max(int(df), 1)) * se
    return replicates.Estimate(
        m1 - m2, se, count, m1 - m2 - half, m1 - m2 + half, replicates_count, max(int(df), 1)
    )


def evaluate(records, published, ns, natman_records=(), whole_records=(), last_n=PAPER_LAST_N):
    """The findings (a)-(g) on the networks of a grid, Holm-adjusted together.

    Args:
      records: replicates.networks() of the random-split grid (with its restart control,
        treatment "restart", if run: finding g).
      published: the published numbers (results.paper_results()).
      ns: the grid's n values; each contrast uses those of its pre-set n it has.
      natman_records: replicates.networks() of the natman split, if run (finding e).
      whole_records: replicates.networks() of the random-weights control on all
        classes (the paper's nolearn), if run (finding f); else RnB on the halves is used.
      last_n: the network's highest n (blocks - 1): middle and high n are its thirds
        (thirds), and the paper's values are read at the same depth (at_depth).
    Returns:
      [Finding].
    """
    curves, paper_base = _paper_means(published)
    curves = {treatment: at_depth(curve, last_n) for treatment, curve in curves.items()}
    ns = sorted(ns)
    # A grid without these n has no networks for the contrasts that need them ("no
    # networks", inconclusive); the paper's value is still given.
    _, middle_n, high_n = thirds(last_n)
    middle = [n for n in middle_n if n in ns] or list(middle_n)
    high = [n for n in high_n if n in ns] or list(high_n)
    base = replicates.base_by_replicate(records)

    def arm(treatment, n_values):
        """{replicate: mean top-1 of `treatment` over n_values}."""
        return replicates.by_replicate(records, treatment, n_values)

    def paper(treatment, n_values):
        """The paper's mean top-1 of `treatment` over n_values."""
        return _mean_over(curves[treatment], n_values)

    def contrast(label, sign, paper_value, first, second):
        return Contrast(
            label,
            sign,
            paper_value,
            replicates.paired(first, second),
            relative=replicates.paired(first, second, scale=base),
            paper_relative=paper_value / paper_base,
        )

    lo, hi, mid, every = ns[0], ns[-1], _ns(middle), _ns(ns)
    dip = contrast(
        f"BnB - base, n = {mid}",
        "negative",
        paper("BnB", middle) - paper_base,
        arm("BnB", middle),
        base,
    )
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
            "at high n: fragile co-adaptation",
            [
                dip,
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
            "fine-tuning removes the dip: BnB+ at its base (asked only where (b)'s dip shows)",
            [
                contrast(
                    f"BnB+ - BnB, n = {mid}",
                    "positive",
                    paper("BnB+", middle) - paper("BnB", middle),
                    arm("BnB+", middle),
                    arm("BnB", middle),
                ),
                contrast(
                    f"BnB+ - base, n = {mid} (not below: margin "
                    f"{NON_INFERIORITY_MARGIN * 100:g} point)",
                    "not_below",
                    paper("BnB+", middle) - paper_base,
                    arm("BnB+", middle),
                    base,
                ),
            ],
            requires=dip,
            unmet="no dip shown to remove",
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
    found.append(_dissimilar(records, natman_records, published, curves, paper_base, high, last_n))
    found.append(
        _random_features(records, whole_records, published, curves, paper_base, ns, last_n)
    )
    restart = arm(replicates.RESTART, [replicates.RESTART_N])
    if restart:
        found.append(_restart_control(contrast, arm, base, restart, ns))
    _adjust(found)
    return found


def _restart_control(contrast, arm, base, restart, ns):
    """(g): the restart control B8B+ (every layer of the base, trained again with the
    schedule restarted) against the base and the fine-tuned networks. Not in the paper:
    it separates "restart and train longer" (restart - base) from "re-initialise the top
    layers" (BnB+ - restart) and from what transfer adds (AnB+ - restart)."""
    every = _ns(ns)
    return Finding(
        "g",
        "fine-tuned transfer (AnB+) beats the restart control (its target's base, all 8 "
        "layers trained again): a gain that restarting alone does not give",
        [
            contrast(
                f"AnB+ - restart (B8B+), n = {every}",
                "positive",
                math.nan,
                arm("AnB+", ns),
                restart,
            ),
            contrast("restart (B8B+) - base", "either", math.nan, restart, base),
            contrast(
                f"BnB+ - restart (B8B+), n = {every}",
                "either",
                math.nan,
                arm("BnB+", ns),
                restart,
            ),
        ],
    )


def _adjust(found):
    """Holm's correction over every testable contrast of the report, in place."""
    tested = [c for f in found if not f.todo for c in f.contrasts if c.testable]
    adjusted = stats.holm([c.p_value() for c in tested])
    for c, p in zip(tested, adjusted, strict=True):
        c.adjusted_p = p


def _relative(records, treatment, ns):
    """Per replicate: mean over ns of top-1 / base top-1 (the paper's relative top-1)."""
    return replicates.by_replicate(records, treatment, ns, value=replicates.relative_top1)


def _dissimilar(records, natman_records, paper, curves, paper_base, high, last_n):
    claim = "dissimilar halves (man-made / natural) transfer worse than random halves at high n"
    nat = paper["natman"]
    bases = paper["base_natman"]
    paper_natman = statistics.fmean(
        [
            _mean_over(_curve(nat["natural -> man-made, frozen"], last_n), high)
            / bases["man-made (551 classes)"],
            _mean_over(_curve(nat["man-made -> natural, frozen"], last_n), high)
            / bases["natural (449 classes)"],
        ]
    )
    paper_random = _mean_over(curves["AnB"], high) / paper_base
    label = f"AnB / base (natman) - AnB / base (random), n = {_ns(high)}"
    # natman's bases alone (its grid started, no transfer at high n yet): not run either.
    if not _relative(natman_records, "AnB", high):
        return Finding(
            "e",
            claim,
            [Contrast(label, "negative", paper_natman - paper_random, None)],
            todo="run the natman grid, with seeded replicates for an interval: "
            "python -m kt_transfer.main --mode=grid --config.grid.splits="
            '\'("natman", "natman.s1", "natman.s2")\' '
            "--config.grid.treatments='(\"AnB\",)'",
        )
    # natman is one partition (the paper's): its seeds are training-noise replicates, each
    # the mean of its two directions; the random halves are nested in their partitions.
    natman_values = _relative(natman_records, "AnB", high)
    random_values = _relative(records, "AnB", high)
    natman = replicates.nest(natman_values, unit=lambda replicate: replicate[0])
    random = replicates.nest(random_values)
    estimate = _welch(natman, random, len(natman_values) + len(random_values))
    return Finding(
        "e",
        claim,
        [
            Contrast(
                label + f" (unpaired: {len(natman)} seeds of the one natman partition, "
                f"training noise only; {len(random)} random partitions)",
                "negative",
                paper_natman - paper_random,
                estimate,
                relative=estimate,  # already relative to each base
                paper_relative=paper_natman - paper_random,
            )
        ],
    )


def _curve(published, last_n):
    """A published {"n": {"mean": ...}} curve as {n: mean}, read at depth (at_depth)."""
    return at_depth({int(n): v["mean"] for n, v in published.items()}, last_n)


def _random_features(records, whole_records, paper, curves, paper_base, ns, last_n):
    claim = "random frozen features fall far below transferred ones"
    deep = [n for n in ns if n > thirds(last_n)[0][-1]] or ns  # CaffeNet: n >= 3
    control = _curve(paper["random_frozen_control_whole_imagenet"], last_n)
    paper_value = (
        _mean_over(control, deep) / paper["whole_imagenet_1000_classes"]
        - _mean_over(curves["AnB"], deep) / paper_base
    )
    label = f"random / its base - AnB / base, n = {_ns(deep)}"
    if whole_records:  # one replicate per seed of the all-class split (all, all.s1, ...)
        control_values = _relative(whole_records, "RnB", deep)
        transfer_values = _relative(records, "AnB", deep)
        control = replicates.nest(control_values, unit=lambda replicate: replicate[0])
        transfer = replicates.nest(transfer_values)
        estimate = _welch(control, transfer, len(control_values) + len(transfer_values))
        label += (
            f" (all-class control, unpaired: {len(control)} seeds, training noise only; "
            f"{len(transfer)} random partitions)"
        )
    else:
        estimate = replicates.paired(
            _relative(records, "RnB", deep), _relative(records, "AnB", deep)
        )
        label += " (RnB on the half, paired; not the paper's all-class control)"
    return Finding(
        "f",
        claim,
        [Contrast(label, "negative", paper_value, estimate, estimate, paper_value)],
    )


def _ns(ns):
    ns = list(ns)
    if len(ns) > 2 and ns == list(range(ns[0], ns[-1] + 1)):
        return f"{ns[0]}..{ns[-1]}"
    return ",".join(str(n) for n in ns) or "-"


def _interval(estimate, unit="partition"):
    if estimate is None:
        return "no networks"
    units = f"{estimate.count} {unit}{'s' if estimate.count != 1 else ''}"
    if estimate.replicates > estimate.count:
        units += f", {estimate.replicates} replicates"
    if estimate.count < 2:
        return f"{estimate.mean:+.4f} ({units}: no interval)"
    return f"{estimate.mean:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}] ({units})"


def _percent(value):
    return "-" if value is None or math.isnan(value) else f"{value * 100:+.1f}%"


def _relative_cell(contrast):
    """'paper -3.0% / this grid -1.0% [-5.1%, +3.0%]: inside' (relative scale)."""
    rel = contrast.relative
    ours = (
        "no networks"
        if rel is None
        else (
            _percent(rel.mean)
            if rel.count < 2
            else f"{_percent(rel.mean)} [{_percent(rel.low)}, {_percent(rel.high)}]"
        )
    )
    inside = contrast.paper_inside()
    where = "" if inside is None else ("; paper inside" if inside else "; paper outside")
    return f"{_percent(contrast.paper_relative)} / {ours}{where}"


def _p(value):
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


RANK_ALPHA = 0.05


def rank_agreement(measures, transfer_curve):
    """Does a training-free curve (--mode=similarity: CKA, probe, LogME per layer) rank
    the layers as the grid's transfer networks do, and does it say more than depth?

    Every such curve and the grid's both fall with depth, so agreeing in rank is easy:
    the layer index alone ("layer depth") is given as the baseline row. The second test
    takes a straight line in n out of both curves (similarity.partial_correlation) and
    asks whether the measure follows the grid's bends beyond it.

    Args:
      measures: {label: {n: value}}, e.g. the probe top-1 on baseA's layer n.
      transfer_curve: {n: mean top-1 of the grid's AnB networks (pooled) at n}.
    Returns:
      [{"measure", "ns", "rho", "p", "verdict", "partial", "partial_p",
        "partial_verdict"}]: Spearman's rho over the n both have with its exact two-sided
      permutation p ("ranks as the grid does" for rho > 0, p < 0.05; "ranks against the
      grid"; "inconclusive"), and the partial correlation beyond depth with its exact p
      ("adds to depth" for r > 0, p < 0.05; "against the grid beyond depth";
      "inconclusive"); the depth baseline first.
    """
    from kt_transfer.analysis import similarity  # NumPy only

    rows = []
    depth = {"layer depth (-n): the baseline": {n: -n for n in transfer_curve}}
    for label, curve in [*depth.items(), *sorted(measures.items())]:
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
        row = {"measure": label, "ns": ns, "rho": rho, "p": p, "verdict": verdict}
        if label in depth:
            row.update(partial=math.nan, partial_p=math.nan, partial_verdict="-")
        else:
            partial = similarity.partial_correlation(first, second, ns)
            partial_p = similarity.partial_correlation_p_value(first, second, ns)
            row.update(
                partial=partial,
                partial_p=partial_p,
                partial_verdict=_partial_verdict(partial, partial_p),
            )
        rows.append(row)
    return rows if len(rows) > 1 else []


def _partial_verdict(partial, p):
    """Beyond depth, the measure follows the grid's bends ("adds to depth") or goes
    against them: a significant negative partial r predicts the grid wrongly."""
    if p >= RANK_ALPHA:
        return "inconclusive"
    return "adds to depth" if partial > 0 else "against the grid beyond depth"


def _rank_lines(ranks):
    if not ranks:
        return []
    lines = [
        "",
        "## Training-free measures against the grid (--mode=similarity)",
        "",
        "| measure (per layer n) | n | Spearman rho with the grid's AnB top-1 | exact p "
        "| verdict | beyond depth: partial r | exact p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['measure']} | {_ns(r['ns'])} | {r['rho']:+.2f} | {r['p']:.3f} | {r['verdict']} "
        f"| {_signed(r['partial'])} | {_p(r['partial_p'])} | {r['partial_verdict']} |"
        for r in ranks
    ]
    lines += [
        "",
        f"With {len(ranks[0]['ns'])} layers a rank correlation is a coarse test: "
        f"only p < {RANK_ALPHA} (from all orderings of the layers) counts as agreement. Every "
        "curve here falls with depth, so layer depth alone is the baseline to beat; the "
        "partial r takes a straight line in n out of both curves and asks whether the "
        "measure follows the grid's bends (p over all orderings of its residuals). "
        f"The p are not corrected for the table's {2 * (len(ranks) - 1)} tests: at "
        f"p < {RANK_ALPHA}, about {2 * (len(ranks) - 1) * RANK_ALPHA:.1f} would pass by "
        "chance alone, so a lone pass is not a finding.",
    ]
    return lines


def _signed(value):
    return "-" if value is None or math.isnan(value) else f"{value:+.2f}"


def to_markdown(found, title, notes=(), ranks=(), unit="partition"):
    """findings.md: one line per finding (and per contrast), with the paper's value, raw
    and Holm-adjusted p, the relative scale, then the training-free measures' rank
    agreement with the grid (rank_agreement) if any."""
    lines = [f"# {title}", ""]
    lines += [f"{note}" for note in notes]
    lines += [
        "",
        "| finding | contrast | paper | this grid: mean [95% interval] | relative to base: "
        "paper / this grid | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for finding in found:
        for i, contrast in enumerate(finding.contrasts):
            first = i == 0
            verdict = contrast.verdict() if not finding.todo else "not run"
            paper = "-" if math.isnan(contrast.paper) else f"{contrast.paper:+.4f}"
            lines.append(
                f"| {'(' + finding.key + ') ' + finding.claim if first else ''} "
                f"| {contrast.label} | {paper} "
                f"| {_interval(contrast.estimate, unit) if not finding.todo else finding.todo} "
                f"| {_relative_cell(contrast) if not finding.todo else '-'} "
                f"| {_p(contrast.p_value())} | {_p(contrast.adjusted_p)} | {verdict} |"
            )
        lines.append(f"| | **({finding.key}) overall** | | | | | | **{finding.verdict()}** |")
    over = (
        "Intervals are over class partitions: the directions and seeds of one partition "
        "are averaged first (they share its classes and bases)."
        if unit == "partition"
        else f"Intervals are over {unit}s: they measure training noise only."
    )
    lines += [
        "",
        over + " A contrast *shows* when its "
        f"Holm-adjusted p (over every contrast above) is below {ALPHA} on the paper's side, "
        "*does not show* when it is on the other side, and is *inconclusive* otherwise: a "
        "difference smaller than its interval is not a finding, and fewer than "
        f"{MIN_PARTITIONS} {unit}s give no verdict (no Holm p). *Not below* is a "
        f"non-inferiority test with a margin of {NON_INFERIORITY_MARGIN * 100:g} point of "
        "top-1. (c) is asked only where (b)'s dip shows. Controls the paper lacks (sign "
        "*either*) say *higher* or *lower* when their adjusted p is below "
        f"{ALPHA}. The relative column divides each replicate's difference by its base's "
        "top-1; the paper's value (its base: 0.625) is compared with ours there.",
    ]
    lines += ["", "## What this regime can and cannot test", ""]
    regime = REGIME if unit == "partition" else {**REGIME, **CROSS_REGIME}
    lines += [f"- ({f.key}) {regime[f.key]}" for f in found if f.key in regime]
    lines += _rank_lines(ranks)
    return "\n".join(lines) + "\n"
