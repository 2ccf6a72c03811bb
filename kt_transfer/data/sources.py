"""Where the images come from, and the class split applied to them.

A source is a `FolderSource` (an ImageNet-style folder, the embedded dataset included),
a `TfdsSource` (a prepared TFDS builder), or a `JoinedSource`: two of them, a source
dataset and a target dataset, whose split `cross` has the source's classes as half A and
the target's as half B (config.source_dataset). Each owns its listing, reading and checks, so
nothing else asks which kind it is. `resolve_dataset` turns a config into a
`Dataset` (source + split), generating the embedded dataset if needed, and checks before
any training that every class of the split has images. The tf.data pipelines that read a
Dataset are in pipeline.py.
"""

import collections
import dataclasses
import os

from kt_transfer.data import embedded, splits, tfds_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class FolderSource:
    """An ImageNet-style folder: train/<class>/*, <val_split>/<class>/*; class index =
    position of the class folder in sorted order (for ImageNet wnids, TFDS's labels.txt
    order). The embedded dataset is one, generated."""

    root: str
    classes: list  # class names in class-index order
    val_split: str = "val"
    # >0: read at most this many training images of each class, a seeded sample
    # (train.target_images_per_class: a smaller target task); validation is untouched.
    train_per_class: int = 0
    sample_seed: int = 0

    def describe(self):
        if self.train_per_class:
            sample = f"{self.train_per_class} training images a class, seed {self.sample_seed}"
            return f"{self.root} ({sample})"
        return self.root

    def with_train_per_class(self, count, seed):
        """This source reading only `count` training images per class (0: all of them),
        the same sample for every network of a split (`seed`: its run seed)."""
        return dataclasses.replace(self, train_per_class=int(count), sample_seed=int(seed))

    def _list(self, subset, class_indices):
        paths, labels = list_files(self.root, self._subset(subset), self.classes, class_indices)
        if subset != "train" or not self.train_per_class:
            return paths, labels
        return sample_per_class(paths, labels, self.train_per_class, self.sample_seed)

    def groups(self):
        """Per-class man-made/natural groups, where the folder's classes.tsv has them."""
        return read_groups(self.root, len(self.classes))

    def _subset(self, subset):
        return subset if subset == "train" else self.val_split

    def examples(self, subset, class_indices, *, training, seed, input_context=None):
        """Encoded examples of the chosen classes before any decoding, as the pipeline
        reads them.

        Returns:
          (tf.data.Dataset of {"image": path, "label": 0..K-1, "name": path}, shuffled when
          training; the function that turns "image" into the encoded bytes; how many files
          one pass reads (the pipeline's watchdog stops after two passes that decode none)).
        """
        import numpy as np
        import tensorflow as tf

        paths, labels = self._list(subset, class_indices)
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": paths, "label": np.array(labels, np.int64), "name": paths}
        )
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return ds, tf.io.read_file, len(paths)

    def count(self, subset, class_indices):
        """How many images a pass of the half's `subset` reads."""
        return len(self._list(subset, class_indices)[0])

    def probe_examples(self, class_indices, size, load):
        """Up to `size` (image, label) validation examples drawn round robin across the
        classes (file lists are class-sorted); `load(encoded bytes)` decodes one, and a
        file that does not decode is passed over (training reports it)."""
        import tensorflow as tf

        paths, labels = list_files(self.root, self.val_split, self.classes, class_indices)
        by_class = collections.defaultdict(list)
        for path, label in zip(paths, labels):
            by_class[label].append(path)
        round_robin = [
            (files[rank], label)
            for rank in range(max(map(len, by_class.values())))
            for label, files in sorted(by_class.items())
            if rank < len(files)
        ]
        picked = []
        for path, label in round_robin:
            try:
                picked.append((load(tf.io.read_file(path)), label))
            except tf.errors.OpError:
                continue
            if len(picked) == size:
                break
        return picked

    def check_readable(self, class_indices):
        """Fails before training if a class of the split has no train or val images, or
        if no file of the half's train or val images decodes (all corrupt; git-lfs
        pointers named .jpg): training would otherwise wait forever for its first batch.

        Files are tried in order until one decodes, so a healthy half costs one decode.
        """
        from kt_transfer.data import images  # TensorFlow: only once there is a folder

        for subset in ("train", self.val_split):
            paths, _ = list_files(self.root, subset, self.classes, class_indices)
            if any(images.decodes(path) for path in paths):
                continue
            reasons = "; ".join(
                f"{os.path.relpath(p, self.root)}: {images.describe_bad_file(p)}"
                for p in paths[:REASONS_SHOWN]
            )
            raise NoReadableImagesError(
                f"none of the {len(paths)} {subset} images of this half "
                f"({len(class_indices)} classes) under {os.path.join(self.root, subset)} "
                f"can be decoded (the first: {reasons}); replace them with real images, or "
                "point --config.dataset.data_dir at another folder"
            )


@dataclasses.dataclass
class TfdsSource:
    """A prepared TFDS builder; the label feature's names are the classes."""

    builder: object
    classes: list
    val_split: str

    FILES_PER_PASS = 5_000  # for the pipeline's watchdog: TFDS examples rarely fail to decode

    def describe(self):
        return f"TFDS {self.builder.info.full_name}"

    def groups(self):
        return None

    def with_train_per_class(self, count, seed):
        """A TFDS split has no file listing to sample from without reading it whole."""
        if count:
            raise ValueError(
                "train.target_images_per_class needs a folder dataset (embedded or folder): "
                "export the TFDS data as a folder (docs/data.md) and use "
                "--config.dataset.name=folder, or set --config.train.target_images_per_class=0"
            )
        return self

    def examples(self, subset, class_indices, *, training, seed, input_context=None):
        """As FolderSource.examples: the examples hold the encoded image itself. The label
        filter runs before any decoding."""
        import tensorflow as tf

        split = "train" if subset == "train" else self.val_split
        ds = tfds_source.read(
            self.builder,
            split,
            class_indices,
            training=training,
            seed=seed,
            input_context=input_context,
        )
        if training:
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        return ds, tf.identity, self.FILES_PER_PASS

    def count(self, subset, class_indices):
        """About how many images a pass of the half's `subset` reads: the split's size
        times the half's share of the classes (TFDS does not count per class); None when
        the builder does not say."""
        split = "train" if subset == "train" else self.val_split
        try:
            total = self.builder.info.splits[split].num_examples
        except KeyError:  # a builder without split metadata (tfds.testing.mock_data)
            return None
        return -(-total * len(class_indices) // len(self.classes))

    def probe_examples(self, class_indices, size, load):
        """TFDS validation splits are not sorted by class: the first examples of each
        class, as many per class as `size` needs."""
        import tensorflow as tf

        per_class = -(-size // len(class_indices))
        counts, picked = collections.Counter(), []
        examples = tfds_source.read(
            self.builder, self.val_split, class_indices, training=False, seed=0
        )
        for example in examples:
            label = int(example["label"])
            if counts[label] >= per_class:
                continue
            try:
                image = load(example["image"])
            except tf.errors.OpError:  # an undecodable example: training reports it
                continue
            counts[label] += 1
            picked.append((image, label))
            if len(picked) == size:
                break
        return picked

    def check_readable(self, class_indices):
        """TFDS checks its own files when it prepares them; nothing to look at here."""


@dataclasses.dataclass
class JoinedSource:
    """Two datasets read as one: the source's classes, then the target's (class names
    prefixed "source/" and "target/"). A half of the cross split lies in one of them,
    and every read is handed to that one with its own class indices, so each keeps its
    own listing, decoding and checks.
    """

    source: object  # FolderSource | TfdsSource
    target: object

    @property
    def classes(self):
        return [f"source/{c}" for c in self.source.classes] + [
            f"target/{c}" for c in self.target.classes
        ]

    def describe(self):
        return f"source {self.source.describe()}; target {self.target.describe()}"

    def groups(self):
        return None  # the man-made/natural split is a split of one dataset

    def with_train_per_class(self, count, seed):
        """A smaller target task: the target's training images are sampled, the source
        keeps all of its own (the source's base is trained with count 0 anyway)."""
        return dataclasses.replace(self, target=self.target.with_train_per_class(count, seed))

    def _part(self, class_indices):
        """(the dataset, the indices in it) holding every class of `class_indices`."""
        boundary = len(self.source.classes)
        if all(i < boundary for i in class_indices):
            return self.source, list(class_indices)
        if all(i >= boundary for i in class_indices):
            return self.target, [i - boundary for i in class_indices]
        raise ValueError(
            "a half of two joined datasets must lie in one of them: use "
            f"--config.split={splits.CROSS} (half A: the source, half B: the target)"
        )

    def examples(self, subset, class_indices, *, training, seed, input_context=None):
        part, indices = self._part(class_indices)
        return part.examples(
            subset, indices, training=training, seed=seed, input_context=input_context
        )

    def count(self, subset, class_indices):
        part, indices = self._part(class_indices)
        return part.count(subset, indices)

    def probe_examples(self, class_indices, size, load):
        part, indices = self._part(class_indices)
        return part.probe_examples(indices, size, load)

    def check_readable(self, class_indices):
        part, indices = self._part(class_indices)
        part.check_readable(indices)


def folder_source(root):
    return FolderSource(root, list_classes(root))


def tfds_source_from_config(dataset_config, log=print):
    builder = tfds_source.load_builder(
        dataset_config.tfds_name, dataset_config.data_dir, dataset_config.tfds_manual_dir, log
    )
    return TfdsSource(
        builder,
        list(builder.info.features["label"].names),
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


def sample_per_class(paths, labels, count, seed):
    """At most `count` (path, label) of each label: a seeded random sample of the class's
    sorted files, kept in listing order (the same sample whatever else is listed)."""
    import numpy as np

    chosen = set()
    by_label = collections.defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    for label, indices in by_label.items():
        rng = np.random.default_rng([int(seed), int(label), len(indices)])
        chosen.update(indices[j] for j in rng.permutation(len(indices))[:count])
    keep = sorted(chosen)
    return [paths[i] for i in keep], [labels[i] for i in keep]


class NoReadableImagesError(ValueError):
    """Not one image of a half's training (or validation) files can be decoded."""


REASONS_SHOWN = 3


@dataclasses.dataclass
class Dataset:
    """A resolved image source and the class split applied to it."""

    name: str  # embedded, folder, the TFDS name, or <source>-to-<target>: under the workdir
    source: FolderSource | TfdsSource | JoinedSource
    split: splits.Split
    groups: list = None  # per-class man-made/natural, where the dataset has them

    @property
    def classes(self):
        return self.source.classes

    def with_split(self, name):
        """The same images under another split (a replicated grid's splits), checked."""
        if name == self.split.name:
            return self
        split = _split_of(self.source, name, self.groups)
        for half in ("A", "B"):
            self.source.check_readable(split.half(half))
        return dataclasses.replace(self, split=split)


def resolve_dataset(config, log=print):
    """Finds (or, for the embedded dataset, generates) the images and the split.

    Raises (before any training), naming the flag or file to fix:
      FileNotFoundError: no such folder, no train/ in it, a class of the split without
        train or val images, imagenet2012's tar files missing from TFDS's manual dir.
      ValueError: unknown dataset or split.
    """
    source, name = _image_source(config.dataset, "dataset", log)
    source_dc = config.get("source_dataset")
    if source_dc is not None and source_dc.name:
        # Between two datasets: the base on the source, the transfers to the target.
        origin, origin_name = _image_source(source_dc, "source_dataset", log)
        source, name = JoinedSource(origin, source), f"{origin_name}-to-{name}"
    groups = source.groups()
    split = _split_of(source, config.split, groups)
    for half in ("A", "B"):
        source.check_readable(split.half(half))
    return Dataset(name, source, split, groups)


def _split_of(source, name, groups):
    """The split `name` of a source: two joined datasets have the source/target split
    (cross), one dataset the random, natman or whole splits."""
    if isinstance(source, JoinedSource):
        return splits.cross_split(name, len(source.source.classes), len(source.target.classes))
    return splits.make_split(name, len(source.classes), groups)


def _image_source(dc, key, log):
    """(source, name) of one dataset config (`key`: its place in the config, for errors)."""
    if dc.name == "embedded":
        spec = embedded.EmbeddedSpec(**dc.embedded.to_dict())
        root = embedded.ensure_dataset(spec, cache_dir=dc.data_dir or None, log=log)
        return folder_source(root), "embedded"
    if dc.name == "folder":
        if not dc.data_dir or not os.path.isdir(dc.data_dir):
            raise FileNotFoundError(
                f"dataset folder {dc.data_dir!r} does not exist: set "
                f"--config.{key}.data_dir to an ImageNet-style folder (train/, val/)"
            )
        return folder_source(dc.data_dir), "folder"
    if dc.name == "tfds":
        return tfds_source_from_config(dc, log), dc.tfds_name.replace("/", "_")
    raise ValueError(
        f"unknown --config.{key}.name={dc.name!r}; use embedded, folder "
        f"or tfds (with --config.{key}.tfds_name)"
    )


def read_groups(root, num_classes):
    """Per-class man-made/natural groups from classes.tsv, if the folder has one."""
    path = os.path.join(root, "classes.tsv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f.readlines()[1:]]
    return [row[2] for row in rows] if len(rows) == num_classes else None
