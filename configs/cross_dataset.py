"""Between two datasets: bases on a source dataset, transfers to another (a smaller) one.

    python -m kt_transfer.main --config=configs/cross_dataset.py --mode=AnB+ --n=3
    python -m kt_transfer.main --config=configs/cross_dataset.py --mode=grid

The source is the embedded generator's first 50 classes (seed 0, 30 training images a
class); the target is another dataset: its other 50 classes, drawn from seed 1, with 10
training images a class. Half A of the split `cross` is the source, half B the target, so
baseA is the source's network, baseB the target's own (the findings' reference), AnB and
AnB+ transfer source -> target and BnB/BnB+ are the target's selffer controls. One pair
of datasets is one partition: the grid's replicates are seeds (cross, cross.s1), and its
intervals measure training noise only (findings.md says so).

Your own pair: --config.source_dataset.name=folder --config.source_dataset.data_dir=...
and --config.dataset.name=folder --config.dataset.data_dir=... (or tfds, with tfds_name).
Measured (the 2-core development machine, 2026-12-02, beside a running grid), one seed
each: the first command took 3 min 27 s with both datasets generated (baseA trained
first: 0.3395 top-1 on the source's 50 classes; A3B+: 0.159 on the target's); baseB
(the target's own base, 10 images a class) 0.1445 in 82 s, B3B+ 0.149 in 85 s. A3B+ is
1.5 points above B3B+ and 1.5 above baseB, about the 0.8-point binomial error of one
evaluation on 2,000 images and under a base's 0.9-point rerun spread: one seed shows
nothing. The grid (60 networks, 33 min): docs/results.md, every finding inconclusive
(AnB+ - BnB+ over n = 1..7: +0.1 points [-2.4, +2.5] over 2 seeds).
"""

from kt_transfer import config_files


def get_config():
    config = config_files.load("embedded")
    config.source_dataset.name = "embedded"
    config.source_dataset.embedded.update(num_classes=50, first_class=0, seed=0)
    config.dataset.embedded.update(num_classes=50, first_class=50, seed=1, train_per_class=10)
    config.split = "cross"
    config.grid.splits = ("cross", "cross.s1")
    config.grid.directions = ("AtoB",)  # source -> target; BtoA would run target -> source
    config.grid.treatments = ("BnB", "BnB+", "AnB", "AnB+")
    config.grid.restart_control = False
    return config
