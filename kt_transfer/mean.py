"""The per-channel pixel mean of a half, computed once and cached in the workdir.

Caffe subtracts a mean computed over the training images; here it is the mean of the
training images of the half whose features the run uses (the base half: A for AnB, B for
BnB and baseB), over up to `dataset.mean_images` images resized as for training. With
`dataset.mean = "fixed"`, `dataset.mean_rgb` is used instead (e.g. the usual ImageNet mean).
"""

import hashlib
import json
import math
import os

import numpy as np

from kt_transfer import atomic, data

BATCH = 64


def compute_mean(source, class_indices, resize_size, max_images, seed=0):
    """Mean R, G, B (0..255) over up to max_images training images of the classes."""
    ds = data.make_dataset(source, "train", class_indices, resize_size=resize_size,
                           crop_size=resize_size, batch_size=BATCH, training=True, seed=seed, deterministic=True)
    total, count = np.zeros(3), 0
    for images, _ in ds.take(math.ceil(max_images / BATCH)):
        batch = images.numpy().astype(np.float64)
        total += batch.sum(axis=(0, 1, 2))
        count += batch.shape[0] * batch.shape[1] * batch.shape[2]
    return [float(v) for v in total / count]


def half_mean(config, dataset, half_name, log=print):
    """The cached mean of one half (computing and caching it the first time)."""
    dc = config.dataset
    class_indices = dataset.split.half(half_name)
    key = {"source": dataset.source.describe(), "split": dataset.split.name,
           "classes": [dataset.source.classes[i] for i in class_indices],
           "resize_size": dc.resize_size, "mean_images": dc.mean_images, "seed": 0}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    path = os.path.join(config.workdir, dataset.name, dataset.split.name, "means",
                        f"mean_{half_name}_{digest}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["mean_rgb"]
    log(f"Computing the pixel mean of half {half_name} ({dc.mean_images} images, once) ...")
    mean_rgb = compute_mean(dataset.source, class_indices, dc.resize_size, dc.mean_images)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_json(path, {**key, "mean_rgb": mean_rgb})
    return mean_rgb


def run_mean(config, dataset, treatment, log=print):
    """The mean a treatment's inputs are centred with."""
    if config.dataset.mean == "fixed":
        return [float(v) for v in config.dataset.mean_rgb]
    if config.dataset.mean != "computed":
        raise ValueError(f"--config.dataset.mean={config.dataset.mean!r}; use fixed or computed")
    half = treatment.source if treatment.source in ("A", "B") else treatment.target
    return half_mean(config, dataset, half, log)
