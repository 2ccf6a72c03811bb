"""Class-split tf.data pipelines over an image folder or a TFDS dataset.

Folder source: `train/<class>/*`, `val/<class>/*`; class index = position of the class
folder in sorted order (for ImageNet wnids this is TFDS's labels.txt order, so a split
selects the same classes from either source). Only the split's class folders are listed,
and a TFDS dataset is filtered on its label before decoding: the other half costs nothing.
Within a half, labels are remapped to 0..K-1 in the split's order.

A file that cannot be decoded (truncated or corrupt, not an image at all) never stops
training: it is skipped, and recorded by name in a `BadFiles` log that the run reports at
the end of each epoch. PNG, GIF or BMP files named .JPEG, CMYK and grayscale JPEGs are
decoded (to RGB) like any other.
"""

import dataclasses
import os
import threading

import numpy as np
import tensorflow as tf

from kt_transfer import images, tfds_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class Source:
    """Where the images come from: an image folder, or a prepared TFDS builder."""

    kind: str  # "folder" | "tfds"
    classes: list  # class names in class-index order
    root: str = ""  # folder
    builder: object = None  # tfds
    val_split: str = "val"

    def describe(self):
        return self.root if self.kind == "folder" else f"TFDS {self.builder.info.full_name}"


def folder_source(root):
    return Source("folder", list_classes(root), root=root)


def tfds_source_from_config(dataset_config, log=print):
    builder = tfds_source.load_builder(dataset_config.tfds_name, dataset_config.data_dir,
                                       dataset_config.tfds_manual_dir, log)
    return Source("tfds", list(builder.info.features["label"].names), builder=builder,
                  val_split=tfds_source.val_split(builder, dataset_config.tfds_val_split))


def list_classes(root):
    """Sorted class folder names under root/train, with a clear error if there are none."""
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(
            f"no train/ folder in {root!r}: --config.dataset.data_dir must point to an "
            "ImageNet-style folder with train/<class>/ and val/<class>/ subfolders")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if not classes:
        raise FileNotFoundError(f"no class folders in {train_dir!r}")
    return classes


def list_files(root, subset, classes, class_indices):
    """(paths, labels) of the chosen classes; label = position in class_indices.

    Raises:
      FileNotFoundError naming the class and folder: a class of the split is missing from
      `subset`, or has no images.
    """
    paths, labels = [], []
    for label, index in enumerate(class_indices):
        folder = os.path.join(root, subset, classes[index])
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"class {classes[index]!r} of the split has no folder {folder!r}; {subset}/ "
                "must hold a folder for every class in train/")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise FileNotFoundError(
                f"class {classes[index]!r} has no images in {folder!r} (files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}); every class of the split needs images in "
                "both train/ and val/")
        paths += [os.path.join(folder, n) for n in names]
        labels += [label] * len(names)
    return paths, labels


def check_readable(source, class_indices):
    """Fails before training if a class of the split has no train or val images."""
    if source.kind == "folder":
        for subset in ("train", source.val_split):
            list_files(source.root, subset, source.classes, class_indices)


class BadFiles:
    """The files a pipeline skipped, by name, for reporting (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = {}
        self._reported = 0

    def add(self, name):
        with self._lock:
            self._seen.setdefault(name, describe_bad_file(name))

    def all(self):
        with self._lock:
            return dict(self._seen)

    def new_since_last_call(self):
        with self._lock:
            names = list(self._seen)[self._reported:]
            self._reported = len(self._seen)
            return {n: self._seen[n] for n in names}


def describe_bad_file(name):
    """Why a file could not be used, told from its bytes (folder sources)."""
    if not os.path.isfile(name):
        return "could not be decoded"
    with open(name, "rb") as f:
        content = f.read()
    if not content:
        return "empty file"
    if content[:2] == b"\xff\xd8":
        return ("truncated JPEG (no end-of-image marker)" if b"\xff\xd9" not in content[-64:]
                else "corrupt JPEG data")
    if content[:8] == b"\x89PNG\r\n\x1a\n" or content[:3] == b"GIF" or content[:2] == b"BM":
        return "corrupt image data"
    return "not an image"


CHUNK = 16  # elements decoded per error-isolated group


def _decode_chunk(load, bad_files):
    """Decodes a chunk of elements, skipping (and naming) those that fail.

    The chunk's elements go through a dataset of their own whose errors are ignored;
    its survivors, batched, are compared by name with the chunk to find the files that
    failed, which are recorded in `bad_files`. (tf.data's `ignore_errors` alone drops
    elements without saying which.) Doing this per chunk rather than per element keeps
    its cost small.
    """
    def record(names):
        for name in names.numpy():
            bad_files.add(name.decode())
        return len(names.numpy())

    def decode(chunk, seeds):
        survivors = tf.data.Dataset.from_tensor_slices((chunk, seeds)).map(
            lambda e, s: (load(e, s), e["label"], e["name"])).ignore_errors()
        nothing = tf.data.Dataset.from_tensors((
            tf.zeros((0, *load.output_shape), tf.uint8), tf.zeros([0], tf.int64),
            tf.zeros([0], tf.string)))
        decoded = survivors.batch(CHUNK).concatenate(nothing).take(1)

        def name_failures(images, labels, names):
            failed = tf.reduce_all(chunk["name"][:, None] != names[None, :], axis=1)
            failed_names = tf.boolean_mask(chunk["name"], failed)
            count = tf.cond(tf.size(failed_names) > 0,
                            lambda: tf.py_function(record, [failed_names], tf.int64),
                            lambda: tf.constant(0, tf.int64))
            with tf.control_dependencies([count]):
                return tf.identity(images), labels

        return decoded.map(name_failures).unbatch()
    return decode


def make_dataset(source, subset, class_indices, *, resize_size, crop_size, batch_size,
                 training, seed=0, deterministic=False, bad_files=None, input_context=None,
                 skip_steps=0):
    """A batched tf.data.Dataset of (uint8 RGB crops, label) for the chosen classes.

    Args:
      source: a Source.
      subset: "train", or "val" (the source's validation split).
      class_indices: original class indices of the half, in the split's order.
      resize_size, crop_size: the paper's 256 and 227 (or smaller for CPU configs).
      batch_size: global batch size; split across replicas by `input_context`.
      training: shuffle, repeat, random crop and mirror; else one ordered pass.
      seed: shuffle and augmentation seed.
      deterministic: the same order and crops every time (tests); else parallel elements
        may finish out of order, which is faster.
      bad_files: a BadFiles that records skipped files (default: a fresh one).
      input_context: tf.distribute.InputContext: this pipeline reads only its share.
      skip_steps: training steps already done (a resumed run): the stream starts where an
        uninterrupted run would be, files and augmentation seeds alike. Skipping happens
        before decoding, so it costs only the file names. Exact in deterministic mode
        unless files were skipped as unreadable.

    Returns:
      The dataset (for a folder source of a training run: infinite).
    """
    bad_files = bad_files if bad_files is not None else BadFiles()
    # Elements this pipeline feeds per step: its share of the global batch.
    elements_per_step = batch_size // (input_context.num_input_pipelines
                                       if input_context is not None else 1)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if source.kind == "folder":
        folder_subset = subset if subset == "train" else source.val_split
        paths, labels = list_files(source.root, folder_subset, source.classes, class_indices)
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": paths, "label": np.array(labels, np.int64), "name": paths})
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        read = tf.io.read_file
    else:
        tfds_split = "train" if subset == "train" else source.val_split
        ds = tfds_source.read(source.builder, tfds_split, class_indices, training=training,
                              seed=seed, input_context=input_context)
        if training:
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        read = tf.identity
    if training:
        ds = ds.repeat()
    # A stateless seed per element: crops and mirrors do not depend on thread timing.
    seeds = tf.data.Dataset.random(seed=seed).batch(2) if training else \
        tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    ds = tf.data.Dataset.zip(ds, seeds)
    if training and skip_steps:
        ds = ds.skip(skip_steps * elements_per_step)
    ds = ds.batch(CHUNK)

    def load(element, element_seed):
        return images.decode_crop(read(element["image"]), element_seed, training=training,
                                  resize_size=resize_size, crop_size=crop_size)
    load.output_shape = (crop_size, crop_size, 3)

    ds = ds.interleave(_decode_chunk(load, bad_files), cycle_length=2 * (os.cpu_count() or 2),
                       block_length=CHUNK, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=deterministic or not training)
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
