"""Class-split tf.data pipelines over a Source (an image folder or a TFDS dataset).

Where the images are and which classes make a half is sources.py; this module reads
them. Only the split's class folders are listed, and a TFDS dataset is filtered on its
label before decoding: the other half costs nothing. Within a half, labels are remapped
to 0..K-1 in the split's order.

A file that cannot be decoded (truncated or corrupt, not an image at all) never stops
training: it is skipped, and recorded by name in a `BadFiles` log that the run reports at
the end of each epoch. PNG, GIF or BMP files named .JPEG, CMYK and grayscale JPEGs are
decoded (to RGB) like any other.
"""

import os
import threading

import numpy as np
import tensorflow as tf

from kt_transfer.data import images

HOLDOUT_BUCKETS = 10_000


class BadFiles:
    """The files a pipeline skipped, by name, for reporting (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = {}

    def add(self, name, reason=None):
        with self._lock:
            if name not in self._seen:
                self._seen[name] = reason or images.describe_bad_file(name)

    def all(self):
        with self._lock:
            return dict(self._seen)


CHUNK = 16  # elements decoded per error-isolated group


class NothingReadableError(RuntimeError):
    """The input pipeline went through a whole pass of a half's files and decoded none:
    training would wait forever for a batch."""


NOTHING_READ = "kt_transfer: no file of the pass could be decoded"


def nothing_readable_error(bad_files):
    """The error a run reports when its pipeline's watchdog fires (see make_dataset)."""
    seen = bad_files.all()
    first = "; ".join(f"{name}: {reason}" for name, reason in list(seen.items())[:3])
    return NothingReadableError(
        "the input pipeline went through all of the half's files twice and could decode none "
        f"({len(seen)} unreadable files; the first: {first}); the images became "
        "unreadable during training: check the files (and the disk they are on), then "
        "run the same command again, which resumes from the last backup"
    )


def _decode_chunk(load, bad_files):
    """Decodes a chunk of elements, skipping (and naming) those that fail.

    The chunk's elements go through a dataset of their own whose errors are ignored;
    its survivors, batched, are compared by name with the chunk to find the files that
    failed, which are recorded in `bad_files`. (tf.data's `ignore_errors` alone drops
    elements without saying which.) Doing this per chunk rather than per element keeps
    its cost small. Each chunk gives one element: (images, labels, files that failed).
    """

    def record(names):
        for name in names.numpy():
            bad_files.add(name.decode())
        return len(names.numpy())

    def decode(chunk, seeds):
        survivors = (
            tf.data.Dataset.from_tensor_slices((chunk, seeds))
            .map(lambda e, s: (load(e, s), e["label"], e["name"]))
            .ignore_errors()
        )
        nothing = tf.data.Dataset.from_tensors(
            (
                tf.zeros((0, *load.output_shape), tf.uint8),
                tf.zeros([0], tf.int64),
                tf.zeros([0], tf.string),
            )
        )
        decoded = survivors.batch(CHUNK).concatenate(nothing).take(1)

        def name_failures(images, labels, names):
            failed = tf.reduce_all(chunk["name"][:, None] != names[None, :], axis=1)
            failed_names = tf.boolean_mask(chunk["name"], failed)
            count = tf.cond(
                tf.size(failed_names) > 0,
                lambda: tf.py_function(record, [failed_names], tf.int64),
                lambda: tf.constant(0, tf.int64),
            )
            with tf.control_dependencies([count]):
                return tf.identity(images), labels, tf.size(failed_names, tf.int64)

        return decoded.map(name_failures)

    return decode


def _stop_when_nothing_decodes(files_per_pass):
    """A tf.data scan over decoded chunks that fails (with NOTHING_READ) once two passes'
    worth of files in a row could not be decoded: a repeated stream of unreadable files
    would otherwise keep training waiting for its first batch forever. Two passes, not
    one: with a single good file, reshuffled each pass, the failures between two of its
    reads can exceed one pass but never two."""
    limit = 2 * files_per_pass

    def watch(failures_in_a_row, chunk):
        images, labels, failed = chunk
        failures_in_a_row = tf.where(
            tf.shape(labels)[0] > 0, tf.constant(0, tf.int64), failures_in_a_row + failed
        )
        check = tf.debugging.Assert(failures_in_a_row < limit, [NOTHING_READ])
        with tf.control_dependencies([check]):
            return failures_in_a_row, (tf.identity(images), labels)

    return watch


def make_dataset(
    source,
    subset,
    class_indices,
    *,
    resize_size,
    crop_size,
    batch_size,
    training,
    seed=0,
    deterministic=False,
    bad_files=None,
    input_context=None,
    skip_steps=0,
    holdout=None,
    augment=None,
    memory_budget=0,
):
    """A batched tf.data.Dataset of (uint8 RGB crops, label) for the chosen classes.

    With a `memory_budget` (bytes) that holds the half's `subset` decoded at the resize
    size, its images are decoded once per process (decoded_images) and every pass, every
    crop and mirror, and every network of a pack take them from memory; otherwise each
    pass decodes the files again.

    Args:
      source: a sources.FolderSource or sources.TfdsSource.
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
      augment: random crops and mirrors (default: when training); False reads a shuffled,
        repeated stream of centre crops (the mean image).
      memory_budget: bytes the decoded images of this process may take (0: decode on
        the fly).
      holdout: None, or (part, fraction, seed): a fixed part of the images, chosen by a
        seeded hash of each file name (so the same on every run and source order), is
        set aside; part "rest" reads the others, part "held" only those (see in_holdout).

    Returns:
      The dataset (for a folder source of a training run: infinite).
    """
    bad_files = bad_files if bad_files is not None else BadFiles()
    # Elements this pipeline feeds per step: its share of the global batch.
    elements_per_step = batch_size // (
        input_context.num_input_pipelines if input_context is not None else 1
    )
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    decoded = decoded_images(source, subset, class_indices, resize_size, holdout, memory_budget)
    if decoded is not None:
        return _from_memory(
            decoded,
            bad_files,
            dict(resize_size=resize_size, crop_size=crop_size),
            batch_size=batch_size,
            elements_per_step=elements_per_step,
            training=training,
            augment=training if augment is None else augment,
            seed=seed,
            input_context=input_context,
            skip_steps=skip_steps,
        )
    ds, read, watchdog_limit = source.examples(
        subset, class_indices, training=training, seed=seed, input_context=input_context
    )
    ds = _keep_part(ds, holdout)
    if training:
        ds = ds.repeat()
    ds = tf.data.Dataset.zip(ds, _element_seeds(training, seed))
    if training and skip_steps:
        ds = ds.skip(skip_steps * elements_per_step)
    ds = ds.batch(CHUNK)

    def load(element, element_seed):
        return images.decode_crop(
            read(element["image"]),
            element_seed,
            training=training if augment is None else augment,
            resize_size=resize_size,
            crop_size=crop_size,
        )

    load.output_shape = (crop_size, crop_size, 3)

    ds = _decode_chunks(ds, load, bad_files, deterministic=deterministic or not training)
    ds = ds.scan(tf.constant(0, tf.int64), _stop_when_nothing_decodes(watchdog_limit))
    ds = ds.unbatch()
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class DecodedImages:
    """A half's images decoded once, resized, uint8, with their labels (0..K-1), and the
    files that could not be decoded (replayed into each run's BadFiles)."""

    def __init__(self, images, labels, bad):
        self.images, self.labels, self.bad = images, labels, bad

    @property
    def nbytes(self):
        return self.images.nbytes


_DECODED = {}  # this process's decoded halves, oldest first (see decoded_images)


def decoded_images(source, subset, class_indices, resize_size, holdout=None, budget=0):
    """The half's `subset` decoded at the resize size, once per process: a DecodedImages,
    or None when it would not fit `budget` bytes (with the halves decoded before it; the
    oldest are dropped to make room)."""
    if budget <= 0:
        return None
    key = (source.describe(), subset, tuple(class_indices), resize_size, holdout)
    if key in _DECODED:
        return _DECODED[key]
    count = source.count(subset, class_indices)
    if count is None or count * resize_size * resize_size * 3 > budget:
        return None  # too large, or of unknown size: decoded on the fly
    bad_files = BadFiles()
    ds, read, _ = source.examples(subset, class_indices, training=False, seed=0)
    ds = tf.data.Dataset.zip(_keep_part(ds, holdout), _element_seeds(False))

    def load(element, element_seed):  # the whole resized image: training=False, no crop
        return images.decode_crop(
            read(element["image"]),
            element_seed,
            training=False,
            resize_size=resize_size,
            crop_size=resize_size,
        )

    load.output_shape = (resize_size, resize_size, 3)
    ds = _decode_chunks(ds.batch(CHUNK), load, bad_files, deterministic=True)
    parts = [(batch_images.numpy(), labels.numpy()) for batch_images, labels, _ in ds]
    if not any(len(labels) for _, labels in parts):
        raise nothing_readable_error(bad_files)
    decoded = DecodedImages(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        bad_files.all(),
    )
    while _DECODED and sum(d.nbytes for d in _DECODED.values()) + decoded.nbytes > budget:
        del _DECODED[next(iter(_DECODED))]
    _DECODED[key] = decoded
    return decoded


def _from_memory(
    decoded,
    bad_files,
    crop,
    *,
    batch_size,
    elements_per_step,
    training,
    augment,
    seed,
    input_context,
    skip_steps,
):
    """make_dataset's pipeline over decoded images: shuffled indices (per pass, seeded),
    a stateless seed per element for its crop and mirror, as the on-the-fly pipeline.
    batch_size: this replica's; elements_per_step: this input pipeline's."""
    for name, reason in decoded.bad.items():
        bad_files.add(name, reason)
    images_in_memory = tf.constant(decoded.images)
    labels = tf.constant(decoded.labels)
    ds = tf.data.Dataset.range(len(decoded.labels))
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(decoded.labels), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = tf.data.Dataset.zip(ds, _element_seeds(training, seed))
    if training and skip_steps:
        ds = ds.skip(skip_steps * elements_per_step)

    def take(index, element_seed):
        image = images.crop_mirror(images_in_memory[index], element_seed, training=augment, **crop)
        return image, labels[index]

    ds = ds.map(take, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


def _keep_part(ds, holdout):
    """The examples of a holdout's part (see make_dataset's `holdout`), or all of them."""
    if holdout is None:
        return ds
    part, fraction, holdout_seed = holdout
    return ds.filter(
        lambda e: tf.equal(in_holdout(e["name"], fraction, holdout_seed), part == "held")
    )


def _element_seeds(training, seed=0):
    """A stateless seed per element, so crops and mirrors do not depend on thread timing
    (all zeros when not training: centre crops)."""
    if training:
        return tf.data.Dataset.random(seed=seed).batch(2)
    return tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()


def _decode_chunks(chunks, load, bad_files, deterministic):
    """Decodes chunks of elements in parallel, naming the files that fail (_decode_chunk)."""
    return chunks.interleave(
        _decode_chunk(load, bad_files),
        cycle_length=2 * (os.cpu_count() or 2),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def in_holdout(names, fraction, seed):
    """Whether each file (by its base name) is in the seeded held-out `fraction`.

    A hash of the name, not a random draw: the same files are held out by every run, in
    any reading order, on any worker; it runs on file names before any decoding.
    """
    base = tf.strings.regex_replace(names, r"^.*[/\\]", "")
    bucket = tf.strings.to_hash_bucket_fast(
        tf.strings.join([str(int(seed)), ":", base]), HOLDOUT_BUCKETS
    )
    return bucket < int(round(fraction * HOLDOUT_BUCKETS))


def probe_batch(source, class_indices, *, size, resize_size, crop_size):
    """A fixed validation batch drawn across all classes of the half (round robin).

    The per-layer logger's activations and gradients are computed on it, so it must
    represent the half, not the first few classes of a class-sorted file list.
    Returns (uint8 images [k, crop, crop, 3], int64 labels [k]), k <= size.
    """
    picked = source.probe_examples(
        class_indices,
        size,
        lambda encoded: images.preprocess(
            encoded, training=False, resize_size=resize_size, crop_size=crop_size
        ),
    )
    return (
        tf.stack([image for image, _ in picked]),
        tf.constant([label for _, label in picked], tf.int64),
    )


def run_seed(config, dataset):
    """The seed of a run's initialization and data order: train.seed, plus k on a seeded
    replicate split <split>.s<k> (splits.py), so its networks are other draws."""
    return int(config.train.seed) + dataset.split.seed_offset


def make_run_inputs(config, dataset, class_indices, strategy, bad_files, holdout=None):
    """The inputs of one run on one half.

    Returns:
      (train, val, probe): `train(steps_done)` gives the distributed training pipeline
      from that step on (a resumed run continues the stream); `val` the distributed
      validation pipeline; `probe` a fixed undistributed validation batch across the
      half's classes (the per-layer logger's). With `holdout=(fraction, seed)`, training
      reads all but that part of the training images, and a 4th item is the held-out
      part as a distributed evaluation pipeline.
    """
    dc = config.dataset
    # A smaller target task (train.target_images_per_class): the same seeded sample of
    # each class for every network of the split; validation reads every image.
    source = dataset.source.with_train_per_class(
        config.train.get("target_images_per_class", 0), run_seed(config, dataset)
    )
    kwargs = dict(
        resize_size=dc.resize_size,
        crop_size=config.model.input_size,
        batch_size=config.train.batch_size,
        seed=run_seed(config, dataset),
        deterministic=dc.deterministic,
        bad_files=bad_files,
        memory_budget=int(dc.get("decoded_cache_mb", 0) * 2**20),
    )

    def pipeline(subset, training, skip_steps=0, part=None):
        # Each input pipeline (worker) reads its share; replicas split the global batch.
        held = (part, *holdout) if holdout else None

        def make(ctx=None):
            return make_dataset(
                source,
                subset,
                class_indices,
                training=training,
                input_context=ctx,
                skip_steps=skip_steps,
                holdout=held,
                **kwargs,
            )

        if not isinstance(strategy, tf.distribute.Strategy):
            return make()  # JAX: Keras' fit shards each global batch over the devices
        return strategy.distribute_datasets_from_function(make)

    probe = probe_batch(
        dataset.source,
        class_indices,
        size=config.train.batch_size,
        resize_size=dc.resize_size,
        crop_size=config.model.input_size,
    )
    inputs = (
        lambda steps_done: pipeline("train", True, steps_done, part="rest"),
        pipeline("val", False),
        probe,
    )
    if holdout:
        inputs += (pipeline("train", False, part="held"),)
    return inputs
