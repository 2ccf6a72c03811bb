"""A run's record: its metrics.json and config.json (about 12 kB), without its weights.

Records are what a grid's report reads and what tells the grid a cell is finished, so a
copy of them, kept where it outlives the machine (a directory under version control,
shared storage), carries a long grid across sessions and machines: restored into an
empty workdir, the grid skips every finished cell. `--config.grid.records_dir` keeps
that copy current as the grid runs (each cell's record as it finishes, the ones there
restored first); tools/grid_records.py saves and restores by hand.

A record lives at <dataset>/<split>/<experiment>/<run>/ as in the workdir.
"""

import glob
import os
import shutil

RECORD_FILES = ("metrics.json", "config.json")


def runs_with_records(root):
    """Relative paths <dataset>/<split>/<experiment>/<run> that have a metrics.json."""
    return sorted(
        os.path.relpath(os.path.dirname(path), root)
        for path in glob.glob(os.path.join(root, "*", "*", "*", "*", "metrics.json"))
    )


def copy_run(source_root, dest_root, run):
    """Copies one run's record files, each replaced atomically."""
    target = os.path.join(dest_root, run)
    os.makedirs(target, exist_ok=True)
    for name in RECORD_FILES:
        path = os.path.join(source_root, run, name)
        if os.path.exists(path):
            shutil.copyfile(path, os.path.join(target, name) + ".tmp")
            os.replace(os.path.join(target, name) + ".tmp", os.path.join(target, name))


def copy_records(source_root, dest_root, overwrite, dataset=None):
    """Copies the records of every run (of one `dataset`'s directory, if given); returns
    (copied, skipped) counts. Without `overwrite`, a run that already has a record at
    the destination keeps it."""
    copied = skipped = 0
    for run in runs_with_records(source_root):
        if dataset is not None and run.split(os.sep)[0] != dataset:
            continue
        if not overwrite and os.path.exists(os.path.join(dest_root, run, "metrics.json")):
            skipped += 1
            continue
        copy_run(source_root, dest_root, run)
        copied += 1
    return copied, skipped
