"""Input pipeline throughput: kt_transfer's against the one a Keras user would write, and
on a prepared (pre-resized) copy against the originals and the bare decode limit.

    python tools/bench_input.py                       # generates ImageNet-sized JPEGs once
    python tools/bench_input.py --data_dir=/data/imagenet --classes=100

Prints images/s, in one run on the same cores, of
  - kt_transfer's pipeline on the original JPEGs (decoded whole, resized on the fly);
  - the same pipeline on a copy made by tools/prepare_images.py (decodes the crop only);
  - the bare decode limit: tf.io.decode_jpeg of the original files, nothing else;
and their ratios; then
  - kt_transfer's training pipeline (pipeline.make_dataset: resize 256, random 227 crop, mirror,
    bad-file handling; 8-bit output, the network subtracts the mean), reading all classes;
  - keras.utils.image_dataset_from_directory(image_size=256) + RandomCrop(227) +
    RandomFlip layers, the same output size: with its default bilinear resize, which does
    not antialias, and with interpolation="area", its one antialiased resize (tf.image's
    area filter), the like-for-like comparison for kt_transfer's antialiased resize;
and their ratios; then kt_transfer reading one half of the classes against all of them
(the other half must cost nothing). Rounds alternate between the pipelines, and the median
round is reported, so a background load affects all alike.
"""

import os
import statistics
import tempfile
import time

from absl import app, flags

flags.DEFINE_string(
    "data_dir",
    "",
    "ImageNet-style folder (train/<class>/*.JPEG); default: generate one in --cache_dir",
)
flags.DEFINE_string(
    "cache_dir",
    os.path.join(tempfile.gettempdir(), "kt_transfer_bench_input"),
    "where the generated images are kept between runs",
)
flags.DEFINE_integer("classes", 20, "classes to generate")
flags.DEFINE_integer("per_class", 60, "images per class to generate")
flags.DEFINE_integer("resize", 256, "resize size (the paper's 256)")
flags.DEFINE_integer("crop", 227, "crop size (the paper's 227)")
flags.DEFINE_integer("batch", 64, "batch size")
flags.DEFINE_integer("batches", 25, "timed batches per round")
flags.DEFINE_integer("rounds", 3, "rounds per pipeline (median reported)")
flags.DEFINE_string(
    "prepared_dir",
    "",
    "the prepared copy (default: made once under --cache_dir by tools/prepare_images.py's code)",
)
FLAGS = flags.FLAGS


def generate_images(root, classes, per_class):
    """JPEGs of 300..500 px a side with smooth, photo-like content (quality 90)."""
    import numpy as np
    from PIL import Image

    marker = os.path.join(root, f"COMPLETE-{classes}x{per_class}")
    if os.path.exists(marker):
        return root
    rng = np.random.default_rng(0)
    for c in range(classes):
        for subset, count in (("train", per_class), ("val", 2)):
            folder = os.path.join(root, subset, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(300, 501, 2))
                coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), np.uint8)
                image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
                noise = rng.normal(0, 8, (height, width, 3))
                pixels = np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{c}_{i}.JPEG"), quality=90)
    open(marker, "w").close()
    return root


def images_per_second(dataset, batches, batch_size):
    iterator = iter(dataset)
    next(iterator)  # warm up: threads started, buffers filled
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def kt_pipeline(source, class_indices):
    from kt_transfer.data import pipeline

    return pipeline.make_dataset(
        source,
        "train",
        class_indices,
        resize_size=FLAGS.resize,
        crop_size=FLAGS.crop,
        batch_size=FLAGS.batch,
        training=True,
        seed=0,
    )


def bare_decode(root):
    """The decode limit: read and decode every original JPEG in parallel, nothing else
    (no resize, crop or batching of pixels; the decoded shapes are batched)."""
    import tensorflow as tf

    files = tf.data.Dataset.list_files(os.path.join(root, "train", "*", "*"), seed=0)
    ds = files.repeat().map(
        lambda path: tf.shape(tf.io.decode_jpeg(tf.io.read_file(path))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return ds.batch(FLAGS.batch).prefetch(tf.data.AUTOTUNE)


def prepared_copy(root):
    from kt_transfer.data import prepare

    dst = FLAGS.prepared_dir or os.path.join(FLAGS.cache_dir, f"prepared-{FLAGS.resize}")
    if not os.path.exists(os.path.join(dst, prepare.COMPLETE)):
        prepare.prepare_folder(root, dst, FLAGS.resize, log=lambda *_: None)
    return dst


def keras_pipeline(root, interpolation="bilinear"):
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        os.path.join(root, "train"),
        image_size=(FLAGS.resize, FLAGS.resize),
        interpolation=interpolation,
        batch_size=FLAGS.batch,
        shuffle=True,
        seed=0,
        verbose=False,
    )
    augment = keras.Sequential(
        [keras.layers.RandomCrop(FLAGS.crop, FLAGS.crop), keras.layers.RandomFlip("horizontal")]
    )
    ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.repeat().prefetch(tf.data.AUTOTUNE)


def measure(pipelines):
    """{name: median images/s}, rounds alternating between the pipelines."""
    rates = {name: [] for name in pipelines}
    for _ in range(FLAGS.rounds):
        for name, make in pipelines.items():
            rates[name].append(images_per_second(make(), FLAGS.batches, FLAGS.batch))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kt_transfer.data import sources

    root = FLAGS.data_dir or generate_images(FLAGS.cache_dir, FLAGS.classes, FLAGS.per_class)
    source = sources.folder_source(root)
    every = list(range(len(source.classes)))
    half = every[::2]
    print(
        f"{root}: {len(source.classes)} classes; resize {FLAGS.resize}, crop {FLAGS.crop}, "
        f"batch {FLAGS.batch}, {FLAGS.batches} batches x {FLAGS.rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    prepared = sources.folder_source(prepared_copy(root))
    rates = measure(
        {
            "originals": lambda: kt_pipeline(source, every),
            "prepared": lambda: kt_pipeline(prepared, every),
            "decode": lambda: bare_decode(root),
        }
    )
    print(f"kt_transfer pipeline, original JPEGs        {rates['originals']:8.0f} images/s")
    print(f"kt_transfer pipeline, prepared copy         {rates['prepared']:8.0f} images/s")
    print(f"bare decode of the original JPEGs           {rates['decode']:8.0f} images/s")
    print(
        f"ratio prepared / originals                  {rates['prepared'] / rates['originals']:8.2f}"
    )
    print(
        f"ratio originals / bare decode               {rates['originals'] / rates['decode']:8.2f}"
    )
    print(f"ratio prepared / bare decode                {rates['prepared'] / rates['decode']:8.2f}")
    rates = measure(
        {
            "kt_transfer": lambda: kt_pipeline(source, every),
            "keras": lambda: keras_pipeline(root),
            "keras_area": lambda: keras_pipeline(root, "area"),
        }
    )
    print(f"kt_transfer pipeline (all classes)          {rates['kt_transfer']:8.0f} images/s")
    print(f"keras image_dataset_from_directory + layers {rates['keras']:8.0f} images/s")
    print(f"  the same, interpolation='area' (antialiased) {rates['keras_area']:5.0f} images/s")
    print(
        f"ratio kt_transfer / keras                   {rates['kt_transfer'] / rates['keras']:8.2f}"
    )
    print(
        "ratio kt_transfer / keras, antialiased      "
        f"{rates['kt_transfer'] / rates['keras_area']:8.2f}"
    )
    halves = measure(
        {"half": lambda: kt_pipeline(source, half), "all": lambda: kt_pipeline(source, every)}
    )
    print(f"kt_transfer, one half of the classes        {halves['half']:8.0f} images/s")
    print(f"kt_transfer, all classes                    {halves['all']:8.0f} images/s")
    print(f"ratio half / all                            {halves['half'] / halves['all']:8.2f}")


if __name__ == "__main__":
    app.run(main)
