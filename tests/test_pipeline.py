"""The input pipeline: class-split reading, the paper's crops and mirrors, determinism,
per-worker shares, bad files, and clear errors, on real image files."""

import hashlib
import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kt_transfer.data import embedded, images, pipeline, sources
from kt_transfer.networks import transfer
from kt_transfer.runs import experiment

SPEC = embedded.EmbeddedSpec(num_classes=6, train_per_class=3, val_per_class=2, image_size=72)
KW = dict(resize_size=72, crop_size=67)
IN_MEMORY = 2**30  # bytes: every test half fits


@pytest.fixture(params=[0, IN_MEMORY], ids=["on_the_fly", "decoded_once"])
def budget(request):
    """Both pipelines: decoding each pass, and decoding once into memory."""
    return request.param


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return embedded.ensure_dataset(
        SPEC, cache_dir=str(tmp_path_factory.mktemp("ds")), log=lambda *_: None
    )


def _encode(image, fmt, **kwargs):
    out = io.BytesIO()
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _ramp(height, width):
    """An image whose every pixel tells its position: R = row, G = column."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.uint8)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_folder_pipeline_reads_only_the_half_and_remaps_labels(tiny_root, budget):
    source = sources.folder_source(tiny_root)
    half = (4, 1, 5)  # the split's order, not sorted
    paths, labels = sources.list_files(tiny_root, "train", source.classes, half)
    assert {os.path.basename(os.path.dirname(p)) for p in paths} == {
        source.classes[i] for i in half
    }
    for path, label in zip(paths, labels):
        assert os.path.basename(os.path.dirname(path)) == source.classes[half[label]]
    ds = pipeline.make_dataset(
        source, "val", half, batch_size=4, training=False, memory_budget=budget, **KW
    )
    xs, ys = zip(*_batches(ds))
    assert sorted(np.concatenate(ys).tolist()) == [0, 0, 1, 1, 2, 2]
    assert xs[0].shape[1:] == (67, 67, 3) and xs[0].dtype == np.uint8


def test_centre_crop_and_random_crop_mirror_eager_and_in_map():
    ramp = _encode(_ramp(72, 72), "PNG")  # lossless, already at the resize size
    centre = images.preprocess(ramp, training=False, **KW).numpy()
    np.testing.assert_array_equal(centre, _ramp(72, 72)[2:69, 2:69])
    seen_mirrored = set()
    for seed in range(12):
        crop = images.preprocess(ramp, training=True, seed=(seed, 1), **KW).numpy()
        top, rows = int(crop[0, 0, 0]), crop[:, :, 0]
        columns = crop[0, :, 1]
        mirrored = columns[0] > columns[-1]
        seen_mirrored.add(bool(mirrored))
        left = int(columns.min())
        window = _ramp(72, 72)[top : top + 67, left : left + 67]
        expected = window[:, ::-1] if mirrored else window
        np.testing.assert_array_equal(crop, expected)
        assert 0 <= top <= 5 and 0 <= left <= 5 and rows.shape == (67, 67)
        in_map = next(
            iter(
                tf.data.Dataset.from_tensors(ramp).map(
                    lambda b: images.preprocess(b, training=True, seed=(seed, 1), **KW)
                )
            )
        ).numpy()
        np.testing.assert_array_equal(in_map, crop)
    assert seen_mirrored == {True, False}


def test_fused_jpeg_crop_is_exact_and_other_sizes_are_resized():
    photo = np.random.default_rng(0).integers(0, 255, (72, 72, 3), dtype=np.uint8)
    jpeg = _encode(photo, "JPEG", quality=90)
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    seed = tf.constant([3, 4], tf.int64)
    fused = images.decode_crop(jpeg, seed, training=True, resize_size=72, crop_size=67).numpy()
    top, left = [
        int(v) for v in images.crop_offsets(seed, training=True, resize_size=72, crop_size=67)
    ]
    window = full[top : top + 67, left : left + 67]
    assert np.array_equal(fused, window) or np.array_equal(fused, window[:, ::-1])
    big = _encode(_ramp(100, 90), "PNG")
    resized = tf.cast(tf.round(tf.image.resize(_ramp(100, 90), [72, 72])), tf.uint8).numpy()
    out = images.decode_crop(big, seed, training=False, resize_size=72, crop_size=67).numpy()
    np.testing.assert_array_equal(out, resized[2:69, 2:69])


def test_the_probe_batch_covers_every_class_of_the_half(tiny_root):
    """The per-layer logger's fixed batch: round robin over the half's classes, not the
    first images of a class-sorted list (which would be one or two classes)."""
    source = sources.folder_source(tiny_root)
    half = (4, 1, 5, 0)
    images, labels = pipeline.probe_batch(source, half, size=6, resize_size=72, crop_size=67)
    assert images.shape == (6, 67, 67, 3) and images.dtype == tf.uint8
    assert sorted(labels.numpy().tolist()) == [0, 0, 1, 1, 2, 3]
    again, _ = pipeline.probe_batch(source, half, size=6, resize_size=72, crop_size=67)
    np.testing.assert_array_equal(images.numpy(), again.numpy())  # fixed


def test_a_seed_fixes_order_crops_and_mirrors(tiny_root, budget):
    source = sources.folder_source(tiny_root)

    def first_batches(seed):
        ds = pipeline.make_dataset(
            source,
            "train",
            (0, 2, 3),
            batch_size=4,
            training=True,
            seed=seed,
            deterministic=True,
            memory_budget=budget,
            **KW,
        )
        return _batches(ds.take(3))

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_a_resumed_stream_continues_where_the_uninterrupted_one_would_be(tiny_root, budget):
    source = sources.folder_source(tiny_root)

    def stream(skip_steps, steps, context=None):
        ds = pipeline.make_dataset(
            source,
            "train",
            (0, 2, 3),
            batch_size=4,
            training=True,
            seed=3,
            deterministic=True,
            input_context=context,
            skip_steps=skip_steps,
            memory_budget=budget,
            **KW,
        )
        return _batches(ds.take(steps))

    # 9 training images, batch 4: step 5 lies in the third pass, after reshuffles.
    whole, resumed = stream(0, 7), stream(5, 2)
    for (x_whole, y_whole), (x_resumed, y_resumed) in zip(whole[5:], resumed):
        np.testing.assert_array_equal(x_whole, x_resumed)  # same files, crops and mirrors
        np.testing.assert_array_equal(y_whole, y_resumed)
    assert not np.array_equal(whole[0][0], resumed[0][0])
    # A pipeline of two (multi-worker) skips its share of the global batch per step.
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2
    )
    whole, resumed = stream(0, 5, context), stream(3, 2, context)
    np.testing.assert_array_equal(whole[3][0], resumed[0][0])


def test_two_workers_of_an_input_context_see_disjoint_examples(tiny_root, budget):
    source = sources.folder_source(tiny_root)

    def digests(worker):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        ds = pipeline.make_dataset(
            source,
            "val",
            range(6),
            batch_size=4,
            training=False,
            input_context=context,
            memory_budget=budget,
            **KW,
        )
        batches = _batches(ds)
        assert max(len(x) for x, _ in batches) == 2  # global batch 4 over 2 replicas
        return [hashlib.sha1(image.tobytes()).hexdigest() for x, _ in batches for image in x]

    first, second = digests(0), digests(1)
    assert len(first) == len(second) == 6
    assert not set(first) & set(second) and len(set(first) | set(second)) == 12


def _write_bad_and_odd_files(folder):
    """Every bad-file case of a real dataset, next to odd but valid files."""
    good = _encode(np.random.default_rng(1).integers(0, 255, (90, 80, 3), dtype=np.uint8), "JPEG")
    header_broken = bytearray(good)
    header_broken[400:420] = b"\x00\xff" * 10
    bad = {
        "truncated.JPEG": good[: len(good) // 2],
        "corrupt.JPEG": bytes(header_broken),
        "not_an_image.JPEG": b"<html>404 not found</html>\n" * 20,
        "empty.JPEG": b"",
    }
    rgb = np.random.default_rng(2).integers(0, 255, (90, 80, 3), dtype=np.uint8)
    odd = {
        "png_named.JPEG": _encode(rgb, "PNG"),
        "cmyk.JPEG": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "gray.JPEG": _encode(rgb[:, :, 0], "JPEG"),
    }
    for name, content in {**bad, **odd}.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    return sorted(os.path.join(folder, n) for n in bad), sorted(odd)


def test_odd_images_decode_and_bad_files_are_skipped_by_name(tiny_root, budget, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(tiny_root, root)
    source = sources.folder_source(root)
    bad, _ = _write_bad_and_odd_files(os.path.join(root, "val", source.classes[0]))
    bad_files = pipeline.BadFiles()
    ds = pipeline.make_dataset(
        source,
        "val",
        (0, 1),
        batch_size=3,
        training=False,
        bad_files=bad_files,
        memory_budget=budget,
        **KW,
    )
    labels = np.concatenate([y for _, y in _batches(ds)])
    assert sorted(labels.tolist()) == [0] * (2 + 3) + [1] * 2  # the 3 odd files decoded
    assert sorted(bad_files.all()) == bad
    reasons = {os.path.basename(k): v for k, v in bad_files.all().items()}
    assert reasons["truncated.JPEG"].startswith("truncated JPEG")
    assert reasons["empty.JPEG"] == "empty file"
    assert reasons["not_an_image.JPEG"] == "not an image"


def test_training_goes_on_past_bad_files_and_names_them(tiny_config, tmp_path, capfd):
    log = []
    dataset = sources.resolve_dataset(tiny_config, log=log.append)
    root = str(tmp_path / "ds")
    shutil.copytree(dataset.source.root, root)
    tiny_config.dataset.name, tiny_config.dataset.data_dir = "folder", root
    dataset = sources.resolve_dataset(tiny_config, log=log.append)
    first_of_a = dataset.classes[dataset.split.half("A")[0]]
    bad, _ = _write_bad_and_odd_files(os.path.join(root, "train", first_of_a))
    bad_val, _ = _write_bad_and_odd_files(os.path.join(root, "val", first_of_a))
    metrics, out = experiment.run_treatment(
        tiny_config, dataset, transfer.parse_treatment("baseA"), log=log.append
    )
    assert metrics["status"] == "finished" and metrics["steps"] == tiny_config.train.total_steps
    text = "\n".join(log)
    assert "unreadable file(s)" in text and all(path in text for path in bad_val)
    assert metrics["bad_files"] >= len(bad_val)
    listed = [
        line.split("\t")[0]
        for line in open(os.path.join(out, "bad_files.tsv")).read().splitlines()[1:]
    ]
    assert set(bad_val) <= set(listed) <= set(bad) | set(bad_val)  # no good file listed
    # Named once by kt_transfer, not again by libjpeg and TensorFlow's decoder per read.
    err = capfd.readouterr().err
    for noise in (
        "Premature end of JPEG",
        "Bogus Huffman",
        "jpeg_mem.cc",
        "Improper call to JPEG library",
    ):
        assert noise not in err, err[-2000:]


def test_missing_or_empty_classes_fail_before_training(tmp_path, tiny_root, tiny_config):
    tiny_config.dataset.name = "folder"
    tiny_config.dataset.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="--config.dataset.data_dir"):
        sources.resolve_dataset(tiny_config)
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    tiny_config.dataset.data_dir = str(root)
    tiny_config.dataset.embedded.num_classes = 6
    classes = sorted(os.listdir(root / "train"))
    for name in os.listdir(root / "train" / classes[2]):  # an empty class folder
        os.remove(root / "train" / classes[2] / name)
    with pytest.raises(FileNotFoundError, match=f"{classes[2]}.*no images"):
        sources.resolve_dataset(tiny_config)
    shutil.rmtree(root / "train" / classes[2])
    shutil.rmtree(root / "val" / classes[4])  # val without one of train's classes
    with pytest.raises(FileNotFoundError, match=f"{classes[4]}.*val/ must hold a folder"):
        sources.resolve_dataset(tiny_config)


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0 chroma
def test_fused_decode_and_crop_equals_decode_then_crop(subsampling):
    photo = np.random.default_rng(subsampling).integers(0, 255, (72, 72, 3), dtype=np.uint8)
    jpeg = _encode(photo, "JPEG", quality=90, subsampling=subsampling)
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    for seed in range(16):
        seed = tf.constant([seed, 0], tf.int64)
        top, left = [
            int(v) for v in images.crop_offsets(seed, training=True, resize_size=72, crop_size=67)
        ]
        window = full[top : top + 67, left : left + 67]
        fused = images.decode_crop(jpeg, seed, training=True, resize_size=72, crop_size=67).numpy()
        assert np.array_equal(fused, window) or np.array_equal(fused, window[:, ::-1])


def test_shrinking_is_antialiased_like_pillow():
    """Stripes finer than the output grid: plain bilinear sampling aliases them into
    bands; the antialiased resize averages them like Pillow's (a reference resampler)."""
    stripes = np.zeros((250, 250, 3), np.uint8)
    stripes[:, ::3] = 255  # vertical stripes, period 3 px
    stripes[::5, :, 1] = 200  # horizontal ones, period 5 px, in green
    reference = np.asarray(Image.fromarray(stripes).resize((72, 72), Image.BILINEAR), np.float32)
    ours = images.resize(tf.constant(stripes), 72).numpy()
    aliased = tf.image.resize(tf.constant(stripes), [72, 72], antialias=False).numpy()
    assert np.abs(ours - reference).max() < 1.5  # within rounding of Pillow's 8 bits
    assert np.abs(aliased - reference).mean() > 30  # bands, not the average grey
    # The pipeline's on-the-fly path uses it: a 250 px JPEG-free (PNG) image, centre crop.
    png = tf.io.encode_png(tf.constant(stripes))
    crop = images.decode_crop(
        png, tf.constant([0, 0], tf.int64), training=False, resize_size=72, crop_size=67
    ).numpy()
    np.testing.assert_allclose(crop, np.floor(ours[2:69, 2:69] + 0.5), atol=1)


@pytest.mark.parametrize(
    "side, scale",
    [(200, 1), (340, 2), (660, 4), (1300, 4)],  # resize 80: 159 * r < side
)
def test_a_large_jpeg_is_decoded_at_the_smallest_dct_scale_that_keeps_the_resize_size(side, scale):
    # Detail down to a third of the 80 px output's grid, at every size, as a photo's
    # (whose spectrum falls off) rather than noise at the output's Nyquist limit.
    photo = np.asarray(
        Image.fromarray(np.random.default_rng(side).integers(0, 255, (27, 27, 3), np.uint8)).resize(
            (side, side), Image.BICUBIC
        )
    )
    jpeg = _encode(photo, "JPEG", quality=92)
    stored = tf.io.extract_jpeg_shape(jpeg)[:2]
    decoded = images.decode_jpeg_at_least(jpeg, stored, 80).numpy()
    assert decoded.shape[0] == -(-side // scale) >= 2 * 80  # ceil(side / scale)
    # After the antialiased resize it is the full decode's image, up to rounding: the
    # DCT scaling is a low-pass filter, as the resize's own.
    full = images.resize(tf.io.decode_jpeg(jpeg, channels=3), 80).numpy()
    ours = images.decode_crop(
        jpeg, tf.constant([0, 0], tf.int64), training=False, resize_size=80, crop_size=80
    ).numpy()
    assert np.abs(ours - full).mean() < 1.5 and np.abs(ours - full).max() < 12


# Faults (issue 22): a half with nothing readable fails, it never waits forever.

LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)


def _replace_with_lfs_pointers(root, subset, classes):
    """The common case of a dataset checked out without `git lfs pull`."""
    for name in classes:
        folder = os.path.join(root, subset, name)
        for file_name in os.listdir(folder):
            with open(os.path.join(folder, file_name), "wb") as f:
                f.write(LFS_POINTER)


@pytest.mark.parametrize("subset", ["train", "val"])
def test_a_half_with_no_readable_image_fails_before_training_naming_the_folder(
    tiny_root, tmp_path, subset
):
    root = str(tmp_path / "ds")
    shutil.copytree(tiny_root, root)
    source = sources.folder_source(root)
    _replace_with_lfs_pointers(root, subset, [source.classes[i] for i in (0, 1)])
    source.check_readable((2, 3))  # the other classes are fine
    with pytest.raises(sources.NoReadableImagesError) as error:
        source.check_readable((0, 1))
    message = str(error.value)
    count = 2 * (SPEC.train_per_class if subset == "train" else SPEC.val_per_class)
    assert (
        f"none of the {count} {subset} images" in message and os.path.join(root, subset) in message
    )
    assert "git-lfs pointer" in message and "--config.dataset.data_dir" in message


def test_a_stream_that_decodes_nothing_stops_with_an_error_instead_of_waiting(tiny_root, tmp_path):
    """The files became unreadable after the check (a disk gone, a sync that replaced
    them): the training stream stops after one whole pass that decoded nothing."""
    import threading

    root = str(tmp_path / "ds")
    shutil.copytree(tiny_root, root)
    source = sources.folder_source(root)
    ds = pipeline.make_dataset(source, "train", (0, 1), batch_size=2, training=True, **KW)
    _replace_with_lfs_pointers(root, "train", [source.classes[i] for i in (0, 1)])
    outcome = []

    def first_batch():
        try:
            next(iter(ds))
            outcome.append("a batch")
        except tf.errors.InvalidArgumentError as e:
            outcome.append(str(e))

    reader = threading.Thread(target=first_batch, daemon=True)
    reader.start()
    reader.join(timeout=120)
    assert outcome, "the training stream is still waiting for a readable file"
    assert pipeline.NOTHING_READ in outcome[0]


def _digests(ds):
    return sorted(
        (hashlib.sha1(image.tobytes()).hexdigest(), int(label))
        for x, y in _batches(ds)
        for image, label in zip(x, y)
    )


def test_images_decoded_once_are_the_pixels_decoded_on_the_fly(tiny_root):
    source = sources.folder_source(tiny_root)
    kwargs = dict(batch_size=4, seed=5, deterministic=True, **KW)
    val = [
        _batches(
            pipeline.make_dataset(source, "val", (1, 3), training=False, memory_budget=b, **kwargs)
        )
        for b in (0, IN_MEMORY)
    ]
    for (x_fly, y_fly), (x_memory, y_memory) in zip(*val):  # the same order, bit for bit
        np.testing.assert_array_equal(x_fly, x_memory)
        np.testing.assert_array_equal(y_fly, y_memory)
    # One training pass of centre crops: the same images, each once, in another order.
    passes = [
        _digests(
            pipeline.make_dataset(
                source, "train", (1, 3), training=True, augment=False, memory_budget=b, **kwargs
            )
            .take(6 // 2)  # 6 images, batch 4 -> the first pass and a half: count exactly
            .unbatch()
            .take(6)
            .batch(6)
        )
        for b in (0, IN_MEMORY)
    ]
    assert passes[0] == passes[1] and len({d for d, _ in passes[0]}) == 6


def test_a_half_is_decoded_once_per_process_within_the_budget(tiny_root, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(tiny_root, root)
    source = sources.folder_source(root)
    first = pipeline.make_dataset(
        source, "val", (0, 4), batch_size=4, training=False, memory_budget=IN_MEMORY, **KW
    )
    expected = _digests(first)
    shutil.rmtree(os.path.join(root, "val"))  # nothing left to decode: read from memory
    again = pipeline.make_dataset(
        source, "val", (0, 4), batch_size=4, training=False, memory_budget=IN_MEMORY, **KW
    )
    assert _digests(again) == expected
    # A half larger than the budget is decoded on the fly, each pass.
    one_image = 72 * 72 * 3
    assert pipeline.decoded_images(source, "train", (0, 4), 72, budget=5 * one_image) is None
    assert pipeline.decoded_images(source, "train", (0, 4), 72, budget=6 * one_image) is not None
