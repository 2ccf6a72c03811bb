"""tools/prepare_images.py: a resized copy that the pipeline reads by its fast path,
written in parallel and resumably, with unreadable files reported and skipped."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from PIL import Image

from kt_transfer.data import images, pipeline, prepare, sources


def _photo(rng, height, width):
    """Smooth, photo-like content (random pixels would be all JPEG noise)."""
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def _folder(root):
    rng = np.random.default_rng(0)
    for subset in ("train", "val"):
        for c in ("n001", "n002"):
            folder = root / subset / c
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = _photo(rng, int(rng.integers(90, 140)), 120)
                Image.fromarray(pixels).save(folder / f"{c}_{i}.JPEG", quality=90)
    Image.fromarray(np.full((100, 80), 128, np.uint8)).save(root / "train/n001/gray.png")
    (root / "train/n001/empty.JPEG").write_bytes(b"")
    (root / "train/n002/text.JPEG").write_text("not an image")
    good = (root / "train/n002/n002_0.JPEG").read_bytes()
    (root / "train/n002/truncated.JPEG").write_bytes(good[:200])
    (root / "classes.tsv").write_text("index\tfolder\tgroup\n0\tn001\tman-made\n1\tn002\tnatural\n")


def _run(src, dst):
    return subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "prepare_images.py"),
            f"--src={src}",
            f"--dst={dst}",
            "--size=72",
            "--workers=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_prepare_images_resizes_skips_bad_files_and_resumes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _folder(src)
    first = _run(src, dst)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "13 written, 0 already there, 3 unreadable skipped" in first.stdout
    bad = (dst / "bad_files.tsv").read_text()
    for name in ("empty.JPEG", "text.JPEG", "truncated.JPEG"):
        assert name in bad
    written = sorted(p for p in dst.rglob("*.JPEG"))
    assert len(written) == 13 and (dst / "train/n001/gray.JPEG").exists()
    for path in written:
        with Image.open(path) as image:
            assert image.size == (72, 72) and image.mode == "RGB"
    assert (dst / "classes.tsv").read_text() == (src / "classes.tsv").read_text()
    # Resumable: a copy interrupted after some files finishes the rest only.
    (dst / "train/n001/n001_1.JPEG").unlink()
    before = (dst / "train/n001/n001_0.JPEG").stat().st_mtime_ns
    again = _run(src, dst)
    assert "1 written, 12 already there" in again.stdout, again.stdout
    assert (dst / "train/n001/n001_0.JPEG").stat().st_mtime_ns == before
    # The training pipeline reads the copy: stored at the resize size, so each crop is
    # decoded alone; it matches the original resized on the fly within JPEG rounding.
    source = sources.folder_source(str(dst))
    batch, _ = next(
        iter(
            pipeline.make_dataset(
                source, "val", [0, 1], resize_size=72, crop_size=67, batch_size=12, training=False
            )
        )
    )
    assert batch.shape == (6, 67, 67, 3)
    original = tf.io.read_file(str(src / "val/n001/n001_0.JPEG"))
    on_the_fly = images.preprocess(original, training=False, resize_size=72, crop_size=67)
    copied = images.preprocess(
        tf.io.read_file(str(dst / "val/n001/n001_0.JPEG")),
        training=False,
        resize_size=72,
        crop_size=67,
    )
    diff = np.abs(on_the_fly.numpy().astype(int) - copied.numpy().astype(int))
    assert diff.mean() < 2  # the copy's q95 JPEG and 8-bit rounding


def test_resize_bytes_matches_the_pipelines_resize():
    pixels = _photo(np.random.default_rng(1), 150, 210)
    png = tf.io.encode_png(pixels).numpy()
    ours = images.resize(tf.constant(pixels), 64).numpy()
    with Image.open(__import__("io").BytesIO(prepare.resize_bytes(png, 64))) as image:
        copied = np.asarray(image, np.float32)
    assert copied.shape == (64, 64, 3)
    assert np.abs(copied - ours).mean() < 2  # q95 JPEG of the same antialiased resize
