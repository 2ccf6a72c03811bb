"""A CPU-scale Vision Transformer on the embedded dataset.

    python -m kt_transfer.main --config=configs/vit.py --mode=AnB --n=2

8x8 patches of the 71 px crop (64 tokens), width 64, 4 heads, 4 pre-norm transformer
blocks with an MLP of 128, a classifier (LayerNorm, mean over tokens, dense): 6 blocks,
so n = 1..5. Same data, solver (the paper's SGD) and 2,000 steps as configs/embedded.py.
Measured (2-core CPU, beside a running grid): see MEASURED below.

    python -m kt_transfer.main --config=configs/vit.py --mode=grid
"""

from kt_transfer import config_files

MEASURED = "not yet measured"


def get_config():
    config = config_files.load("embedded")
    config.model.network = "vit"
    config.model.vit.patch_size = 8
    config.model.vit.hidden_dim = 64
    config.model.vit.num_heads = 4
    config.model.vit.num_blocks = 4
    config.model.vit.mlp_dim = 128
    config.grid.ns = (1, 2, 3, 4, 5)
    config.grid.splits = ("random0", "random1")
    config.grid.restart_control = False
    return config
