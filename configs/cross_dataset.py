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
Measured: see MEASURED below.
"""

from kt_transfer import config_files

MEASURED = "not yet measured"


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
