"""ResNet-50 on ImageNet's halves: the paper's experiment at paper scale for a ResNet.

    python -m kt_transfer.main --config=configs/imagenet_resnet50.py \
        --config.dataset.data_dir=/data/imagenet --mode=AnB --n=9

ResNet-50 (He et al. 2016) as `resnet`: the 7x7/2 stem, 16 bottleneck blocks in stages of
3, 4, 6, 3 (64-512 channels, x4 out), a classifier: 18 blocks, so n = 1..17, each n one
residual block. 25,557,032 trainable parameters at 1000 outputs (torchvision's count;
Keras also counts BatchNorm's 53,120 moving statistics). 224 px crops of 256 px images.
The solver is the standard ResNet recipe in this project's SGD (momentum 0.9, decay 1e-4,
none on BatchNorm and biases, lr 0.1 at batch 256, x0.1 every 30 epochs of a half, 90
epochs). Not run here (no ImageNet, no GPU): a starting point, unmeasured.
"""

from kt_transfer import config_files


def get_config():
    config = config_files.load("imagenet_paper")
    config.model.network = "resnet"
    config.model.width = 1.0
    config.model.input_size = 224
    config.model.resnet.stages = (3, 4, 6, 3)
    config.model.resnet.block = "bottleneck"
    config.model.resnet.stem = "imagenet"
    config.dataset.mean = "fixed"
    config.dataset.mean_rgb = (123.68, 116.78, 103.94)
    config.dataset.scale = 1 / 58.0  # about 1 / ImageNet's pixel standard deviation
    steps_per_epoch = 640_000 // 256  # about half of ImageNet's 1.28 M training images
    config.train.batch_size = 256
    config.train.base_lr = 0.1
    config.train.weight_decay = 1e-4
    config.train.bias_lr_mult = 1.0
    config.train.lr_step_size = 30 * steps_per_epoch
    config.train.total_steps = 90 * steps_per_epoch
    config.train.steps_per_epoch = steps_per_epoch
    config.train.warmup_steps = 0
    config.grid.ns = tuple(range(1, 18))
    return config
