"""TensorFlow Datasets as a source: imagenet2012 (manual download) or any image dataset.

Images are read still encoded (`tfds.decode.SkipDecoding`), filtered on the label, and
only the split's examples are decoded, by the same code as image folders (images.py).
Class index = TFDS's label index; for imagenet2012 that is the sorted-wnid order of its
labels.txt, the same order an ImageNet folder's sorted class folders give.
"""

import os

# imagenet2012 cannot be downloaded: its tar files are placed in TFDS's manual directory.
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


def manual_dir(data_dir, configured=""):
    """TFDS's manual directory: `<data_dir>/downloads/manual` unless configured."""
    if configured:
        return configured
    import tensorflow_datasets as tfds

    return os.path.join(data_dir or tfds.core.constants.DATA_DIR, "downloads", "manual")


def load_builder(name, data_dir="", configured_manual_dir="", log=print):
    """The prepared TFDS builder of `name`, preparing it first if needed.

    Raises:
      FileNotFoundError: imagenet2012 is not prepared and its tar files are not in the
        manual directory (the message names both files and the directory).
      ValueError: `name` is not a TFDS dataset with an image and a class label.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"--config.dataset.tfds_name={name!r} is not a TFDS dataset "
            "(see https://www.tensorflow.org/datasets/catalog)"
        ) from None
    features = builder.info.features
    if (
        "image" not in features
        or "label" not in features
        or not hasattr(features["label"], "num_classes")
    ):
        raise ValueError(
            f"TFDS dataset {name!r} has no 'image' and class 'label' features; "
            "kt_transfer needs an image classification dataset"
        )
    if not builder.is_prepared():
        manual = manual_dir(data_dir, configured_manual_dir)
        needed = MANUAL_FILES.get(name.split("/")[0], ())
        missing = [f for f in needed if not os.path.exists(os.path.join(manual, f))]
        if missing:
            raise FileNotFoundError(
                f"TFDS {name} is not prepared and needs {' and '.join(needed)} (from "
                f"image-net.org) in its manual directory {manual!r}; missing: "
                f"{', '.join(missing)}. Place them there (or set "
                "--config.dataset.tfds_manual_dir), then run again: the dataset is prepared "
                "once, before training."
            )
        log(f"Preparing TFDS {name} in {builder.data_dir} (once; may take hours for ImageNet)")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual)
        )
    return builder


def val_split(builder, configured=""):
    """The evaluation split: configured, else 'validation' if the dataset has one, else
    'test' (cifar100 has no validation split)."""
    if configured:
        return configured
    splits = builder.info.splits
    return "test" if splits and "validation" not in splits else "validation"


def read(builder, split, class_indices, *, training, seed, input_context=None):
    """Encoded examples of the chosen classes: {"image": bytes, "label": 0..K-1, "name"}.

    The label filter runs before any decoding. With an input context (several workers or
    input pipelines), each reads its own files when the split has enough of them, else its
    own share of examples.
    """
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    num_classes = builder.info.features["label"].num_classes
    remap = np.full(num_classes, -1, np.int64)
    remap[list(class_indices)] = np.arange(len(class_indices))
    remap = tf.constant(remap)
    info_splits = builder.info.splits
    shards = info_splits[split].num_shards if info_splits and split in info_splits else 1
    per_file = input_context is not None and shards >= input_context.num_input_pipelines
    read_config = tfds.ReadConfig(
        shuffle_seed=seed, input_context=input_context if per_file else None, try_autocache=False
    )
    ds = builder.as_dataset(
        split=split,
        shuffle_files=training,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    if input_context is not None and not per_file:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    features = builder.info.features
    name_key = next((k for k in ("file_name", "id") if k in features), None)

    def relabel(example):
        return {
            "image": example["image"],
            "label": tf.gather(remap, example["label"]),
            "name": example[name_key] if name_key else tf.constant(""),
        }

    return ds.filter(lambda ex: tf.gather(remap, ex["label"]) >= 0).map(relabel)
