"""Prints the classes in each half of a split, as JSON.

    python tools/split_info.py --split=random0 --dataset=imagenet2012
    python tools/split_info.py --split=natman --dataset=embedded

Output: {"split", "dataset", "A": [class indices], "B": [...], "A_names", "B_names",
"A_md5", "B_md5"}; the md5s are of the index lists as in the paper's reference table.
--dataset: imagenet2012 (1000 classes, wnids from TFDS's labels.txt), embedded (the
generated default dataset), or any TFDS image classification dataset name.
"""

import importlib.util
import json
import os

from absl import app, flags

from kt_transfer.data import embedded, splits

flags.DEFINE_string("split", "random0", "random<seed> or natman")
flags.DEFINE_string("dataset", "imagenet2012", "imagenet2012, embedded, or a TFDS name")
flags.DEFINE_integer("num_classes", 100, "classes of the embedded dataset")
FLAGS = flags.FLAGS


def imagenet_wnids():
    """TFDS's labels.txt, read without importing TensorFlow."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    path = os.path.join(
        spec.submodule_search_locations[0], "datasets", "imagenet2012", "labels.txt"
    )
    with open(path) as f:
        return f.read().split()


def class_names_and_groups(dataset):
    if dataset == "imagenet2012":
        return imagenet_wnids(), None
    if dataset == "embedded":
        specs = embedded.class_specs(FLAGS.num_classes)
        return [s.folder for s in specs], [s.group for s in specs]
    import tensorflow_datasets as tfds  # any other TFDS dataset: its label feature

    label = tfds.builder(dataset).info.features["label"]
    return list(label.names), None


def main(argv):
    del argv
    names, groups = class_names_and_groups(FLAGS.dataset)
    split = splits.make_split(FLAGS.split, len(names), groups)
    out = {"split": split.name, "dataset": FLAGS.dataset}
    for half in "AB":
        indices = list(split.half(half))
        out[half] = indices
        out[f"{half}_names"] = [names[i] for i in indices]
        out[f"{half}_md5"] = splits.index_md5(indices)
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
