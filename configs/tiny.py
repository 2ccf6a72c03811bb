"""A seconds-long smoke configuration (tests, trying the CLI):

    python -m kt_transfer.main --config=configs/tiny.py --mode=AnB+ --n=2

12 embedded classes, 10 images each, the 8-layer network at width 1/16 on 67x67 crops,
20 steps. Accuracy is meaningless; only the plumbing is exercised.
"""

from kt_transfer import config_files


def get_config():
    config = config_files.load("embedded")
    config.dataset.resize_size = 72
    config.dataset.embedded.num_classes = 12
    config.dataset.embedded.train_per_class = 10
    config.dataset.embedded.val_per_class = 4
    config.dataset.embedded.image_size = 72
    config.source_dataset.embedded.update(config.dataset.embedded.to_dict())  # if named
    config.model.input_size = 67
    config.model.width = 0.0625
    config.train.batch_size = 8
    config.train.lr_step_size = 10
    config.train.total_steps = 4
    config.train.steps_per_epoch = 2
    config.train.backup_every_steps = 1
    config.train.log_every_steps = 2
    config.grid.splits = ("random0",)  # one replicate; tests widen it where they need to
    config.grid.directions = ("AtoB",)
    config.grid.restart_control = False
    config.grid.cpus_per_cell = 2  # one local worker on the 2-core machines
    config.verbose = 2
    return config
