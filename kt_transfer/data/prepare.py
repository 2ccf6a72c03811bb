"""A resized copy of an image dataset, made once, that training reads faster.

The paper resized every ImageNet image offline to 256x256 (aspect ratio not kept) before
training. Doing the same here turns each training read into the pipeline's fastest path:
a JPEG already at the resize size is decoded only inside its crop window
(images.decode_crop), instead of decoding a 400-500 px photo whole and resizing it.

The copy is an ImageNet-style folder (train/<class>/*.JPEG, val/<class>/*.JPEG, and the
source's classes.tsv), written by a pool of processes, one file at a time and atomically
(temporary name, then rename), so a killed run resumes where it stopped: files already
there are skipped. Unreadable files are reported and skipped, as in training, and listed
in bad_files.tsv. The resize is Pillow's antialiased bilinear, which matches the
pipeline's on-the-fly resize (images.resize) within rounding.
"""

import concurrent.futures
import io
import os

from PIL import Image

from kt_transfer import atomic
from kt_transfer.data import sources

COMPLETE = "COMPLETE"
QUALITY = 95  # JPEG quality of the copy, with full-resolution colour (4:4:4): at 256 px
# 4:2:0 chroma subsampling alone moves colours by ~5 levels on average


def _target(dst, subset, class_name, path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(dst, subset, class_name, stem + ".JPEG")


def resize_bytes(data, size):
    """Encoded image bytes -> JPEG bytes of size x size RGB (raises on a bad image)."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB").resize((size, size), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY, subsampling=0)
    return out.getvalue()


def _prepare_one(job):
    """(source path or bytes, target path, size) -> None, or the reason it failed."""
    source, target, size = job
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                source = f.read()
        data = resize_bytes(source, size)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    tmp = os.path.join(os.path.dirname(target), ".tmp-" + os.path.basename(target))
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return None


def folder_jobs(src, dst, size):
    """(source, target, size) of every image of an ImageNet-style folder."""
    classes = sources.list_classes(src)
    for subset in ("train", "val"):
        for class_name in classes:
            folder = os.path.join(src, subset, class_name)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith(sources.IMAGE_EXTENSIONS) and not name.startswith("."):
                    path = os.path.join(folder, name)
                    yield path, _target(dst, subset, class_name, path), size


def tfds_jobs(builder, dst, size, val_split):
    """(encoded bytes, target, size) of a prepared TFDS builder's train and val images."""
    import tensorflow_datasets as tfds

    names = builder.info.features["label"].names
    for subset, split in (("train", "train"), ("val", val_split)):
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for i, example in enumerate(tfds.as_numpy(ds)):
            name = example.get("file_name", b"").decode() or f"{split}_{i:08d}"
            yield (example["image"], _target(dst, subset, names[example["label"]], name), size)


def prepare(jobs, dst, workers=None, log=print):
    """Writes every job's resized image that is not there yet, in parallel.

    Returns:
      {"written", "skipped" (already there), "bad" ({source: reason})}.
    """
    counts, bad, pending = {"written": 0, "skipped": 0}, {}, []
    for job in jobs:
        if os.path.exists(job[1]):
            counts["skipped"] += 1
            continue
        os.makedirs(os.path.dirname(job[1]), exist_ok=True)
        pending.append(job)
    log(f"prepare: {len(pending)} images to write, {counts['skipped']} already there")
    with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        for job, reason in zip(pending, pool.map(_prepare_one, pending, chunksize=16)):
            if reason is None:
                counts["written"] += 1
            else:
                name = job[0] if isinstance(job[0], str) else job[1]
                bad[name] = reason
                log(f"prepare: skipped unreadable {name}: {reason}")
    if bad:
        rows = "".join(f"{name}\t{reason}\n" for name, reason in sorted(bad.items()))
        atomic.write_text(os.path.join(dst, "bad_files.tsv"), "file\treason\n" + rows)
    return {**counts, "bad": bad}


def prepare_folder(src, dst, size, workers=None, log=print):
    """A resized copy of the ImageNet-style folder `src` in `dst` (see the module doc)."""
    result = prepare(folder_jobs(src, dst, size), dst, workers, log)
    groups = os.path.join(src, "classes.tsv")
    if os.path.exists(groups):
        with open(groups) as f:
            atomic.write_text(os.path.join(dst, "classes.tsv"), f.read())
    atomic.write_text(os.path.join(dst, COMPLETE), f"{size}\n")
    return result
