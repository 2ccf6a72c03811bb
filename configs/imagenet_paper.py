"""The paper's full ImageNet protocol (Yosinski et al. 2014, Caffe's CaffeNet solver).

    python -m kt_transfer.main --config=configs/imagenet_paper.py \
        --config.dataset.data_dir=/data/imagenet --mode=AnB --n=4

ILSVRC-2012 in an ImageNet-style folder (train/<wnid>/, val/<wnid>/), 227x227 crops of
256x256 images, batch 256, lr 0.01 x0.1 every 100k iterations, 450k iterations.
Expected (paper_results.json): base halves ~0.625 top-1, A4B ~0.60, A4B+ ~0.65.
"""

from kt_transfer import config_files


def get_config():
    config = config_files.load("embedded")
    config.dataset.name = "folder"
    config.dataset.data_dir = ""  # required: --config.dataset.data_dir=/path/to/imagenet
    config.dataset.resize_size = 256
    config.dataset.mean = "base_image"  # the base half's per-pixel 256x256 mean image
    config.dataset.mean_rgb = (123.68, 116.78, 103.94)  # (used with mean="fixed")
    config.dataset.scale = 1.0
    config.model.input_size = 227
    config.model.width = 1.0
    config.model.init = "paper"
    config.model.fc8_outputs = "all"  # 1000 outputs in every half network
    config.train.batch_size = 256
    config.train.base_lr = 0.01
    config.train.lr_step_size = 100_000
    config.train.total_steps = 450_000
    config.train.steps_per_epoch = 5_000  # the paper validated far more rarely; cheap here
    config.train.backup_every_steps = 1_000
    config.train.warmup_steps = 0  # the paper's solver has none
    # The paper's Figure 2: its four random splits, both directions.
    config.grid.splits = ("random0", "random1", "random2", "random3")
    config.grid.directions = ("AtoB", "BtoA")
    return config
