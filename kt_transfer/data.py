"""ImageNet-style folders (`train/<class>/*`, `val/<class>/*`) -> class-split tf.data.

Class index = position of the class folder in sorted order (for ImageNet wnids this is
TFDS's labels.txt order). Only the split's class folders are listed, so the other half
costs nothing. Within a half, labels are remapped to 0..K-1 in the split's order.
The embedded dataset and a real ImageNet directory take this same path.
"""

import os

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


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
    """(paths, labels) of the chosen classes; label = position in class_indices."""
    paths, labels = [], []
    for label, index in enumerate(class_indices):
        folder = os.path.join(root, subset, classes[index])
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)) \
            if os.path.isdir(folder) else []
        if not names:
            raise FileNotFoundError(
                f"class {classes[index]!r} has no images in {folder!r}; every class of the "
                "split needs images in both train/ and val/")
        paths += [os.path.join(folder, n) for n in names]
        labels += [label] * len(names)
    return paths, labels


def preprocess(image_bytes, label, *, training, resize_size, crop_size, mean_rgb, scale=1.0,
               seed=None):
    """Caffe's preprocessing: resize, crop (random when training), mirror, subtract mean.

    Pixels are (value in [0, 255] - mean) * scale; scale is 1 in the paper (Caffe's
    transform_param `scale`).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(image, [resize_size, resize_size])
    if training:
        image = tf.image.random_crop(image, [crop_size, crop_size, 3], seed=seed)
        image = tf.image.random_flip_left_right(image, seed=seed)
    else:
        offset = (resize_size - crop_size) // 2
        image = image[offset:offset + crop_size, offset:offset + crop_size, :]
    image = (image - tf.constant(mean_rgb, tf.float32)) * scale
    return image, label


def make_dataset(root, subset, class_indices, data_config, input_size, batch_size, *,
                 training, seed=0, classes=None):
    """A batched tf.data.Dataset of (image, label) for the chosen classes.

    Args:
      root: dataset folder.
      subset: "train" or "val".
      class_indices: sorted original class indices of the half to read.
      data_config: the `config.dataset` block (resize_size, mean_rgb).
      input_size: side of the crop fed to the network (`config.model.input_size`).
      batch_size: global batch size.
      training: shuffle, repeat, random crop and mirror; else one ordered pass.
      seed: shuffle/augmentation seed.
      classes: class folder names (listed from root when omitted).

    Returns:
      (dataset, number of examples).
    """
    classes = classes or list_classes(root)
    paths, labels = list_files(root, subset, classes, class_indices)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(
        lambda x, y: preprocess(x, y, training=training, resize_size=data_config.resize_size,
                                crop_size=input_size,
                                mean_rgb=list(data_config.mean_rgb),
                                scale=data_config.get("scale", 1.0)),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    return ds, len(paths)
