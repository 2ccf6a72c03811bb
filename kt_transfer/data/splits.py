"""Class splits into halves A and B: pure Python/NumPy, no TensorFlow.

`random0`..`random3` reproduce the paper's halves exactly (NumPy's legacy generator seeded
with a one-element list); any `random<seed>` works for any class count by the same rule.
`natman` is the paper's man-made (A) / natural (B) split, given per class as a group list.
`<split>.s<k>` (natman.s1, all.s2, random0.s1) is a seeded replicate of a split: the
same classes, networks initialized and data shuffled with train.seed + k. A split with
fixed halves (natman, all) has no other replicates.
"""

import dataclasses
import hashlib
import importlib.resources
import re

import numpy as np

# md5 of "%d\n"-joined index lists of the paper's halves (../shared/reference/README.md).
PAPER_MD5 = {
    ("random0", "A"): "f9ea46e23059e0a1ffb7c9981b309260",
    ("random0", "B"): "202f14a61391a10ae091958e17b5d426",
    ("random1", "A"): "ce0040494a059c27bf5aeaa1200401ab",
    ("random1", "B"): "785b0d8e2625af144f2d2fb1de834725",
    ("random2", "A"): "ba71d7d96efac990aeed184af07528e3",
    ("random2", "B"): "3fe4b6502edc75aa79ead323030b9ac6",
    ("random3", "A"): "a6afa0908babbb9b5d866bc5d17a5f79",
    ("random3", "B"): "7c1c0ca62edc9985a0a6953e3eb8ae2b",
}
MAN_MADE, NATURAL = "man-made", "natural"


@dataclasses.dataclass(frozen=True)
class Split:
    """Two disjoint, sorted lists of original class indices.

    Within a half, the new label of a class is its position in the sorted list.
    """

    name: str
    A: tuple
    B: tuple
    seed_offset: int = 0  # k of a seeded replicate <split>.s<k>: runs use train.seed + k

    def half(self, which):
        if which not in ("A", "B"):
            raise ValueError(f"half must be 'A' or 'B', got {which!r}")
        return self.A if which == "A" else self.B


def swap_halves(mode):
    """AnB -> BnA, BnB+ -> AnA+, RnB -> RnA: the same treatment in the other direction."""
    return mode.translate(str.maketrans("AB", "BA"))


def index_md5(indices):
    """md5 of the index list written as "%d\\n" per class (the reference's checksum)."""
    return hashlib.md5("".join(f"{i}\n" for i in indices).encode()).hexdigest()


def random_split(num_classes, seed):
    """The paper's rule: A = sorted(choice(num_classes, num_classes // 2)) under seed([s])."""
    if num_classes < 2:
        raise ValueError(f"a split needs at least 2 classes, got {num_classes}")
    state = np.random.get_state()
    try:
        np.random.seed([seed])  # a list, not an int: an int gives other halves
        half_a = np.random.choice(np.arange(num_classes), num_classes // 2, replace=False)
    finally:
        np.random.set_state(state)  # leave the caller's global generator untouched
    half_a = sorted(int(i) for i in half_a)
    half_b = sorted(set(range(num_classes)) - set(half_a))
    return Split(f"random{seed}", tuple(half_a), tuple(half_b))


def group_split(groups, name="natman"):
    """A = classes in the man-made group, B = natural ones (the paper's natman order)."""
    unknown = sorted(set(groups) - {MAN_MADE, NATURAL})
    if unknown:
        raise ValueError(f"unknown class groups {unknown}; expected {MAN_MADE!r}/{NATURAL!r}")
    half_a = tuple(i for i, g in enumerate(groups) if g == MAN_MADE)
    half_b = tuple(i for i, g in enumerate(groups) if g == NATURAL)
    return Split(name, half_a, half_b)


def imagenet_natman_groups():
    """Group of each of ImageNet's 1000 classes, from the paper's split file."""
    text = (
        importlib.resources.files("kt_transfer")
        .joinpath("resources/imagenet_natman_split.tsv")
        .read_text()
    )
    rows = [line.split("\t") for line in text.strip().splitlines()[1:]]
    return [row[2] for row in sorted(rows, key=lambda r: int(r[0]))]


# The two directions of transfer between a split's halves: A->B copies from baseA and
# trains on B (AnB, BnB, ...); B->A mirrors it.
DIRECTIONS = ("AtoB", "BtoA")
WHOLE = "all"  # the split that keeps every class: the paper's netbase and nolearn runs


def whole_split(num_classes):
    """Every class in both "halves": on it, baseB is the whole-dataset network (the
    paper's `netbase`) and RnB the random-weights control on all classes (`nolearn`)."""
    every = tuple(range(num_classes))
    return Split(WHOLE, every, every)


# Between two datasets (config.source_dataset): half A = every class of the source dataset,
# half B = every class of the target; the halves of one dataset are the special case.
CROSS = "cross"


def cross_split(name, num_source, num_target):
    """The source/target split of a joined dataset: the source's classes come first.

    Args:
      name: `cross`, or `cross.s<k>` for a seeded replicate.
      num_source, num_target: the classes of each dataset.
    """
    own_name, offset = parse_name(name)
    if own_name != CROSS:
        raise ValueError(
            f"split {name!r}: between two datasets (--config.source_dataset.name) the split "
            f"is {CROSS!r} (half A: the source's classes, half B: the target's), optionally "
            f"with .s<k> for a seeded replicate; set --config.split={CROSS}"
        )
    source = tuple(range(num_source))
    target = tuple(range(num_source, num_source + num_target))
    return Split(name, source, target, seed_offset=offset)


_SEEDED = re.compile(r"(.+)\.s(\d+)")


def parse_name(name):
    """(the split's own name, seed offset): "natman.s2" -> ("natman", 2); "natman" -> 0."""
    match = _SEEDED.fullmatch(name)
    if not match:
        return name, 0
    offset = int(match.group(2))
    if offset < 1:
        raise ValueError(
            f"split {name!r}: a seeded replicate is <split>.s<k> with k >= 1 "
            f"(k = 0 is {match.group(1)!r} itself)"
        )
    return match.group(1), offset


def base_name(name):
    """The split a (seeded replicate's) name stands for: "all.s1" -> "all"."""
    return parse_name(name)[0]


def make_split(name, num_classes, groups=None):
    """Resolves a split name for a dataset.

    Args:
      name: `random<seed>`, `natman`, or `all` (every class; see whole_split), each
        optionally with `.s<k>`: a seeded replicate (same halves, train.seed + k).
      num_classes: classes in the dataset.
      groups: per-class man-made/natural labels; needed for `natman` unless the dataset
        has ImageNet's 1000 classes.

    Returns:
      A Split.
    """
    own_name, offset = parse_name(name)
    if offset:
        split = make_split(own_name, num_classes, groups)
        return dataclasses.replace(split, name=name, seed_offset=offset)
    if name == WHOLE:
        return whole_split(num_classes)
    if name == CROSS:
        raise ValueError(
            f"split {CROSS!r} is the source/target split of two datasets: name the source "
            "with --config.source_dataset.name (embedded, folder or tfds), or use "
            "--config.split=random0"
        )
    match = re.fullmatch(r"random(\d+)", name)
    if match:
        return random_split(num_classes, int(match.group(1)))
    if name == "natman":
        if groups is None and num_classes == 1000:
            groups = imagenet_natman_groups()
        if groups is None:
            raise ValueError(
                f"split 'natman' needs man-made/natural groups for each of the {num_classes} "
                "classes; this dataset has none. Use --config.split=random0 (or another seed)."
            )
        if len(groups) != num_classes:
            raise ValueError(f"{len(groups)} class groups for {num_classes} classes")
        return group_split(groups)
    raise ValueError(
        f"unknown split {name!r}: use --config.split=random<seed> (e.g. random0), natman "
        "or all, optionally with .s<k> for a seeded replicate (natman.s1)"
    )
