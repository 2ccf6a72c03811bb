"""Replicated networks pooled the paper's way, with means, spreads and 95% intervals.

Pure Python (no TensorFlow): it reads result rows (results.gather) and nothing else.

The paper's Figure 2 pools its random splits and both directions: AnB and BnA are both
"transfer" (written AnB), BnB and AnA both "selffer" (written BnB), RnB and RnA both the
random-features control, and each network is compared with the base of its own target
half (BnA with baseA). A *replicate* is one (split, direction): the networks of one
replicate share their bases, so differences between treatments are paired within it.
"""

import dataclasses
import math
import statistics

from kt_transfer.data import splits

TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+", "RnB")  # in the paper's A -> B names

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
    """Mean of k values with its standard deviation and 95% t interval (None if k < 2)."""

    mean: float
    sd: float
    count: int
    low: float
    high: float

    @classmethod
    def of(cls, values):
        values = [float(v) for v in values]
        if not values:
            return None
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, math.nan, 1, math.nan, math.nan)
        sd = statistics.stdev(values)
        half = t975(len(values) - 1) * sd / math.sqrt(len(values))
        return cls(mean, sd, len(values), mean - half, mean + half)

    def excludes_zero(self):
        return self.count >= 2 and (self.low > 0 or self.high < 0)


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
        records.append(
            {
                "split": row["split"],
                "direction": direction,
                "treatment": treatment,
                "n": row["n"],
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
                for n in ns:
                    expected.add((split, direction, treatment, n))
    return expected


def missing(records, expected):
    """The expected networks without a finished record: shown, never averaged over."""
    have = {(r["split"], r["direction"], r["treatment"], r["n"]) for r in records}
    return sorted(expected - have)


def summarize(records, key="top1"):
    """Per (treatment, n): Estimate over its networks, and over their differences from
    their own base ("vs_base"). Bases appear as ("base", 0).

    Returns:
      [{"treatment", "n", "estimate", "vs_base"}], in treatment then n order.
    """
    order = {t: i for i, t in enumerate(("base", *TREATMENTS))}
    groups = {}
    for record in records:
        groups.setdefault((record["treatment"], record["n"]), []).append(record)
    table = []
    for (treatment, n), group in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
    ):
        deltas = [
            r[key] - r["base_top1"]
            for r in group
            if treatment != "base" and r["base_top1"] is not None
        ]
        table.append(
            {
                "treatment": treatment,
                "n": n,
                "estimate": Estimate.of([r[key] for r in group]),
                "vs_base": Estimate.of(deltas) if deltas else None,
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


def paired(first, second):
    """Estimate of first - second over the replicates both have, and that count."""
    common = sorted(set(first) & set(second))
    return Estimate.of([first[rep] - second[rep] for rep in common]) if common else None


def _fmt(value, digits=4):
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


SUMMARY_COLUMNS = (
    "treatment",
    "n",
    "count",
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
                "count": str(est.count),
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
