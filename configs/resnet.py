"""A CPU-scale ResNet on the embedded dataset: the paper's experiment for a residual network.

    python -m kt_transfer.main --config=configs/resnet.py --mode=AnB --n=2

ResNet-10-like: a 7x7/2 stem with a max pool, one basic residual block per stage (4
stages, 16-128 channels at width 0.25), a classifier: 6 blocks, so n = 1..5. Same data,
solver and 2,000 steps as configs/embedded.py. Measured (2-core CPU, beside a running
grid): see MEASURED below.

The grid runs n = 1..5 on 2 partitions, both directions:

    python -m kt_transfer.main --config=configs/resnet.py --mode=grid
"""

from kt_transfer import config_files

MEASURED = "not yet measured"


def get_config():
    config = config_files.load("embedded")
    config.model.network = "resnet"
    config.model.width = 0.25
    config.model.resnet.stages = (1, 1, 1, 1)
    config.model.resnet.block = "basic"
    config.model.resnet.stem = "imagenet"
    config.grid.ns = (1, 2, 3, 4, 5)
    config.grid.splits = ("random0", "random1")
    config.grid.restart_control = False
    return config
