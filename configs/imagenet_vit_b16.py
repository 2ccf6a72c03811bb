"""ViT-B/16 on ImageNet's halves: the paper's experiment at paper scale for a ViT.

    python -m kt_transfer.main --config=configs/imagenet_vit_b16.py \
        --config.dataset.data_dir=/data/imagenet --mode=AnB --n=6

ViT-B/16 (Dosovitskiy et al. 2021) as `vit`: 16x16 patches of a 224 px crop (196
tokens), width 768, 12 heads, 12 pre-norm blocks with an MLP of 3072, a classifier
(LayerNorm, mean over tokens, dense): 14 blocks, so n = 1..13. 86,566,120 parameters at
1000 outputs: the paper's model without its class token (the classifier averages the
tokens instead), so 2 x 768 fewer than torchvision's 86,567,656.
The solver is this project's SGD with a warm-up (lr 0.03, momentum 0.9, decay 1e-4, 90
epochs of a half): ViTs trained from scratch on ImageNet-1k usually need AdamW and heavy
augmentation (DeiT), which kt_transfer does not have, so expect lower top-1 than those
recipes. Not run here (no ImageNet, no GPU): a starting point, unmeasured.
"""

from kt_transfer import config_files


def get_config():
    # ResNet-50's data, pixel scaling and 90-epoch schedule; its own network and lr.
    config = config_files.load("imagenet_resnet50")
    config.model.network = "vit"
    config.model.vit.patch_size = 16
    config.model.vit.hidden_dim = 768
    config.model.vit.num_heads = 12
    config.model.vit.num_blocks = 12
    config.model.vit.mlp_dim = 3072
    config.model.dropout = 0.1
    config.train.base_lr = 0.03
    config.train.warmup_steps = 10_000
    config.grid.ns = tuple(range(1, 14))
    return config
