import json
import os
import subprocess
import sys

import pytest

from kt_transfer import splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_split_info_tool_prints_paper_halves():
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "split_info.py"),
                          "--split=random0", "--dataset=imagenet2012"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert splits.index_md5(info["A"]) == splits.PAPER_MD5[("random0", "A")]
    assert splits.index_md5(info["B"]) == splits.PAPER_MD5[("random0", "B")]
    assert info["A_names"][0] == "n01440764"
