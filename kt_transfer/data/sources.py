"""Where the images come from, and the class split applied to them.

A `Source` is an ImageNet-style folder (`train/<class>/*`, `val/<class>/*`; class index =
position of the class folder in sorted order, which for ImageNet wnids is TFDS's
labels.txt order) or a prepared TFDS builder. `resolve_dataset` turns a config into a
`Dataset` (source + split), generating the embedded dataset if needed, and checks before
any training that every class of the split has images. The tf.data pipelines that read a
Dataset are in data.py.
"""

import dataclasses
import os

from kt_transfer.data import embedded, splits, tfds_source

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
    builder = tfds_source.load_builder(
        dataset_config.tfds_name, dataset_config.data_dir, dataset_config.tfds_manual_dir, log
    )
    return Source(
        "tfds",
        list(builder.info.features["label"].names),
        builder=builder,
        val_split=tfds_source.val_split(builder, dataset_config.tfds_val_split),
    )


def list_classes(root):
    """Sorted class folder names under root/train, with a clear error if there are none."""
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(
            f"no train/ folder in {root!r}: --config.dataset.data_dir must point to an "
            "ImageNet-style folder with train/<class>/ and val/<class>/ subfolders"
        )
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
                "must hold a folder for every class in train/"
            )
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise FileNotFoundError(
                f"class {classes[index]!r} has no images in {folder!r} (files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}); every class of the split needs images in "
                "both train/ and val/"
            )
        paths += [os.path.join(folder, n) for n in names]
        labels += [label] * len(names)
    return paths, labels


class NoReadableImagesError(ValueError):
    """Not one image of a half's training (or validation) files can be decoded."""


REASONS_SHOWN = 3


def check_readable(source, class_indices):
    """Fails before training if a class of the split has no train or val images, or if
    no file of the half's train or val images decodes (all corrupt; git-lfs pointers
    named .jpg): training would otherwise wait forever for its first batch.

    Files are tried in order until one decodes, so a healthy half costs one decode.
    """
    if source.kind != "folder":
        return
    from kt_transfer.data import images  # TensorFlow: only once there is a folder to check

    for subset in ("train", source.val_split):
        paths, _ = list_files(source.root, subset, source.classes, class_indices)
        if any(images.decodes(path) for path in paths):
            continue
        reasons = "; ".join(
            f"{os.path.relpath(p, source.root)}: {images.describe_bad_file(p)}"
            for p in paths[:REASONS_SHOWN]
        )
        raise NoReadableImagesError(
            f"none of the {len(paths)} {subset} images of this half "
            f"({len(class_indices)} classes) under {os.path.join(source.root, subset)} can "
            f"be decoded (the first: {reasons}); replace them with real images, or point "
            "--config.dataset.data_dir at another folder"
        )


@dataclasses.dataclass
class Dataset:
    """A resolved image source and the class split applied to it."""

    name: str  # embedded, folder, or the TFDS name: the first level under the workdir
    source: Source
    split: splits.Split
    groups: list = None  # per-class man-made/natural, where the dataset has them

    @property
    def classes(self):
        return self.source.classes

    def with_split(self, name):
        """The same images under another split (a replicated grid's splits), checked."""
        if name == self.split.name:
            return self
        split = splits.make_split(name, len(self.classes), self.groups)
        for half in ("A", "B"):
            check_readable(self.source, split.half(half))
        return dataclasses.replace(self, split=split)


def resolve_dataset(config, log=print):
    """Finds (or, for the embedded dataset, generates) the images and the split.

    Raises (before any training), naming the flag or file to fix:
      FileNotFoundError: no such folder, no train/ in it, a class of the split without
        train or val images, imagenet2012's tar files missing from TFDS's manual dir.
      ValueError: unknown dataset or split.
    """
    dc = config.dataset
    groups = None
    if dc.name == "embedded":
        spec = embedded.EmbeddedSpec(**dc.embedded.to_dict())
        root = embedded.ensure_dataset(spec, cache_dir=dc.data_dir or None, log=log)
        source, name = folder_source(root), "embedded"
    elif dc.name == "folder":
        if not dc.data_dir or not os.path.isdir(dc.data_dir):
            raise FileNotFoundError(
                f"dataset folder {dc.data_dir!r} does not exist: set "
                "--config.dataset.data_dir to an ImageNet-style folder (train/, val/)"
            )
        source, name = folder_source(dc.data_dir), "folder"
    elif dc.name == "tfds":
        source = tfds_source_from_config(dc, log)
        name = dc.tfds_name.replace("/", "_")
    else:
        raise ValueError(
            f"unknown --config.dataset.name={dc.name!r}; use embedded, folder "
            "or tfds (with --config.dataset.tfds_name)"
        )
    if source.kind == "folder":
        groups = read_groups(source.root, len(source.classes))
    split = splits.make_split(config.split, len(source.classes), groups)
    for half in ("A", "B"):
        check_readable(source, split.half(half))
    return Dataset(name, source, split, groups)


def read_groups(root, num_classes):
    """Per-class man-made/natural groups from classes.tsv, if the folder has one."""
    path = os.path.join(root, "classes.tsv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f.readlines()[1:]]
    return [row[2] for row in rows] if len(rows) == num_classes else None
