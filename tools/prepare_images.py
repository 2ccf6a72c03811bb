"""A resized copy of an image dataset that trains faster (kt_transfer/data/prepare.py).

    python tools/prepare_images.py --src=/data/imagenet --dst=/data/imagenet256 --size=256
    python tools/prepare_images.py --tfds_name=imagenet2012 --data_dir=~/tensorflow_datasets \
        --dst=/data/imagenet256 --size=256
    python -m kt_transfer.main --config=configs/imagenet_paper.py \
        --config.dataset.data_dir=/data/imagenet256 ...

Writes `--dst` as an ImageNet-style folder of --size x --size JPEGs (the paper's 256x256,
aspect ratio not kept), in parallel, resumable (run it again after a kill), unreadable
files reported, skipped and listed in <dst>/bad_files.tsv. Training on the copy takes the
pipeline's decode-only-the-crop path (tools/bench_input.py --prepared measures the gain).
"""

import os

from absl import app, flags

flags.DEFINE_string("src", "", "ImageNet-style folder (train/<class>/*, val/<class>/*)")
flags.DEFINE_string("tfds_name", "", "or a prepared TFDS dataset, e.g. imagenet2012")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (with --tfds_name)")
flags.DEFINE_string("tfds_val_split", "validation", "TFDS split written as val/")
flags.DEFINE_string("dst", "", "where the resized copy goes")
flags.DEFINE_integer("size", 256, "side of the resized images (the config's resize_size)")
flags.DEFINE_integer("workers", 0, "processes (0: one per CPU)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from kt_transfer.data import prepare

    if not FLAGS.dst or bool(FLAGS.src) == bool(FLAGS.tfds_name):
        raise app.UsageError("give --dst and one of --src or --tfds_name")
    if FLAGS.src:
        result = prepare.prepare_folder(FLAGS.src, FLAGS.dst, FLAGS.size, FLAGS.workers or None)
    else:
        import tensorflow_datasets as tfds

        builder = tfds.builder(FLAGS.tfds_name, data_dir=FLAGS.data_dir)
        result = prepare.prepare(
            prepare.tfds_jobs(builder, FLAGS.dst, FLAGS.size, FLAGS.tfds_val_split),
            FLAGS.dst,
            FLAGS.workers or None,
        )
    print(
        f"prepare: {result['written']} written, {result['skipped']} already there, "
        f"{len(result['bad'])} unreadable skipped"
        + (f" (listed in {os.path.join(FLAGS.dst, 'bad_files.tsv')})" if result["bad"] else "")
        + f" -> {FLAGS.dst}"
    )


if __name__ == "__main__":
    app.run(main)
