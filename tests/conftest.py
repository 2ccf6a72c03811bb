"""Shared fixtures and helpers: tiny configs, a tiny generated dataset built once per
session, a small filesystem, and the command line run as a user runs it.

Tiers: `pytest -m "not slow" tests` is the quick tier (in-process tests); tests marked
`slow` start subprocesses (the CLI end to end, worker processes, other backends).
"""

import contextlib
import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

import pytest  # noqa: E402

from kt_transfer import config_files  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def subprocess_env(**extra):
    """The environment of a kt_transfer subprocess: this one's, TensorFlow's INFO lines
    off, plus `extra`."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def run_cli(*args, cwd=None, env=None, timeout=600):
    """`python -m kt_transfer.main ARGS` as a user runs it; the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "kt_transfer.main", *args],
        cwd=cwd,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ImageNet's channel means and standard deviations, as keras-hub's ResNet presets scale.
HUB_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
HUB_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


@pytest.fixture(scope="session")
def hub_presets(tmp_path_factory):
    """Real keras-hub presets, saved by keras-hub's own save_to_preset: {"converter": a
    classifier preset with its image converter (HUB_MEAN, HUB_STD), "bare": the same
    backbone alone}, and that backbone. A tiny ResNetBackbone (keras-hub insists on 64
    filters in its first stack)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    root = tmp_path_factory.mktemp("presets")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(64, 64),
        scale=[1 / s for s in HUB_STD],
        offset=[-m / s for m, s in zip(HUB_MEAN, HUB_STD)],
    )
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=backbone,
        num_classes=5,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(converter),
    )
    classifier.save_to_preset(str(root / "converter"))
    backbone.save_to_preset(str(root / "bare"))
    return {"converter": str(root / "converter"), "bare": str(root / "bare")}, backbone


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def tiny_config(data_cache, tmp_path):
    config = config_files.load("tiny")
    config.dataset.data_dir = data_cache
    config.workdir = str(tmp_path / "workdir")
    config.verbose = 0
    return config


@pytest.fixture
def small_filesystem():
    """mount(path, size): a real filesystem of `size` (tmpfs) at `path`, a disk that
    fills up; unmounted after the test. Skips where mounting is not allowed."""
    mounted = []

    @contextlib.contextmanager
    def mount(path, size):
        os.makedirs(path, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a small filesystem here: {result.stderr.decode()[:200]}")
        mounted.append(path)
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", path], check=False)
            mounted.remove(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", path], check=False)
