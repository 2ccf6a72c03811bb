"""Replicated networks pooled the paper's way, with means, spreads and 95% intervals.

Pure Python (no TensorFlow): it reads result rows (results.gather) and nothing else.

The paper's Figure 2 pools its random splits and both directions: AnB and BnA are both
"transfer" (written AnB), BnB and AnA both "selffer" (written BnB), RnB and RnA both the
random-features control, and each network is compared with the base of its own target
half (BnA with baseA). A *replicate* is one (split, direction): the networks of one
replicate share their bases, so differences between treatments are paired within it.

The unit of *replication* is the class partition, not the replicate: both directions of a
split share its partition and its two bases, and a seeded replicate ("random0.s1") differs
from "random0" only in training noise. So every interval is over partitions: a
replicate's values are first averaged within its partition (nest), and k partitions give
k - 1 degrees of freedom however many directions and seeds each holds.
"""

import dataclasses
import math
import statistics

from kt_transfer.analysis import stats
from kt_transfer.data import splits

TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+", "RnB")  # in the paper's A -> B names
# The restart control (B8B+, A8A+: grid.restart_control) is the treatment "restart" at n 8.
RESTART, RESTART_N = "restart", 8

# Two-sided 95% quantiles of Student's t, t_{0.975}(df), df = 1..30.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df):
    """Student's t 0.975 quantile: the table up to df 30, then the Cornish-Fisher
    expansion z + (z^3 + z) / (4 df) (error < 0.001 there)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df={df})")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of k independent values (partitions) with its standard deviation and 95% t
    interval (NaN if k < 2). `replicates` counts the (split, direction) replicates nested
    in them; `df` is k - 1 unless given (Welch's)."""

    mean: float
    sd: float
    count: int
    low: float
    high: float
    replicates: int = 0
    df: float = 0.0

    @classmethod
    def of(cls, values, replicates=0):
        values = [float(v) for v in values]
        if not values:
            return None
        mean = statistics.fmean(values)
        replicates = replicates or len(values)
        if len(values) < 2:
            return cls(mean, math.nan, 1, math.nan, math.nan, replicates)
        sd = statistics.stdev(values)
        half = t975(len(values) - 1) * sd / math.sqrt(len(values))
        return cls(mean, sd, len(values), mean - half, mean + half, replicates, len(values) - 1)

    @property
    def se(self):
        """Standard error of the mean (from the interval, so Welch's too)."""
        if self.count < 2:
            return math.nan
        return (self.high - self.low) / (2 * t975(max(int(self.df), 1)))

    def excludes_zero(self):
        return self.count >= 2 and (self.low > 0 or self.high < 0)

    def p_value(self, null=0.0):
        """Two-sided t-test p of mean == null (NaN with fewer than 2 values)."""
        if self.count < 2:
            return math.nan
        se = self.se
        if se == 0:
            return 0.0 if self.mean != null else 1.0
        return stats.t_two_sided_p((self.mean - null) / se, self.df)


def convergence_verdict(gains, threshold):
    """Are the bases converged? From the top-1 gains of twice-budget runs over several bases.

    Two runs of one base differ by a few points, so one gain says little: the verdict is
    on the 95% interval of the mean gain, as for the findings. "converged" when the whole
    interval is under `threshold`, "NOT converged" when it is all above, else
    "inconclusive"; returns (Estimate, verdict).
    """
    estimate = Estimate.of(gains)
    if estimate is None or estimate.count < 2:
        return estimate, "inconclusive (one pair of runs: check more bases or splits)"
    if estimate.high < threshold:
        return estimate, "converged"
    if estimate.low > threshold:
        return estimate, "NOT converged"
    return estimate, "inconclusive"


def paper_name(mode):
    """(treatment in A -> B terms, direction): BnA -> (AnB, BtoA), AnA+ -> (BnB+, BtoA)."""
    target = mode.rstrip("+")[-1]
    if target == "A":
        return splits.swap_halves(mode), "BtoA"
    return mode, "AtoB"


def networks(rows, split_names=None):
    """One record per finished network of the plain grid (not a sweep's or --base_model
    run), in the paper's terms.

    Returns:
      [{"split", "direction", "treatment" (AnB, BnB+, ..., or "base"), "n", "top1",
        "base_top1", "mean_highest_top1", "run"}], sorted.
    """
    records = []
    for row in rows:
        if "_" in row["run"] or (split_names is not None and row["split"] not in split_names):
            continue
        if row["status"] != "finished" or row.get("top1") is None:
            continue
        if row["mode"].startswith("base"):
            treatment, direction = "base", ("AtoB" if row["mode"] == "baseB" else "BtoA")
        else:
            treatment, direction = paper_name(row["mode"])
            if row["n"] == row.get("blocks", RESTART_N):  # B8B+ / A8A+: every block copied
                treatment = RESTART
        records.append(
            {
                "split": row["split"],
                "direction": direction,
                "treatment": treatment,
                # The restart control is filed under CaffeNet's n = 8 for every family.
                "n": RESTART_N if treatment == RESTART else row["n"],
                "top1": row["top1"],
                "base_top1": row.get("base_top1"),
                "mean_highest_top1": row.get("mean_highest_top1"),
                "run": row["run"],
            }
        )
    return sorted(records, key=lambda r: (r["treatment"], r["n"], r["split"], r["direction"]))


def expected_networks(split_names, directions, treatments, ns):
    """{(split, direction, treatment, n)} the grid should produce (bases have n = 0)."""
    expected = set()
    for split in split_names:
        whole = splits.base_name(split) == splits.WHOLE  # one base, the random control
        for direction in ("AtoB",) if whole else directions:
            expected.add((split, direction, "base", 0))
            for treatment in treatments:
                if whole and treatment != "RnB":
                    continue
                for n in (RESTART_N,) if treatment == RESTART else ns:
                    expected.add((split, direction, treatment, n))
    return expected


def missing(records, expected):
    """The expected networks without a finished record: shown, never averaged over."""
    have = {(r["split"], r["direction"], r["treatment"], r["n"]) for r in records}
    return sorted(expected - have)


def summarize(records, key="top1"):
    """Per (treatment, n): Estimate over its partitions (each the mean of its networks),
    and of their differences from their own base ("vs_base"). Bases appear as ("base", 0).

    Returns:
      [{"treatment", "n", "estimate", "vs_base"}], in treatment then n order.
    """
    order = {t: i for i, t in enumerate(("base", *TREATMENTS, RESTART))}
    groups = {}
    for record in records:
        groups.setdefault((record["treatment"], record["n"]), []).append(record)
    table = []
    for (treatment, n), group in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
    ):
        values = {(r["split"], r["direction"]): r[key] for r in group}
        deltas = {
            (r["split"], r["direction"]): r[key] - r["base_top1"]
            for r in group
            if treatment != "base" and r["base_top1"] is not None
        }
        table.append(
            {
                "treatment": treatment,
                "n": n,
                "estimate": Estimate.of(nest(values), replicates=len(values)),
                "vs_base": Estimate.of(nest(deltas), replicates=len(deltas)) if deltas else None,
            }
        )
    return table


def by_replicate(records, treatment, ns, value=lambda record: record["top1"]):
    """{(split, direction): mean of value(record) over the given n} for the replicates
    that have every one of those n (a replicate missing one is left out, not
    half-averaged; a record whose value is None counts as missing)."""
    values = {}
    for record in records:
        if record["treatment"] == treatment and record["n"] in ns:
            v = value(record)
            if v is not None:
                values.setdefault((record["split"], record["direction"]), {})[record["n"]] = v
    return {rep: statistics.fmean(v.values()) for rep, v in values.items() if set(v) == set(ns)}


def relative_top1(record):
    """top-1 / its base's top-1 (the paper's relative top-1), or None without a base."""
    return record["top1"] / record["base_top1"] if record["base_top1"] else None


def base_by_replicate(records):
    """{(split, direction): top-1 of the base of that replicate's target half}."""
    return {(r["split"], r["direction"]): r["top1"] for r in records if r["treatment"] == "base"}


def partition(replicate):
    """The class partition of a (split, direction) replicate: "random0.s1" -> "random0".

    Between two datasets (split "cross") there is one partition, the pair itself: its
    seeded replicates are the units, and their intervals measure training noise only
    (findings.md says so)."""
    name = splits.base_name(replicate[0])
    return replicate[0] if name == splits.CROSS else name


def nest(values, unit=partition):
    """{replicate: value} -> [mean per unit] (default: per partition), in unit order."""
    groups = {}
    for replicate, value in values.items():
        groups.setdefault(unit(replicate), []).append(value)
    return [statistics.fmean(groups[key]) for key in sorted(groups)]


def paired(first, second, scale=None):
    """Estimate of first - second over the replicates both have, nested in partitions;
    with `scale` ({replicate: base top-1}), of (first - second) / scale: the relative
    scale, on which a base of 0.35 and the paper's 0.625 compare."""
    common = sorted(set(first) & set(second) & (set(scale) if scale is not None else set(first)))
    if not common:
        return None
    differences = {
        rep: (first[rep] - second[rep]) / (scale[rep] if scale is not None else 1.0)
        for rep in common
    }
    return Estimate.of(nest(differences), replicates=len(common))


def _fmt(value, digits=4):
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


SUMMARY_COLUMNS = (
    "treatment",
    "n",
    "partitions",
    "networks",
    "mean",
    "sd",
    "ci95_low",
    "ci95_high",
    "vs_base_mean",
    "vs_base_ci95_low",
    "vs_base_ci95_high",
)


def summary_rows(table):
    """The summary table as rows of strings (CSV and Markdown)."""
    rows = []
    for entry in table:
        est, delta = entry["estimate"], entry["vs_base"]
        rows.append(
            {
                "treatment": entry["treatment"],
                "n": str(entry["n"]),
                "partitions": str(est.count),
                "networks": str(est.replicates),
                "mean": _fmt(est.mean),
                "sd": _fmt(est.sd),
                "ci95_low": _fmt(est.low),
                "ci95_high": _fmt(est.high),
                "vs_base_mean": _fmt(delta.mean) if delta else "",
                "vs_base_ci95_low": _fmt(delta.low) if delta else "",
                "vs_base_ci95_high": _fmt(delta.high) if delta else "",
            }
        )
    return rows
