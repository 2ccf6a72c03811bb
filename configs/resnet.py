"""A CPU-scale ResNet on the embedded dataset: the paper's experiment for a residual network.

    python -m kt_transfer.main --config=configs/resnet.py --mode=AnB --n=2

ResNet-10-like: a 7x7/2 stem with a max pool, one basic residual block per stage (4
stages, 16-128 channels at width 0.25), a classifier: 6 blocks, so n = 1..5. Same data,
solver and 2,000 steps as configs/embedded.py.

Measured (the 2-core development machine, 2026-12-02, nothing else running): the command
above took 3 min 33 s in all, baseA trained first (top-1 0.465; 90 s of its 2 min in
training steps, 45 ms a step) then A2B (top-1 0.428). CaffeNet's default baseA on the
same half: 0.3375. The grid's four bases: 0.428-0.465 (its results: docs/results.md).

The grid runs n = 1..5 on 2 partitions, both directions, with the selffers and
transfers (84 networks; add RnB to grid.treatments for the random-weights control):

    python -m kt_transfer.main --config=configs/resnet.py --mode=grid
"""

from kt_transfer import config_files


def get_config():
    config = config_files.load("embedded")
    config.model.network = "resnet"
    config.model.width = 0.25
    config.model.resnet.stages = (1, 1, 1, 1)
    config.model.resnet.block = "basic"
    config.model.resnet.stem = "imagenet"
    config.grid.ns = (1, 2, 3, 4, 5)
    config.grid.splits = ("random0", "random1")
    config.grid.treatments = ("BnB", "BnB+", "AnB", "AnB+")
    config.grid.restart_control = False
    return config
