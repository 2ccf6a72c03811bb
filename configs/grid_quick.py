"""The quick figure grid: the default grid at n = 1, 4, 7 only (low, middle, high).

    python -m kt_transfer.main --config=configs/grid_quick.py --mode=grid

2 random splits x 2 directions, the five treatments, 64 networks of 2,000 steps: 55 min
on 2 CPU cores (measured, README). Its runs are the default grid's (same settings, same
run directories), so the full grid (`--mode=grid` with the default config) reuses them.
"""

from kt_transfer import config_files


def get_config():
    config = config_files.load("embedded")
    config.grid.ns = (1, 4, 7)
    return config
