"""A CPU-scale Vision Transformer on the embedded dataset.

    python -m kt_transfer.main --config=configs/vit.py --mode=AnB --n=2

8x8 patches of the 71 px crop (64 tokens), width 64, 4 heads, 4 pre-norm transformer
blocks with an MLP of 128, a classifier (LayerNorm, mean over tokens, dense): 6 blocks,
so n = 1..5. Same data, solver (the paper's SGD) and 2,000 steps as configs/embedded.py.

Measured (the 2-core development machine, 2026-12-02, beside a running ResNet grid that
took half the cores): the command above took 10 min 55 s in all, baseA trained first
(top-1 0.464; 298 s of training steps, 149 ms a step) then A2B (top-1 0.4215). On the
same half CaffeNet's default baseA has 0.3375 and configs/resnet.py's 0.465. The ViT
overfits its 1,500 images: training top-1 0.97 at the end.

The grid runs n = 1..5 on 2 partitions, both directions, with the selffers and
transfers (84 networks):

    python -m kt_transfer.main --config=configs/vit.py --mode=grid

Measured (same machine, 2026-12-02): all 84 finished; their training times add up to
4 h 48 min, part of it beside other jobs (a pack of 5 ViTs: 10.6-13.3 min on the idle
machine). Bases 0.431 on average; AnB falls from 0.451 at n = 1 to 0.387 at n = 5, AnB+
stays at 0.46-0.48. Every finding is inconclusive with 2 partitions: docs/results.md.
"""

from kt_transfer import config_files


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
    config.grid.treatments = ("BnB", "BnB+", "AnB", "AnB+")
    config.grid.restart_control = False
    return config
