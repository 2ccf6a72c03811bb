"""The embedded default dataset: procedurally drawn images, generated offline.

No dataset can be downloaded everywhere this tool runs, so it ships a generator. Classes
come in two families, like ImageNet's man-made / natural split: geometric motifs
(stripes, checkers, polygons, ...) and organic ones (blobs, waves, speckles, ...), each in
several colour palettes. All classes share low-level structure (edges, colour blobs,
textures), and every image varies in position, scale, rotation, colour and clutter, so
the task is learnable but not trivial, and early layers should transfer between halves.

The output is an ImageNet-style folder (`train/<class>/*.jpg`, `val/<class>/*.jpg`) plus
`classes.tsv` (index, folder, group), read by the same folder code as real ImageNet.
Generation is deterministic from the seed and atomic: it writes into a temporary sibling
directory and renames it into place only when complete.
"""

import colorsys
import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import multiprocessing
import os
import shutil
import tempfile
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from kt_transfer import atomic
from kt_transfer.data import splits

# The generated JPEGs' size, for the space a generation needs (measured: about 0.6).
APPROX_BYTES_PER_PIXEL_JPEG = 0.7

GEOMETRIC = (
    "stripes",
    "checker",
    "squares",
    "triangles",
    "rings",
    "crosses",
    "grid",
    "hexagons",
    "nested",
    "dotgrid",
)
ORGANIC = (
    "blobs",
    "waves",
    "speckles",
    "leaves",
    "spiral",
    "branches",
    "clouds",
    "ripples",
    "fur",
    "cells",
)
PALETTES = (("red", 0.0), ("yellow", 0.15), ("green", 0.33), ("blue", 0.6), ("purple", 0.8))
VERSION = 1
ENV_VAR = "KT_TRANSFER_DATA_DIR"
COMPLETE_MARKER = "COMPLETE"


@dataclasses.dataclass(frozen=True)
class ClassSpec:
    folder: str
    motif: str
    hue: float
    group: str  # splits.MAN_MADE or splits.NATURAL


def class_specs(num_classes=100):
    """The first `num_classes` classes, alternating families so any prefix has both."""
    pairs = [
        (GEOMETRIC[m], ORGANIC[m], palette) for palette in PALETTES for m in range(len(GEOMETRIC))
    ]
    specs = []
    for geometric, organic, (palette, hue) in pairs:
        for motif, group in ((geometric, splits.MAN_MADE), (organic, splits.NATURAL)):
            folder = f"c{len(specs):03d}_{motif}_{palette}"
            specs.append(ClassSpec(folder, motif, hue, group))
    if not 2 <= num_classes <= len(specs):
        raise ValueError(f"embedded dataset has 2..{len(specs)} classes, asked for {num_classes}")
    return specs[:num_classes]


def _colour(rng, hue, jitter=0.06):
    h = (hue + rng.uniform(-jitter, jitter)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _random_colour(rng):
    return tuple(int(c) for c in rng.integers(30, 226, size=3))


def _background(rng, size):
    base = rng.integers(20, 140, size=3)
    noise = rng.normal(0, rng.uniform(4, 20), size=(size // 4, size // 4, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).resize((size, size))
    return img


def _draw_geometric(draw, motif, rng, size, fg, fg2):
    s = size
    step = int(rng.uniform(0.12, 0.25) * s)
    if motif == "stripes":
        for x in range(-s, 2 * s, step):
            draw.rectangle([x, -s, x + step // 2, 2 * s], fill=fg)
    elif motif == "checker":
        for i, x in enumerate(range(-s, 2 * s, step)):
            for j, y in enumerate(range(-s, 2 * s, step)):
                if (i + j) % 2:
                    draw.rectangle([x, y, x + step, y + step], fill=fg)
    elif motif == "grid":
        w = max(1, step // 5)
        for x in range(-s, 2 * s, step):
            draw.rectangle([x, -s, x + w, 2 * s], fill=fg)
            draw.rectangle([-s, x, 2 * s, x + w], fill=fg)
    elif motif == "dotgrid":
        r = max(1, step // 4)
        for x in range(-s, 2 * s, step):
            for y in range(-s, 2 * s, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    else:  # object motifs: a few instances at random places and scales
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.5 * s, 1.5 * s, size=2)
            r = rng.uniform(0.12, 0.3) * s
            if motif == "squares":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
            elif motif == "triangles":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
            elif motif == "rings":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, int(r / 3)))
            elif motif == "crosses":
                w = r / 3
                draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
                draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
            elif motif == "hexagons":
                pts = [
                    (cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3))
                    for k in range(6)
                ]
                draw.polygon(pts, fill=fg)
            elif motif == "nested":
                for k, rr in enumerate((r, 0.66 * r, 0.33 * r)):
                    draw.rectangle(
                        [cx - rr, cy - rr, cx + rr, cy + rr], fill=fg if k % 2 == 0 else fg2
                    )


def _draw_organic(draw, motif, rng, size, fg, fg2):
    s = size
    if motif == "blobs":
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0.5 * s, 1.5 * s, size=2)
            rx, ry = rng.uniform(0.08, 0.25, size=2) * s
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fg)
    elif motif == "waves":
        amp, freq, gap = (
            rng.uniform(0.04, 0.1) * s,
            rng.uniform(1.5, 4) / s,
            rng.uniform(0.12, 0.22) * s,
        )
        phase = rng.uniform(0, 2 * math.pi)
        y0 = -s
        while y0 < 2 * s:
            pts = [
                (x, y0 + amp * math.sin(2 * math.pi * freq * x + phase))
                for x in range(-s, 2 * s, 3)
            ]
            draw.line(pts, fill=fg, width=max(2, int(gap / 3)))
            y0 += gap
    elif motif == "speckles":
        for _ in range(int(rng.integers(80, 200))):
            x, y = rng.uniform(0, 2 * s, size=2)
            r = rng.uniform(0.5, 2.0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fg if rng.random() < 0.8 else fg2)
    elif motif == "leaves":
        for _ in range(int(rng.integers(3, 8))):
            cx, cy = rng.uniform(0.4 * s, 1.6 * s, size=2)
            a, r = rng.uniform(0, math.pi), rng.uniform(0.1, 0.2) * s
            pts = [
                (
                    cx + r * math.cos(t) * math.cos(a) - 0.35 * r * math.sin(t) * math.sin(a),
                    cy + r * math.cos(t) * math.sin(a) + 0.35 * r * math.sin(t) * math.cos(a),
                )
                for t in np.linspace(0, 2 * math.pi, 16)
            ]
            draw.polygon(pts, fill=fg)
    elif motif == "spiral":
        cx, cy = rng.uniform(0.8 * s, 1.2 * s, size=2)
        growth = rng.uniform(0.02, 0.04) * s
        pts = [
            (cx + growth * t * math.cos(t), cy + growth * t * math.sin(t))
            for t in np.linspace(0, 6 * math.pi, 120)
        ]
        draw.line(pts, fill=fg, width=max(2, int(s / 30)))
    elif motif == "branches":

        def branch(x, y, angle, length, depth):
            if depth == 0 or length < 2:
                return
            x2, y2 = x + length * math.cos(angle), y + length * math.sin(angle)
            draw.line([(x, y), (x2, y2)], fill=fg, width=max(1, depth))
            for da in (-0.5, 0.5):
                branch(x2, y2, angle + da + rng.uniform(-0.2, 0.2), length * 0.7, depth - 1)

        branch(rng.uniform(0.8, 1.2) * s, 1.5 * s, -math.pi / 2, 0.3 * s, 5)
    elif motif == "clouds":
        field = rng.normal(size=(6, 6))
        field = np.array(
            Image.fromarray(field.astype(np.float32)).resize((2 * s, 2 * s), Image.BICUBIC)
        )
        mask = Image.fromarray(((field > 0.3) * 255).astype(np.uint8))
        draw.bitmap((0, 0), mask, fill=fg)
    elif motif == "ripples":
        cx, cy = rng.uniform(0.7 * s, 1.3 * s, size=2)
        gap = rng.uniform(0.06, 0.12) * s
        for k in range(1, 12):
            r = k * gap
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(1, int(gap / 3)))
    elif motif == "fur":
        base_angle = rng.uniform(0, math.pi)
        for _ in range(int(rng.integers(120, 250))):
            x, y = rng.uniform(0, 2 * s, size=2)
            a, r = base_angle + rng.normal(0, 0.3), rng.uniform(0.03, 0.08) * s
            draw.line([(x, y), (x + r * math.cos(a), y + r * math.sin(a))], fill=fg, width=1)
    elif motif == "cells":
        for _ in range(int(rng.integers(8, 20))):
            cx, cy = rng.uniform(0, 2 * s, size=2)
            r = rng.uniform(0.05, 0.12) * s
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, fill=fg2, width=2)


def render_image(spec, rng, size):
    """One image of class `spec`: a motif on a 2x canvas, rotated, scaled, cropped."""
    canvas = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    fg, fg2 = _colour(rng, spec.hue), _colour(rng, (spec.hue + 0.5) % 1.0, 0.15)
    if spec.motif in GEOMETRIC:
        _draw_geometric(draw, spec.motif, rng, size, fg, fg2)
    else:
        _draw_organic(draw, spec.motif, rng, size, fg, fg2)
    canvas = canvas.rotate(rng.uniform(0, 360), resample=Image.BILINEAR)
    zoom = rng.uniform(0.7, 1.3)
    box = int(size / zoom)
    x0, y0 = (
        rng.integers(size // 2 - box // 4, size // 2 + box // 4 + 1, size=2)
        if box < 2 * size
        else (0, 0)
    )
    motif = canvas.crop((x0, y0, x0 + box, y0 + box)).resize((size, size), Image.BILINEAR)
    image = _background(rng, size)
    clutter = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):  # clutter: random shapes in random colours
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(0.03, 0.12) * size
        shape = clutter.ellipse if rng.random() < 0.5 else clutter.rectangle
        shape([x - r, y - r, x + r, y + r], fill=_random_colour(rng))
    image.paste(motif, (0, 0), motif)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image


@dataclasses.dataclass(frozen=True)
class EmbeddedSpec:
    """What identifies one generated copy of the dataset."""

    num_classes: int = 100
    train_per_class: int = 300
    val_per_class: int = 50
    image_size: int = 112
    seed: int = 0
    # The classes drawn are class_specs()[first_class:first_class + num_classes]: another
    # dataset of other classes (a cross-dataset target, configs/cross_dataset.py).
    first_class: int = 0

    @property
    def dirname(self):
        return (
            f"embedded-v{VERSION}-c{self.num_classes}-t{self.train_per_class}"
            f"-v{self.val_per_class}-px{self.image_size}-s{self.seed}"
            + (f"-f{self.first_class}" if self.first_class else "")
        )

    def classes(self):
        return class_specs(self.first_class + self.num_classes)[self.first_class :]


def default_cache_dir():
    """$KT_TRANSFER_DATA_DIR, else ~/.cache/kt_transfer/datasets."""
    return os.environ.get(ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "kt_transfer", "datasets"
    )


def _write_class(root, spec, class_index):
    """Writes every train and val image of one class (one unit of parallel work)."""
    cls = spec.classes()[class_index]
    class_index += spec.first_class  # a class draws the same images in any subset
    for subset_id, (subset, count) in enumerate(
        (("train", spec.train_per_class), ("val", spec.val_per_class))
    ):
        folder = os.path.join(root, subset, cls.folder)
        os.makedirs(folder)
        for i in range(count):
            # One generator per image: the result does not depend on worker scheduling.
            rng = np.random.default_rng([spec.seed, class_index, subset_id, i])
            render_image(cls, rng, spec.image_size).save(
                os.path.join(folder, f"{cls.folder}_{i:05d}.jpg"), quality=90
            )


def ensure_dataset(spec=EmbeddedSpec(), cache_dir=None, log=print):
    """Returns the root of the generated dataset, generating it once if needed.

    Args:
      spec: size and seed of the dataset.
      cache_dir: parent directory; default `default_cache_dir()`.
      log: where progress messages go.

    Returns:
      Path of a complete dataset folder (train/, val/, classes.tsv, COMPLETE).
    """
    cache_dir = cache_dir or default_cache_dir()
    root = os.path.join(cache_dir, spec.dirname)
    if os.path.exists(os.path.join(root, COMPLETE_MARKER)):
        return root
    os.makedirs(cache_dir, exist_ok=True)
    specs = spec.classes()
    total = spec.num_classes * (spec.train_per_class + spec.val_per_class)
    log(f"Generating the embedded dataset ({total} images) in {root} (once) ...")
    needed = int(total * APPROX_BYTES_PER_PIXEL_JPEG * spec.image_size**2)
    atomic.check_space(cache_dir, needed)
    tmp = tempfile.mkdtemp(prefix=f".{spec.dirname}.tmp-", dir=cache_dir)
    try:
        with atomic.reporting_full_disk(root, needed):
            # "spawn" workers import only NumPy and PIL, never a forked TensorFlow
            # runtime; the variable tells the package not to load Keras in them.
            workers = min(len(specs), os.cpu_count() or 1)
            with _drawing_workers_skip_keras():
                with concurrent.futures.ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context("spawn")
                ) as pool:
                    list(pool.map(functools.partial(_write_class, tmp, spec), range(len(specs))))
            with open(os.path.join(tmp, "classes.tsv"), "w") as f:
                f.write("class_index\tfolder\tgroup\n")
                f.writelines(f"{i}\t{c.folder}\t{c.group}\n" for i, c in enumerate(specs))
            open(os.path.join(tmp, COMPLETE_MARKER), "w").close()
            atomic.plain_dir_mode(tmp)  # shared caches: readable as a plain makedirs is
            _publish(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ours only; gone already if published
    return root


_NO_KERAS_LOCK, _no_keras_users = threading.Lock(), 0


@contextlib.contextmanager
def _drawing_workers_skip_keras():
    """Sets the variable that spawned workers inherit, for as long as any thread of this
    process is starting them."""
    global _no_keras_users
    with _NO_KERAS_LOCK:
        _no_keras_users += 1
        os.environ["_KT_TRANSFER_NO_KERAS"] = "1"
    try:
        yield
    finally:
        with _NO_KERAS_LOCK:
            _no_keras_users -= 1
            if not _no_keras_users:
                os.environ.pop("_KT_TRANSFER_NO_KERAS", None)


def _publish(tmp, root):
    """Renames the finished copy into place. Never deletes or moves `root`: a process
    may be reading it. If another process published first, its copy stays and ours is
    dropped by the caller."""
    try:
        os.rename(tmp, root)  # atomic: readers see all or nothing
    except OSError:  # root exists (ENOTEMPTY / EEXIST)
        if os.path.exists(os.path.join(root, COMPLETE_MARKER)):
            return  # another process finished the same dataset first
        raise FileExistsError(
            f"{root} exists but is incomplete (no {COMPLETE_MARKER} file; left by an older "
            "kt_transfer?): delete that folder and run again"
        ) from None
