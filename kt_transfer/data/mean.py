"""The pixel mean a network subtracts: computed once per half and cached in the workdir.

`dataset.mean`:
  "fixed"       `dataset.mean_rgb` per channel (e.g. the usual ImageNet mean);
  "computed"    the per-channel mean of the half's training images;
  "base_image"  the paper's: the per-pixel mean image (resize_size x resize_size x 3) of
                the half's training images, as Caffe's compute_image_mean makes it.
Computed over up to `dataset.mean_images` training images of the base's half, resized as
for training (not cropped or mirrored). A transfer network does not compute its own: it
inherits its base's normalization, mean image included (transfer.build_model), as every
transfer net of the paper used its base's mean file.
"""

import hashlib
import json
import math
import os

import numpy as np

from kt_transfer import atomic
from kt_transfer.data import pipeline

# How a network trained from scratch centres its inputs: the config's fixed RGB mean, the
# training half's computed pixel mean, or its per-pixel mean image.
MEANS = ("fixed", "computed", "base_image")

BATCH = 64


def compute_mean(source, class_indices, resize_size, max_images, seed=0, per_pixel=False):
    """Mean R, G, B (0..255) over up to max_images shuffled training images of the
    classes, or with per_pixel the mean image [resize_size, resize_size, 3]."""
    ds = pipeline.make_dataset(
        source,
        "train",
        class_indices,
        resize_size=resize_size,
        crop_size=resize_size,
        batch_size=BATCH,
        training=True,
        augment=False,
        seed=seed,
        deterministic=True,
    )
    total, count = np.zeros((resize_size, resize_size, 3)), 0
    for images, _ in ds.take(math.ceil(max_images / BATCH)):
        total += images.numpy().astype(np.float64).sum(axis=0)
        count += images.shape[0]
    image = total / count
    return image.astype(np.float32) if per_pixel else [float(v) for v in image.mean((0, 1))]


def half_mean(config, dataset, half_name, log=print, per_pixel=False):
    """The cached mean of one half (computing and caching it the first time): per
    channel, or with per_pixel the mean image (an .npy beside the record)."""
    dc = config.dataset
    class_indices = dataset.split.half(half_name)
    key = {
        "source": dataset.source.describe(),
        "split": dataset.split.name,
        "classes": [dataset.source.classes[i] for i in class_indices],
        "resize_size": dc.resize_size,
        "mean_images": dc.mean_images,
        "seed": 0,
        "per_pixel": per_pixel,
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    path = os.path.join(
        config.workdir,
        dataset.name,
        dataset.split.name,
        "means",
        f"mean_{half_name}_{digest}" + (".npy" if per_pixel else ".json"),
    )
    if os.path.exists(path):
        if per_pixel:
            return np.load(path)
        with open(path) as f:
            return json.load(f)["mean_rgb"]
    kind = "mean image" if per_pixel else "pixel mean"
    log(f"Computing the {kind} of half {half_name} ({dc.mean_images} images, once) ...")
    mean = compute_mean(
        dataset.source, class_indices, dc.resize_size, dc.mean_images, per_pixel=per_pixel
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if per_pixel:
        tmp = path + ".tmp.npy"
        np.save(tmp, mean)
        os.replace(tmp, path)
    else:
        atomic.write_json(path, {**key, "mean_rgb": mean})
    return mean


def run_mean(config, dataset, treatment, log=print):
    """(mean_rgb, mean_image or None) a network trained from scratch centres its inputs
    with (a transfer network inherits its base's instead)."""
    kind = config.dataset.mean
    if kind == "fixed":
        return [float(v) for v in config.dataset.mean_rgb], None
    if kind not in MEANS:
        raise ValueError(f"--config.dataset.mean={kind!r}; use one of {', '.join(MEANS)}")
    half = treatment.source if treatment.source in ("A", "B") else treatment.target
    if kind == "computed":
        return half_mean(config, dataset, half, log), None
    image = half_mean(config, dataset, half, log, per_pixel=True)
    return [float(v) for v in image.mean((0, 1))], image
