"""Replicates pooled the paper's way, intervals, and the findings' verdicts, on stored run
records and constructed inputs whose answers are known."""

import json
import math
import os
import random
import statistics

import pytest

from kt_transfer.analysis import findings, replicates, results, stats

SPLITS = ("random0", "random1")


def _write_run(workdir, split, mode, n, top1, status="finished"):
    run = mode.replace("n", str(n)) if n else mode
    run_dir = os.path.join(workdir, "embedded", split, "abcd1234", run)
    os.makedirs(run_dir)
    metrics = {"mode": mode, "n": n, "status": status, "num_classes": 50, "seconds": 1.0}
    if status == "finished":
        metrics.update(top1=top1, top5=top1, mean_highest_top1=top1 + 0.01)
    else:
        metrics.update(reason="loss became NaN or infinite at step 3")
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)


def _stored_grid(workdir):
    """Two splits x two directions, n = 1, 2; each value encodes split, direction and n."""
    for s, split in enumerate(SPLITS):
        _write_run(workdir, split, "baseA", 0, 0.50 + s / 100)
        _write_run(workdir, split, "baseB", 0, 0.60 + s / 100)
        for n in (1, 2):
            _write_run(workdir, split, "AnB", n, 0.40 + s / 100 + n / 1000)  # transfer
            _write_run(workdir, split, "BnA", n, 0.30 + s / 100 + n / 1000)  # transfer
            _write_run(workdir, split, "BnB", n, 0.45 + s / 100 + n / 1000)  # selffer
            if (split, n) != ("random1", 2):
                _write_run(workdir, split, "AnA", n, 0.35 + s / 100 + n / 1000)  # selffer
    _write_run(workdir, "random1", "AnA", 2, None, status="failed")


def test_mirror_images_are_pooled_each_against_its_own_base_and_missing_ones_named(tmp_path):
    _stored_grid(str(tmp_path))
    rows = results.gather(str(tmp_path))
    records = replicates.networks(rows, SPLITS)
    transfer = [r for r in records if r["treatment"] == "AnB" and r["n"] == 1]
    # AnB (A -> B) and BnA (B -> A) of both splits: four networks, each counted once.
    assert sorted(r["top1"] for r in transfer) == pytest.approx([0.301, 0.311, 0.401, 0.411])
    assert {(r["split"], r["direction"]) for r in transfer} == {
        (s, d) for s in SPLITS for d in ("AtoB", "BtoA")
    }
    for r in transfer:  # BnA is compared with baseA of its own split, AnB with baseB
        split_offset = SPLITS.index(r["split"]) / 100
        want = (0.60 if r["direction"] == "AtoB" else 0.50) + split_offset
        assert r["base_top1"] == pytest.approx(want)
    selffer = [r for r in records if r["treatment"] == "BnB"]
    assert {r["run"] for r in selffer} == {"B1B", "B2B", "A1A", "A2A"}
    expected = replicates.expected_networks(SPLITS, ("AtoB", "BtoA"), ("BnB", "AnB"), (1, 2))
    # The failed A2A of random1 is missing, not averaged in.
    assert replicates.missing(records, expected) == [("random1", "BtoA", "BnB", 2)]
    table = {(e["treatment"], e["n"]): e for e in replicates.summarize(records)}
    # Intervals are over partitions (splits): the two directions of a split count once.
    assert (table[("BnB", 2)]["estimate"].count, table[("BnB", 2)]["estimate"].replicates) == (2, 3)
    assert (table[("AnB", 1)]["estimate"].count, table[("AnB", 1)]["estimate"].replicates) == (2, 4)
    assert table[("AnB", 1)]["estimate"].mean == pytest.approx(0.356)
    # vs_base pairs each network with its own base: AnB -0.199 and BnA -0.199 in each split.
    assert table[("AnB", 1)]["vs_base"].mean == pytest.approx(-0.199)
    assert table[("AnB", 1)]["vs_base"].sd == pytest.approx(0.0, abs=1e-12)
    assert table[("base", 0)]["estimate"].count == 2


def test_the_report_tables_give_mean_sd_count_and_interval(tmp_path):
    _stored_grid(str(tmp_path))
    out = tmp_path / "out"
    written = results.write_report(str(tmp_path), str(out))
    names = {os.path.basename(p) for p in written}
    assert {
        "results.csv",
        "embedded_random_abcd1234_replicates.csv",
        "embedded_random_abcd1234_results.png",
        "embedded_random_abcd1234_findings.md",
        "embedded_random_abcd1234_forest.png",
    } <= names
    summary = open(out / "embedded_random_abcd1234_replicates.csv").read().splitlines()
    assert summary[0] == ",".join(replicates.SUMMARY_COLUMNS)
    row = next(line for line in summary if line.startswith("AnB,1,"))
    partitions, networks, mean, sd, low, high = row.split(",")[2:8]
    assert (partitions, networks, mean) == ("2", "4", "0.3560")
    half = 12.706 * float(sd) / math.sqrt(2)  # two partitions: t with 1 df
    assert float(low) == pytest.approx(0.356 - half, abs=1e-3)  # sd is rounded to 4 places
    assert float(high) == pytest.approx(0.356 + half, abs=1e-3)
    assert "mean_highest_top1" in open(out / "results.csv").readline()


def test_t_interval_matches_the_textbook():
    est = replicates.Estimate.of([1.0, 2.0, 3.0, 4.0])
    assert est.mean == 2.5 and est.sd == pytest.approx(1.2909944)
    assert est.high - est.mean == pytest.approx(3.182 * 1.2909944 / 2)
    assert replicates.t975(1) == 12.706 and replicates.t975(30) == 2.042
    assert replicates.t975(60) == pytest.approx(2.000, abs=1e-3)  # beyond the table
    single = replicates.Estimate.of([0.3])
    assert single.count == 1 and math.isnan(single.low)


@pytest.mark.parametrize(
    "values, sign, verdict",
    [
        ([0.05, 0.06, 0.055, 0.052], "positive", "shows"),  # a clear effect
        ([0.05, 0.06, 0.055, 0.052], "negative", "does not show"),  # clear, the other way
        ([0.01, -0.01, 0.02, -0.02], "positive", "inconclusive"),  # no effect
        ([0.10, -0.05, 0.08, -0.02], "positive", "inconclusive"),  # noisy: spans zero
        ([0.05], "positive", "inconclusive"),  # one replicate: no interval
        ([-0.001, 0.002, 0.0, 0.001], "not_below", "shows"),  # at base
        ([-0.004, -0.005, -0.003, -0.006], "not_below", "shows"),  # below, inside the margin
        ([0.03, -0.04, 0.05, -0.03], "not_below", "inconclusive"),  # wide: no evidence
        ([-0.05, -0.06, -0.055, -0.052], "not_below", "does not show"),  # below the margin
        ([0.05, 0.06, 0.055, 0.052], "either", "higher"),  # a control: no paper side
        ([0.050, 0.051], "positive", "inconclusive"),  # 2 partitions: no verdict, however close
    ],
)
def test_verdicts(values, sign, verdict):
    contrast = findings.Contrast("x", sign, 0.0, replicates.Estimate.of(values))
    assert contrast.verdict() == verdict


@pytest.mark.parametrize(
    "gains, verdict",
    [
        ([0.002, -0.004, 0.001, 0.0], "converged"),  # flat: the interval is under 1 point
        ([0.066, 0.048, 0.046, 0.055], "NOT converged"),  # still rising everywhere
        ([0.001, 0.048, 0.046, 0.011], "inconclusive"),  # one flat base is not enough
        ([0.001], "inconclusive (one pair"),  # one pair of runs: no interval
    ],
)
def test_convergence_is_judged_on_the_interval_of_the_mean_gain(gains, verdict):
    estimate, said = replicates.convergence_verdict(gains, threshold=0.01)
    assert said.startswith(verdict) and estimate.count == len(gains)


def _records(effects, noise, partitions=4, seed=0, base_top1=0.6, last_n=7):
    """Networks of `partitions` splits x 2 directions: top-1 = base + effect(n) + noise,
    for treatments given as {treatment: function of n} ("restart" is drawn at n = 8)."""
    rng = random.Random(seed)
    records = []
    for rep in range(2 * partitions):
        split, direction = f"random{rep // 2}", ("AtoB", "BtoA")[rep % 2]
        base = base_top1 + rng.gauss(0, noise)
        records.append(
            {
                "split": split,
                "direction": direction,
                "treatment": "base",
                "n": 0,
                "top1": base,
                "base_top1": base,
            }
        )
        for treatment, effect in effects.items():
            for n in (8,) if treatment == "restart" else range(1, last_n + 1):
                records.append(
                    {
                        "split": split,
                        "direction": direction,
                        "treatment": treatment,
                        "n": n,
                        "top1": base + effect(n) + rng.gauss(0, noise),
                        "base_top1": base,
                    }
                )
    return records


def test_findings_on_grids_whose_answer_is_known():
    paper = results.paper_results()
    paper_like = {
        "AnB": lambda n: -0.015 * n,
        "BnB": lambda n: -0.03 if 3 <= n <= 5 else 0.0,
        "BnB+": lambda n: 0.005,
        "AnB+": lambda n: 0.03,
        "RnB": lambda n: -0.05 * n,
    }
    found = {f.key: f for f in findings.evaluate(_records(paper_like, 0.003), paper, range(1, 8))}
    assert [found[k].verdict() for k in "abcdf"] == ["shows"] * 5
    assert found["e"].verdict() == "not run" and "natman" in found["e"].todo
    assert not found["e"].contrasts[0].estimate
    # A natman grid with its bases trained and no transfer yet is not run either.
    natman_bases = [
        {**r, "split": "natman"} for r in _records({}, 0.003) if r["split"] == "random0"
    ]
    started = {
        f.key: f
        for f in findings.evaluate(
            _records(paper_like, 0.003), paper, range(1, 8), natman_records=natman_bases
        )
    }
    assert started["e"].verdict() == "not run" and "natman" in started["e"].todo
    # The paper's own numbers go with each contrast: AnB(7) - AnB(1) = 0.5425 - 0.6282.
    assert found["a"].contrasts[0].paper == pytest.approx(0.5425 - 0.6282)

    only_frozen = {t: paper_like[t] for t in ("AnB", "BnB")}  # no fine-tuned networks
    found = {f.key: f for f in findings.evaluate(_records(only_frozen, 0.003), paper, range(1, 8))}
    assert found["a"].verdict() == "shows"
    assert found["c"].verdict() == "not run" and found["d"].verdict() == "not run"

    flat = {t: (lambda n: 0.0) for t in ("AnB", "BnB", "BnB+", "AnB+", "RnB")}
    found = {f.key: f for f in findings.evaluate(_records(flat, 0.01), paper, range(1, 8))}
    assert [found[k].verdict() for k in "abdf"] == ["inconclusive"] * 4

    noisy = {t: f for t, f in paper_like.items()}
    found = {f.key: f for f in findings.evaluate(_records(noisy, 0.2), paper, range(1, 8))}
    assert found["d"].verdict() == "inconclusive"  # 0.03 under noise 0.2 with 4 partitions
    text = findings.to_markdown(list(found.values()), "t")
    assert "| (a) frozen transfer" in text and "inconclusive" in text
    assert "Holm p" in text and "4 partitions, 8 replicates" in text
    # Each finding says what this regime can and cannot test, under its own letter.
    regime = text.split("## What this regime can and cannot test")[1]
    assert all(f"- ({key}) " in regime for key in found if key in findings.REGIME)


def test_findings_of_another_family_use_its_thirds_of_n():
    # A 6-block network (ResNet, ViT: n = 1..5): middle n = 2, 3, 4, high n = 5.
    assert findings.thirds(7) == ((1, 2), findings.MIDDLE, findings.HIGH)
    assert findings.thirds(5) == ((1,), (2, 3, 4), (5,))
    paper = results.paper_results()
    dip_at_its_middle = {
        "AnB": lambda n: -0.02 * n,
        "BnB": lambda n: -0.04 if 2 <= n <= 4 else 0.0,
    }
    records = _records(dip_at_its_middle, 0.003, last_n=5)
    found = {f.key: f for f in findings.evaluate(records, paper, range(1, 6), last_n=5)}
    assert found["b"].verdict() == "shows"
    assert found["b"].contrasts[0].label == "BnB - base, n = 2..4"
    # The paper's value is CaffeNet's at the same depth: n = 5 of 5 is its n = 7.
    assert found["a"].contrasts[0].paper == pytest.approx(0.5425 - 0.6282)
    # Read on CaffeNet's n, that dip at n = 2-4 is no dip at n = 3-5.
    caffenet = {f.key: f for f in findings.evaluate(records, paper, range(1, 6))}
    assert caffenet["b"].verdict() != "shows"


def test_two_directions_of_one_split_count_once():
    # Directions differ by +-0.02 around a split effect of 0.01, 0.02: averaged within
    # their split first, two partitions remain (t with 1 df), not four.
    first = {
        ("random0", "AtoB"): 0.03,
        ("random0", "BtoA"): -0.01,
        ("random1", "AtoB"): 0.04,
        ("random1", "BtoA"): 0.0,
        ("random1.s1", "AtoB"): 0.02,  # a seeded replicate of random1: same partition
    }
    second = dict.fromkeys(first, 0.0)
    est = replicates.paired(first, second)
    assert (est.count, est.replicates) == (2, 5)
    assert est.mean == pytest.approx((0.01 + 0.02) / 2)
    assert est.high - est.mean == pytest.approx(12.706 * statistics.stdev([0.01, 0.02]) / 2**0.5)
    relative = replicates.paired(first, second, scale=dict.fromkeys(first, 0.5))
    assert relative.mean == pytest.approx(0.03)  # (first - second) / base


def test_p_values_and_holm_against_hand_computed_cases():
    for df in (1, 2, 3, 7, 30):  # the table's 95% quantiles sit at p = 0.05
        assert stats.t_two_sided_p(replicates.t975(df), df) == pytest.approx(0.05, abs=2e-4)
    assert stats.t_two_sided_p(0.0, 3) == pytest.approx(1.0)
    assert stats.t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    # Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> 0.06.
    assert stats.holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, None, 0.02]
    )
    for df in (1, 3, 30):  # the quantile inverts the p-value
        assert stats.t_quantile(0.05, df) == pytest.approx(replicates.t975(df), abs=2e-3)
    # Bonferroni over 9 contrasts with 3 df: t at 0.05 / 9, wider than 3.182.
    assert stats.t_two_sided_p(stats.t_quantile(0.05 / 9, 3), 3) == pytest.approx(0.05 / 9)
    est = replicates.Estimate.of([0.01, 0.02, 0.03, 0.02])
    t = est.mean / (est.sd / 2)
    assert est.p_value() == pytest.approx(stats.t_two_sided_p(t, 3))


def test_verdicts_are_on_holm_adjusted_p_values():
    # Nine contrasts each at p ~ 0.02: each alone "shows", none after Holm's correction.
    paper = results.paper_results()
    weak = {
        "AnB": lambda n: -0.004 * n,
        "BnB": lambda n: -0.006 if 3 <= n <= 5 else 0.0,
        "BnB+": lambda n: 0.0,
        "AnB+": lambda n: 0.004,
        "RnB": lambda n: -0.05 * n,
    }
    found = findings.evaluate(_records(weak, 0.01, partitions=3, seed=3), paper, range(1, 8))
    contrasts = [c for f in found if not f.todo for c in f.contrasts]
    assert all(c.adjusted_p >= c.p_value() for c in contrasts)
    raw_shows = [c for c in contrasts if c.p_value() < 0.05]
    adjusted_shows = [c for c in contrasts if c.adjusted_p < 0.05]
    assert len(adjusted_shows) < len(raw_shows)


def test_fine_tuning_cannot_remove_a_dip_that_is_not_there():
    paper = results.paper_results()
    no_dip = {
        "AnB": lambda n: -0.015 * n,
        "BnB": lambda n: 0.0,
        "BnB+": lambda n: 0.0,
        "AnB+": lambda n: 0.0,
        "RnB": lambda n: -0.05 * n,
    }
    found = {f.key: f for f in findings.evaluate(_records(no_dip, 0.003), paper, range(1, 8))}
    assert found["b"].verdict() != "shows"
    assert found["c"].verdict() == "no dip shown to remove"


def test_relative_contrasts_compare_with_the_paper_on_its_own_scale():
    # At a base of 0.35 a 3% relative dip is -0.0105 points; the paper's -0.0186 points
    # at 0.625 is -3.0%: inside on the relative scale, outside in points.
    paper = results.paper_results()
    dip = {"BnB": lambda n: -0.0105 if 3 <= n <= 5 else 0.0}
    found = {
        f.key: f
        for f in findings.evaluate(_records(dip, 0.001, base_top1=0.35), paper, range(1, 8))
    }
    contrast = found["b"].contrasts[0]
    assert contrast.relative.mean == pytest.approx(-0.03, abs=0.003)
    assert contrast.paper_relative == pytest.approx(contrast.paper / 0.625, rel=0.02)
    assert contrast.paper_inside() is True
    assert not (contrast.estimate.low <= contrast.paper <= contrast.estimate.high)


def test_the_restart_control_separates_restarting_from_transfer():
    paper = results.paper_results()
    effects = {"AnB+": lambda n: 0.02, "BnB+": lambda n: 0.02, "restart": lambda n: 0.02}
    found = {f.key: f for f in findings.evaluate(_records(effects, 0.002), paper, range(1, 8))}
    beats, restart_gain, selffer = found["g"].contrasts
    assert restart_gain.verdict() == "higher"  # the restart alone lifts the base
    assert beats.verdict() == "inconclusive" and found["g"].verdict() == "inconclusive"
    assert selffer.estimate.mean == pytest.approx(0.0, abs=0.003)
    without = findings.evaluate(_records({"AnB+": lambda n: 0.02}, 0.002), paper, range(1, 8))
    assert "g" not in {f.key for f in without}  # no restart networks: no (g)


def test_rank_agreement_of_training_free_curves_with_the_grid():
    grid = {n: 0.6 - 0.02 * n for n in range(1, 8)}  # AnB falls with n
    ranks = {
        r["measure"]: r
        for r in findings.rank_agreement(
            {
                "same order": {n: -n for n in range(1, 8)},
                "reversed": {n: n for n in range(1, 8)},
                "unrelated": dict(zip(range(1, 8), [3, 0, 6, 2, 5, 1, 4])),
                "two layers only": {1: 1.0, 2: 0.5},
            },
            grid,
        )
    }
    assert ranks["same order"]["rho"] == pytest.approx(1.0)
    assert ranks["same order"]["p"] == pytest.approx(2 / 5040)
    assert ranks["same order"]["verdict"] == "ranks as the grid does"
    assert ranks["reversed"]["verdict"] == "ranks against the grid"
    assert ranks["unrelated"]["verdict"] == "inconclusive"
    assert "two layers only" not in ranks  # fewer than 3 common n: no rank correlation
    # Beyond depth: a measure that bends with the grid adds to depth; one that bends the
    # other way goes against it, however small its p.
    bent = {n: 0.6 - 0.02 * n + (0.05 if n in (3, 4) else 0.0) for n in range(1, 8)}
    beyond = {
        r["measure"]: r
        for r in findings.rank_agreement(
            {"with": dict(bent), "against": {n: -v for n, v in bent.items()}},
            {n: 0.6 - 0.02 * n + (0.05 if n in (3, 4) else 0.0) for n in range(1, 8)},
        )
    }
    assert beyond["with"]["partial"] > 0.99 and beyond["with"]["partial_verdict"] == "adds to depth"
    assert beyond["against"]["partial"] < -0.99
    assert beyond["against"]["partial_verdict"] == "against the grid beyond depth"


def test_findings_md_ranks_the_similarity_curves_against_the_pooled_grid(tmp_path):
    workdir = str(tmp_path)
    for split in SPLITS:
        _write_run(workdir, split, "baseA", 0, 0.5)
        _write_run(workdir, split, "baseB", 0, 0.6)
        for n in range(1, 5):
            _write_run(workdir, split, "AnB", n, 0.55 - 0.03 * n + SPLITS.index(split) / 100)
    table = os.path.join(workdir, "embedded", "random0", "abcd1234", "similarity")
    os.makedirs(table)
    with open(os.path.join(table, "similarity.csv"), "w") as f:
        f.write("measure,layer,n,value\n")
        for n in range(1, 8):
            f.write(f'"probe top-1 (baseA features, half B)",l{n},{n},{0.5 - 0.01 * n}\n')
            f.write(f'"CKA(A2B, baseA)",l{n},{n},{0.1 * n}\n')  # one network's: left out
    curves = results.similarity_curves(workdir, "embedded", "abcd1234", SPLITS)
    assert list(curves) == ["probe top-1 (baseA features, half B), random0"]
    written = results.write_report(workdir)
    text = open(next(p for p in written if p.endswith("findings.md"))).read()
    line = next(x for x in text.splitlines() if x.startswith("| probe top-1"))
    # n = 1..4 of the grid: both fall, rho = +1, exact p = 2/24.
    assert "| 1..4 | +1.00 | 0.083 | inconclusive |" in line
