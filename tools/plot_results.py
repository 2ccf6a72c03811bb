"""Table and figure of every finished run under a workdir.

    python tools/plot_results.py --workdir=workdir [--paper]

Writes results.csv and results.md (mode, n, top-1, top-5, the base for comparison) and
results_<dataset>_<split>_<id>.png: top-1 against n for BnB, BnB+, AnB, AnB+ and RnB,
baseB dashed; --paper overlays the published ImageNet numbers (dotted).
"""

from absl import app, flags

from kt_transfer.analysis import results
from kt_transfer.training import keras_compat

flags.DEFINE_string("workdir", "workdir", "workdir of kt_transfer runs")
flags.DEFINE_string("out", None, "where to write (default: the workdir)")
flags.DEFINE_bool("paper", False, "overlay the paper's published numbers")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    for path in results.write_report(FLAGS.workdir, FLAGS.out, FLAGS.paper):
        print(path)


if __name__ == "__main__":
    # TensorFlow's and the CUDA runtime's start-up lines, as the CLI hides them.
    with keras_compat.quiet_native_stderr():
        keras_compat.probe_devices()
    app.run(main)
