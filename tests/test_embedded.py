import os

import pytest

from kt_transfer import atomic
from kt_transfer.data import embedded, sources, splits

SPEC = embedded.EmbeddedSpec(num_classes=6, train_per_class=3, val_per_class=2, image_size=72)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
    return out


def test_embedded_dataset_is_deterministic_and_imagenet_shaped(tmp_path):
    first = embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path / "a"), log=lambda *_: None)
    second = embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path / "b"), log=lambda *_: None)
    files = _files(first)
    assert files == _files(second)
    assert len([f for f in files if f.startswith("train/")]) == 6 * 3
    assert len([f for f in files if f.startswith("val/")]) == 6 * 2
    classes = sources.list_classes(first)
    assert len(classes) == 6 and classes == sorted(classes)
    groups = {
        line.split("\t")[2].strip()
        for line in open(os.path.join(first, "classes.tsv"))
        if not line.startswith("class_index")
    }
    assert groups == {splits.MAN_MADE, splits.NATURAL}  # both families present


def test_embedded_default_has_100_classes_in_two_families():
    specs = embedded.class_specs(100)
    assert len({s.folder for s in specs}) == 100
    assert sum(s.group == splits.NATURAL for s in specs) == 50


def test_interrupted_generation_is_never_used(tmp_path, monkeypatch):
    calls = []

    def crash_after_first_class(root, spec, class_index):
        calls.append(class_index)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-generation

    monkeypatch.setattr(embedded, "_write_class", crash_after_first_class)
    monkeypatch.setattr(
        embedded.concurrent.futures, "ProcessPoolExecutor", lambda *a, **k: _InlinePool()
    )
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path), log=lambda *_: None)
    assert calls and os.listdir(tmp_path) == []  # no half-written dataset left behind


class _InlinePool:
    """Runs work in this process so the test can interrupt it deterministically."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return [fn(i) for i in items]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return embedded.ensure_dataset(
        SPEC, cache_dir=str(tmp_path_factory.mktemp("ds")), log=lambda *_: None
    )


def test_a_completed_dataset_is_never_deleted_or_moved(tmp_path):
    """Publishing a finished copy never touches a dataset already in place (a process may
    be reading it): a complete one wins, an incomplete one is an error naming it."""
    root = tmp_path / SPEC.dirname
    (root / "train").mkdir(parents=True)
    (root / "train" / "in_use.jpg").write_bytes(b"x")
    (root / embedded.COMPLETE_MARKER).write_text("")
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    embedded._publish(str(mine), str(root))
    assert (root / "train" / "in_use.jpg").exists()  # the other process's copy stays
    os.remove(root / embedded.COMPLETE_MARKER)  # an incomplete copy of an older version
    with pytest.raises(FileExistsError, match="incomplete.*delete that folder"):
        embedded.ensure_dataset(SPEC, cache_dir=str(tmp_path), log=lambda *_: None)
    assert (root / "train" / "in_use.jpg").exists()  # not deleted either
    assert sorted(os.listdir(tmp_path)) == sorted(["mine", SPEC.dirname])  # no temporary


def test_concurrent_generations_all_end_with_one_complete_dataset(tmp_path):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        roots = list(
            pool.map(
                lambda _: embedded.ensure_dataset(
                    SPEC, cache_dir=str(tmp_path), log=lambda *_: None
                ),
                range(3),
            )
        )
    assert len(set(roots)) == 1 and os.path.exists(os.path.join(roots[0], "COMPLETE"))
    assert os.listdir(tmp_path) == [SPEC.dirname]
    count = sum(len(files) for _, _, files in os.walk(roots[0]))
    assert count == SPEC.num_classes * (SPEC.train_per_class + SPEC.val_per_class) + 2


def test_generating_on_a_full_disk_is_an_error_naming_the_space_and_leaves_nothing(
    tmp_path, small_filesystem
):
    cache = str(tmp_path / "cache")
    with small_filesystem(cache, "64k"):
        with pytest.raises(atomic.DiskFullError) as error:  # checked before drawing
            embedded.ensure_dataset(SPEC, cache_dir=cache, log=lambda *_: None)
        assert "no space left on the device writing " + cache in str(error.value)
        assert "needed" in str(error.value) and os.listdir(cache) == []
        # The estimate fits, the disk does not (other files filled it meanwhile):
        # the generation itself runs out of room, and still leaves nothing behind.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(atomic, "check_space", lambda path, needed: None)
            with pytest.raises(atomic.DiskFullError):
                embedded.ensure_dataset(SPEC, cache_dir=cache, log=lambda *_: None)
        assert os.listdir(cache) == []
