import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from kt_transfer.data import splits


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_paper_random_halves_match_reference_md5(seed):
    split = splits.make_split(f"random{seed}", 1000)
    assert len(split.A) == len(split.B) == 500
    assert set(split.A).isdisjoint(split.B)
    assert set(split.A) | set(split.B) == set(range(1000))
    for half in "AB":
        assert splits.index_md5(split.half(half)) == splits.PAPER_MD5[(f"random{seed}", half)]


def test_random_split_for_other_class_counts_is_seeded_and_leaves_numpy_alone():
    import numpy as np

    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = splits.make_split("random5", 100)
    assert np.random.rand() == expected_next
    assert a == splits.make_split("random5", 100)
    assert a != splits.make_split("random6", 100)
    assert len(a.A) == 50 and len(a.B) == 50 and not set(a.A) & set(a.B)


def test_natman_split_is_the_papers():
    split = splits.make_split("natman", 1000)
    assert (len(split.A), len(split.B)) == (551, 449)
    # The md5s of the paper's index lists (../shared/reference/README.md), not the table
    # the split is built from.
    assert splits.index_md5(split.A) == "00bec6495ad8da1b6d054b8e101232b2"
    assert splits.index_md5(split.B) == "2eb1773cf4ea33b6f3af9e9a396a7a41"


def test_natman_without_groups_and_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="random0"):
        splits.make_split("natman", 100)
    with pytest.raises(ValueError, match="random<seed>"):
        splits.make_split("halves", 1000)


@pytest.mark.slow
def test_split_info_tool_prints_paper_halves():
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "split_info.py"),
            "--split=random0",
            "--dataset=imagenet2012",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info = json.loads(out)
    assert splits.index_md5(info["A"]) == splits.PAPER_MD5[("random0", "A")]
    assert splits.index_md5(info["B"]) == splits.PAPER_MD5[("random0", "B")]
    assert info["A_names"][0] == "n01440764"


def test_the_whole_dataset_split_keeps_every_class_in_both_halves():
    split = splits.make_split("all", 12)
    assert split.name == "all" and split.A == split.B == tuple(range(12))


def test_grid_cells_on_the_whole_split_are_its_base_and_the_random_control():
    from kt_transfer import config_files
    from kt_transfer.runs import grid

    config = config_files.load("tiny").grid
    config.ns, config.directions = (1, 2), ("AtoB", "BtoA")
    names = [c.name for c in grid.cells(config, ("random0", "all"))]
    assert [n for n in names if n.startswith("all/")] == ["all/baseB", "all/R1B", "all/R2B"]
    assert "random0/R1A" in names and "random0/B2A+" in names


def test_a_seeded_replicate_has_its_splits_halves_and_its_own_seed():
    natman = splits.make_split("natman", 1000)
    seeded = splits.make_split("natman.s2", 1000)
    assert (seeded.name, seeded.A, seeded.B, seeded.seed_offset) == (
        "natman.s2",
        natman.A,
        natman.B,
        2,
    )
    assert splits.make_split("random0.s1", 10).A == splits.make_split("random0", 10).A
    assert splits.base_name("all.s3") == "all" and splits.parse_name("random1") == ("random1", 0)
    with pytest.raises(ValueError, match="k >= 1"):
        splits.make_split("natman.s0", 1000)
    from kt_transfer import config_files
    from kt_transfer.data import pipeline
    from kt_transfer.runs import grid

    config = config_files.load("tiny")
    config.train.seed = 5
    dataset = type("Dataset", (), {"split": seeded})()
    assert pipeline.run_seed(config, dataset) == 7
    names = [c.name for c in grid.cells(config.grid, ("all.s1",))]
    assert names[0] == "all.s1/baseB" and all(n.startswith("all.s1/R") for n in names[1:])
