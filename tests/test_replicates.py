"""Replicates pooled the paper's way, intervals, and the findings' verdicts, on stored run
records and constructed inputs whose answers are known."""

import json
import math
import os
import random

import pytest

from kt_transfer.analysis import findings, replicates, results

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
    assert table[("BnB", 2)]["estimate"].count == 3
    assert table[("AnB", 1)]["estimate"].count == 4
    assert table[("AnB", 1)]["estimate"].mean == pytest.approx(0.356)
    # vs_base pairs each network with its own base: AnB -0.199 and BnA -0.199 in each split.
    assert table[("AnB", 1)]["vs_base"].mean == pytest.approx(-0.199)
    assert table[("AnB", 1)]["vs_base"].sd == pytest.approx(0.0, abs=1e-12)
    assert table[("base", 0)]["estimate"].count == 4


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
    } <= names
    summary = open(out / "embedded_random_abcd1234_replicates.csv").read().splitlines()
    assert summary[0] == ",".join(replicates.SUMMARY_COLUMNS)
    row = next(line for line in summary if line.startswith("AnB,1,"))
    count, mean, sd, low, high = row.split(",")[2:7]
    assert (count, mean) == ("4", "0.3560")
    half = 3.182 * float(sd) / 2
    assert float(low) == pytest.approx(0.356 - half, abs=1e-4)
    assert float(high) == pytest.approx(0.356 + half, abs=1e-4)
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
        ([-0.05, -0.06, -0.055, -0.052], "not_below", "does not show"),  # below base
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


def _records(effects, noise, replicates_n=4, seed=0):
    """Networks of `replicates_n` (split, direction) replicates: top-1 = base + effect(n)
    + noise, for treatments given as {treatment: function of n}."""
    rng = random.Random(seed)
    records = []
    for rep in range(replicates_n):
        split, direction = f"random{rep // 2}", ("AtoB", "BtoA")[rep % 2]
        base = 0.6 + rng.gauss(0, noise)
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
            for n in range(1, 8):
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
    assert found["d"].verdict() == "inconclusive"  # 0.03 under noise 0.2 with 4 replicates
    text = findings.to_markdown(list(found.values()), "t")
    assert "| (a) frozen transfer" in text and "inconclusive" in text


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
