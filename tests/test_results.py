"""Tables and the paper's figure from a workdir of (test-written) run records."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from kt_transfer.analysis import results


def _write_run(workdir, split, run, mode, n, top1, status="finished"):
    run_dir = os.path.join(workdir, "embedded", split, "abcd1234", run)
    os.makedirs(run_dir)
    metrics = {
        "mode": mode,
        "n": n,
        "status": status,
        "num_classes": 50,
        "seconds": 60.0 + 10 * n + 0.4,
    }
    if status == "finished":
        metrics.update(top1=top1, top5=min(1.0, top1 * 2))
    else:
        metrics.update(reason="loss became NaN or infinite at step 3", steps=3)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)


@pytest.mark.slow
def test_plot_results_writes_tables_and_figures(tmp_path):
    workdir = str(tmp_path)
    _write_run(workdir, "random0", "baseA", "baseA", 0, 0.30)
    _write_run(workdir, "random0", "baseB", "baseB", 0, 0.32)
    for n in (1, 2):
        _write_run(workdir, "random0", f"A{n}B", "AnB", n, 0.30 - 0.02 * n)
        _write_run(workdir, "random0", f"A{n}B+", "AnB+", n, 0.33)
        _write_run(workdir, "random0", f"B{n}B", "BnB", n, 0.31)
        _write_run(workdir, "random0", f"R{n}B", "RnB", n, 0.2 - 0.09 * n)  # R2B: 0.02
    _write_run(workdir, "random0", "B3B+", "BnB+", 3, None, status="failed")
    _write_run(workdir, "natman", "baseB", "baseB", 0, 0.4)
    _write_run(workdir, "natman", "A1B", "AnB", 1, 0.35)
    _write_run(workdir, "all", "baseB", "baseB", 0, 0.5)  # the whole-dataset base
    _write_run(workdir, "all", "R1B", "RnB", 1, 0.2)  # the paper's random-weights control
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "plot_results.py"),
            f"--workdir={workdir}",
            "--paper",
            f"--out={tmp_path / 'report'}",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = tmp_path / "report"  # created by the tool
    rows = list(csv.DictReader(io.StringIO(open(report / "results.csv").read())))
    assert len(rows) == 15
    a2b = next(r for r in rows if r["run"] == "A2B" and r["split"] == "random0")
    assert (a2b["mode"], a2b["n"], a2b["top1"], a2b["base_top1"]) == (
        "AnB",
        "2",
        "0.2600",
        "0.3200",
    )
    assert a2b["train_seconds"] == "80"
    assert next(r for r in rows if r["run"] == "B3B+")["status"] == "failed"
    notes = {r["run"]: r["note"] for r in rows if r["split"] == "random0"}
    assert notes["R2B"] == "at chance: did not learn" and notes["R1B"] == ""
    assert "| AnB+ | 1 | finished | 0.3300" in open(report / "results.md").read()
    for family in ("random", "natman"):  # the random splits pooled; natman apart
        with open(report / f"embedded_{family}_abcd1234_results.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not (report / "embedded_natman_abcd1234_findings.md").exists()  # random only
    findings_md = open(report / "embedded_random_abcd1234_findings.md").read()
    assert "(e) dissimilar halves" in findings_md
    assert "all-class control, unpaired" in findings_md  # (f) uses the split=all runs
    with open(report / "embedded_abcd1234_figure4.png", "rb") as f:  # the paper's Figure 4
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    all_row = next(r for r in rows if r["split"] == "all" and r["run"] == "R1B")
    assert all_row["base_top1"] == "0.5000"  # compared with the whole-dataset base


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_the_report_s_files_get_the_modes_a_plain_write_gives(tmp_path, umask):
    """Figures included: a shared workdir's report is readable by the other accounts."""
    workdir = str(tmp_path)
    for split in ("random0", "natman"):
        _write_run(workdir, split, "baseA", "baseA", 0, 0.30)
        _write_run(workdir, split, "baseB", "baseB", 0, 0.32)
        _write_run(workdir, split, "A1B", "AnB", 1, 0.28)
    old = os.umask(umask)
    try:
        written = results.write_report(workdir, str(tmp_path / "report"))
    finally:
        os.umask(old)
    assert any(p.endswith(".png") for p in written) and any(p.endswith(".md") for p in written)
    for path in written:
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~umask), path


def test_runs_of_two_splits_with_the_same_settings_keep_their_own_base(tmp_path):
    """The experiment id hashes the settings, not the split: random0 and random1 runs of
    the same settings share it, and each must still be compared with its own base."""
    workdir = str(tmp_path)
    for split, base_top1, transfer_top1 in (("random0", 0.40, 0.35), ("random1", 0.60, 0.55)):
        _write_run(workdir, split, "baseB", "baseB", 0, base_top1)
        _write_run(workdir, split, "A3B", "AnB", 3, transfer_top1)
    rows = {(r["split"], r["run"]): r for r in results.gather(workdir)}
    assert rows[("random0", "A3B")]["base_top1"] == 0.40
    assert rows[("random1", "A3B")]["base_top1"] == 0.60
    assert rows[("random1", "baseB")]["base_top1"] == 0.60
    written = results.write_report(workdir, str(tmp_path / "out"))
    table = list(csv.DictReader(io.StringIO(open(written[0]).read())))
    bases = {(r["split"], r["run"]): r["base_top1"] for r in table}
    assert bases[("random0", "A3B")] == "0.4000" and bases[("random1", "A3B")] == "0.6000"


def test_a_one_direction_report_takes_the_targets_base_and_counts_seeds(tmp_path):
    """Between two datasets only A -> B runs; baseA (the source's) is trained too, and
    must not be pooled into the reference, which is the target's base alone."""
    workdir = str(tmp_path)
    for split, target_base in (("cross", 0.15), ("cross.s1", 0.17)):
        _write_run(workdir, split, "baseA", "baseA", 0, 0.34)  # the source's base
        _write_run(workdir, split, "baseB", "baseB", 0, target_base)
        for n in (1, 2):
            _write_run(workdir, split, f"A{n}B", "AnB", n, target_base - 0.01 * n)
    results.write_report(workdir, str(tmp_path / "out"))
    (table,) = [
        f for f in os.listdir(tmp_path / "out") if f.endswith("cross_abcd1234_replicates.csv")
    ]
    rows = list(csv.DictReader(io.StringIO(open(tmp_path / "out" / table).read())))
    base = next(r for r in rows if r["treatment"] == "base")
    assert float(base["mean"]) == pytest.approx(0.16, abs=1e-4)
    findings_md = open(tmp_path / "out" / table.replace("replicates.csv", "findings.md")).read()
    assert "(2 seeds)" in findings_md and "partitions)" not in findings_md
    assert "Intervals are over seeds" in findings_md


def test_empty_workdir_says_what_to_check(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="--workdir"):
        results.write_report(str(tmp_path))


def test_paper_numbers_are_packaged():
    published = results.paper_results()
    assert published["random_halves"]["AnB (transfer, frozen)"]["7"]["mean"] == 0.5425
    assert "mean of its 10 highest" in published["source"]


def test_seeded_replicates_of_natman_and_all_are_pooled_into_findings_e_and_f(tmp_path):
    """natman, natman.s1, natman.s2 (and all, all.s1, all.s2) are replicates of one split:
    each (split, direction) one replicate of (e) and each all-class seed one of (f), with
    the control averaged over n within a seed, so the findings get intervals."""
    workdir = str(tmp_path)
    jitter = iter([0.000, 0.004, -0.003, 0.002, -0.001, 0.003, -0.004, 0.001] * 10)
    for split in ("random0", "random1", "random2"):  # transfer between random halves: 0.9
        _write_run(workdir, split, "baseA", "baseA", 0, 0.40)
        _write_run(workdir, split, "baseB", "baseB", 0, 0.40)
        for n in (6, 7):
            _write_run(workdir, split, f"A{n}B", "AnB", n, 0.36 + next(jitter))
            _write_run(workdir, split, f"B{n}A", "BnA", n, 0.36 + next(jitter))
    for split in ("natman", "natman.s1", "natman.s2"):  # dissimilar halves: 0.6 of the base
        _write_run(workdir, split, "baseA", "baseA", 0, 0.40)
        _write_run(workdir, split, "baseB", "baseB", 0, 0.40)
        for n in (6, 7):
            _write_run(workdir, split, f"A{n}B", "AnB", n, 0.24 + next(jitter))
            _write_run(workdir, split, f"B{n}A", "BnA", n, 0.24 + next(jitter))
    for split in ("all", "all.s1", "all.s2"):  # random weights: 0.1 of the whole base
        _write_run(workdir, split, "baseB", "baseB", 0, 0.50)
        for n in (6, 7):
            _write_run(workdir, split, f"R{n}B", "RnB", n, 0.05 + next(jitter))
    written = results.write_report(workdir, str(tmp_path / "out"))
    names = {os.path.basename(p) for p in written}
    assert "embedded_natman_abcd1234_results.png" in names  # one family, not three
    assert not any("natman.s1" in name or "all.s2" in name for name in names)
    findings_md = open(tmp_path / "out" / "embedded_random_abcd1234_findings.md").read()
    line_e = next(
        line for line in findings_md.splitlines() if "(natman)" in line and "unpaired" in line
    )
    # natman's 3 seeds are training-noise replicates of its one partition; the random
    # side is 3 partitions (their directions averaged first).
    assert "3 seeds of the one natman partition, training noise only; 3 random partitions" in line_e
    assert "(3 partitions, 12 replicates)" in line_e and line_e.rstrip().endswith("| shows |")
    assert abs(_estimate(line_e) - (0.6 - 0.9)) < 0.01
    line_f = next(line for line in findings_md.splitlines() if "all-class control" in line)
    assert "(3 partitions, 9 replicates)" in line_f and line_f.rstrip().endswith("| shows |")
    assert "unpaired: 3 seeds, training noise only; 3 random partitions" in line_f
    assert abs(_estimate(line_f) - (0.1 - 0.9)) < 0.01


def _estimate(findings_line):
    """The mean of a findings.md line's "this grid" column: "-0.7996 [...] (3 ...)"."""
    return float(findings_line.split("|")[4].split()[0])


def test_one_all_class_network_per_n_gives_no_interval_for_f(tmp_path):
    """Without seeds the all-class control is one replicate: its n values are not
    replicates of each other, so (f) states the difference without an interval."""
    workdir = str(tmp_path)
    for split in ("random0", "random1"):
        _write_run(workdir, split, "baseB", "baseB", 0, 0.40)
        for n in (4, 7):
            _write_run(workdir, split, f"A{n}B", "AnB", n, 0.36 - 0.01 * n)
    _write_run(workdir, "all", "baseB", "baseB", 0, 0.50)
    for n in (4, 7):
        _write_run(workdir, "all", f"R{n}B", "RnB", n, 0.30 - 0.03 * n)
    results.write_report(workdir, str(tmp_path / "out"))
    findings_md = open(tmp_path / "out" / "embedded_random_abcd1234_findings.md").read()
    line_f = next(line for line in findings_md.splitlines() if "all-class control" in line)
    assert "(1 partition, 3 replicates: no interval)" in line_f and "| inconclusive |" in line_f
