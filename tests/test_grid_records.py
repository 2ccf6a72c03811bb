"""A grid carried to another workdir by its records alone (tools/grid_records.py): the
finished runs are not trained again, and a base without its weights is trained again to
the same weights before a transfer copies it."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

from kt_transfer.data import sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment

TOOL = os.path.join(REPO, "tools", "grid_records.py")


@pytest.mark.slow
def test_restored_records_resume_and_a_base_is_retrained_to_the_same_weights(tiny_config, tmp_path):
    dataset = sources.resolve_dataset(tiny_config, log=lambda *_: None)
    first = []
    experiment.run_treatment(tiny_config, dataset, transfer.parse_treatment("AnB", 1), first.append)
    records, moved = tmp_path / "records", tmp_path / "moved"

    def tool(*args):
        return subprocess.run(
            [sys.executable, TOOL, *args], capture_output=True, text=True, env=subprocess_env()
        )

    saved = tool("save", f"--workdir={tiny_config.workdir}", f"--to={records}")
    assert "saved the records of 2 runs" in saved.stdout, saved.stderr
    assert not list(records.rglob("model.keras"))  # records only, no weights
    restored = tool("restore", f"--workdir={moved}", f"--to={records}")
    assert "restored the records of 2 runs" in restored.stdout, restored.stderr

    tiny_config.workdir = str(moved)
    again = []
    metrics, _ = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("AnB", 1), again.append
    )
    assert any("finished earlier" in line for line in again)  # A1B: not trained again
    later = []
    experiment.run_treatment(tiny_config, dataset, transfer.parse_treatment("AnB", 2), later.append)
    assert any("is gone: training it again" in line for line in later)

    def fingerprint(lines):
        return next(line.split()[-1] for line in lines if line.startswith("baseA: weights"))

    assert fingerprint(later) == fingerprint(first)  # the same base as the record's
    assert tool("restore", f"--workdir={moved}", "--to=/nonexistent").stderr.startswith("error:")


@pytest.mark.slow
def test_a_grid_keeps_each_finished_cell_s_record_and_resumes_from_them(tiny_config, tmp_path):
    """--config.grid.records_dir: each cell's record is copied there as it finishes; a
    grid on an empty workdir (another machine) restores them and trains nothing again."""
    from kt_transfer.runs import grid

    config = tiny_config
    config.grid.ns, config.grid.treatments = (1,), ("AnB",)
    config.grid.records_dir = str(tmp_path / "records")
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    first = []
    grid.run_grid(config, dataset, log=first.append, poll_s=0.2)
    kept = sorted(p.parent.name for p in (tmp_path / "records").rglob("metrics.json"))
    assert kept == ["A1B", "baseA", "baseB"]
    assert not list((tmp_path / "records").rglob("model.keras"))
    foreign = tmp_path / "records" / "folder" / "random0" / "0000" / "baseA"
    foreign.mkdir(parents=True)  # another dataset's grid shares the records directory
    (foreign / "metrics.json").write_text("{}")
    config.workdir = str(tmp_path / "another_machine")
    again = []
    grid.run_grid(config, dataset, log=again.append, poll_s=0.2)
    assert "grid: restored 3 record(s) of finished runs from" in "\n".join(again)
    assert "grid: 3 cells, 3 finished earlier" in "\n".join(again)
    assert not [line for line in again if line.startswith("grid: training")]
    assert not (tmp_path / "another_machine" / "folder").exists()  # only this dataset's
