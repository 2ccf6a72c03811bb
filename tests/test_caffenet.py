import os

import keras
import numpy as np
import pytest

from kt_transfer import config_files
from kt_transfer.networks import caffenet


def test_paper_network_parameter_count_and_shapes():
    model = caffenet.build_caffenet(1000)
    # CaffeNet with groups=2 on conv2/4/5 (the published bvlc_reference_caffenet).
    assert model.count_params() == 60_965_224
    assert [layer.name for layer in model.layers if layer.weights] == list(caffenet.LAYER_NAMES)
    assert model.output_shape == (None, 1000)
    assert model.get_layer("conv2").kernel.shape == (5, 5, 48, 256)  # grouped: 96 / 2 in
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 256)


def _caffe_pool_side(side, kernel=3, stride=2):
    """Caffe's PoolingLayer::Reshape for pad 0: ceil((in - k) / s) + 1."""
    return int(np.ceil((side - kernel) / stride)) + 1


@pytest.mark.parametrize("size", [227, 87, 71, 67, 60, 55])
def test_every_layer_has_caffes_map_size(size):
    conv1 = (size - 11) // 4 + 1  # Caffe's convolution rounds down
    pool1 = _caffe_pool_side(conv1)
    pool2 = _caffe_pool_side(pool1)  # conv2 (5x5, pad 2) keeps the side
    pool5 = _caffe_pool_side(pool2)  # conv3-5 (3x3, pad 1) keep the side
    want = {
        "conv1": conv1,
        "pool1": pool1,
        "conv2": pool1,
        "pool2": pool2,
        "conv3": pool2,
        "conv4": pool2,
        "conv5": pool2,
        "pool5": pool5,
    }
    model = caffenet.build_caffenet(10, input_size=size, width=0.0625)
    got = {name: model.get_layer(name).output.shape[1] for name in want}
    assert got == want
    assert all(model.get_layer(name).output.shape[2] == side for name, side in want.items())
    if size == 87:
        assert want["pool5"] == 2  # Keras' "valid" pooling would leave 1x1
    out = model(np.zeros((1, size, size, 3), "float32"))  # the shapes hold when run, too
    assert out.shape == (1, 10)


def test_caffe_pooling_takes_the_max_of_each_overhanging_window():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 7, 3)).astype("float32") - 5.0  # all negative: pads must not win
    got = keras.ops.convert_to_numpy(caffenet.CaffeMaxPooling2D(3, 2)(x))
    assert got.shape == (2, _caffe_pool_side(6), _caffe_pool_side(7), 3)  # (3, 4), not (2, 3)
    for i in range(got.shape[1]):
        for j in range(got.shape[2]):
            window = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]  # clipped at the edge
            np.testing.assert_array_equal(got[:, i, j], window.max(axis=(1, 2)))


def test_paper_initialization():
    keras.utils.set_random_seed(0)
    model = caffenet.build_caffenet(10, input_size=99, width=0.5)
    for name, std, bias in [
        ("conv1", 0.01, 0),
        ("conv2", 0.01, 1),
        ("conv3", 0.01, 0),
        ("fc6", 0.005, 1),
        ("fc7", 0.005, 1),
        ("fc8", 0.01, 0),
    ]:
        kernel, b = model.get_layer(name).get_weights()
        assert abs(kernel.std() - std) < 0.15 * std, name
        assert np.all(b == bias), name


def test_width_and_input_size_scale_the_same_network():
    small = caffenet.build_caffenet(50, input_size=87, width=0.25)
    assert [layer.name for layer in small.layers if layer.weights] == list(caffenet.LAYER_NAMES)
    assert small.get_layer("conv1").filters == 24
    assert small.output_shape == (None, 50)
    with pytest.raises(ValueError, match="input_size"):
        caffenet.build_caffenet(10, input_size=40)


def test_lrn_matches_caffe_formula():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype("float32") * 10
    layer = caffenet.LocalResponseNormalization(size=5, alpha=1e-2, beta=0.75, k=1.0)
    got = np.array(layer(x))
    padded = np.pad(x**2, [(0, 0), (0, 0), (0, 0), (2, 2)])
    window = sum(padded[..., i : i + 7] for i in range(5))
    np.testing.assert_allclose(got, x / (1 + 1e-2 / 5 * window) ** 0.75, rtol=1e-5)


def test_keras_file_round_trip_in_safe_mode(tmp_path):
    model = caffenet.build_caffenet(6, input_size=67, width=0.0625)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(size=(2, 67, 67, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()


def test_every_shipped_config_passes_validation_and_builds_its_network():
    from kt_transfer import validate

    for name in ("embedded", "imagenet_paper", "tiny", "grid_quick"):
        config = config_files.load(name)
        if config.dataset.name == "folder":
            config.dataset.data_dir = os.path.dirname(__file__)  # any existing folder
        validate.validate(config)
        model = caffenet.build_from_config(config.model, 10)
        assert model.input_shape[1] == config.model.input_size <= config.dataset.resize_size
    config = config_files.load("tiny")
    config.model.input_size = 54
    with pytest.raises(validate.ConfigError, match="--config.model.input_size=54"):
        validate.validate(config)
    with pytest.raises(ValueError, match="at least 55"):
        caffenet.build_from_config(config.model, 10)  # the same minimum in both places


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_custom_layers_under_mixed_precision_match_float32(policy):
    """Paper-scale activations (|x| in the hundreds) must not overflow: float16 squares
    of x > 256 are inf, which would zero LRN's output."""
    rng = np.random.default_rng(0)
    activations = rng.uniform(-600, 600, size=(2, 9, 9, 16)).astype("float32")
    pixels = rng.integers(0, 256, size=(2, 9, 9, 3)).astype("uint8")
    layers = {
        "lrn": (lambda: caffenet.LocalResponseNormalization(), activations, 2e-2),
        "pixels": (lambda: caffenet.PixelNormalization((123.7, 116.8, 103.9), 1.0), pixels, 1e-2),
        "grouped_conv": (
            lambda: caffenet.GroupedConv2D(
                8, 3, padding="same", groups=2, kernel_initializer="ones"
            ),
            activations / 600,
            2e-2,
        ),
        "caffe_pool": (
            lambda: caffenet.CaffeMaxPooling2D(3, 2),
            activations[:, :8, :8],
            1e-2,
        ),  # 8 -> 4: the last window overhangs, padded in bfloat16 too
    }
    for name, (make, x, rtol) in layers.items():
        reference_layer = make()
        want = keras.ops.convert_to_numpy(reference_layer(x)).astype("float32")
        keras.config.set_dtype_policy(policy)
        try:
            layer = make()
            got = layer(x)
            if reference_layer.weights:
                layer.set_weights(reference_layer.get_weights())
                got = layer(x)
        finally:
            keras.config.set_dtype_policy("float32")
        want_dtype = "float32" if name == "pixels" else policy.split("_")[1]
        assert keras.backend.standardize_dtype(got.dtype) == want_dtype, name
        got = keras.ops.convert_to_numpy(keras.ops.cast(got, "float32"))
        assert np.all(np.isfinite(got)), name
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=name)
    assert np.abs(want).max() > 0


def test_the_network_takes_8bit_pixels_and_subtracts_its_own_mean(tmp_path):
    model = caffenet.build_caffenet(
        5, 67, width=0.0625, init="he", mean_rgb=(100.0, 110.0, 120.0), scale=0.5
    )
    pixels = np.random.default_rng(3).integers(0, 256, (2, 67, 67, 3)).astype("uint8")
    normalized = model.get_layer("pixel_normalization")(pixels)
    expected = (pixels.astype("float32") - [100.0, 110.0, 120.0]) * 0.5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalized), expected, rtol=1e-6)
    from_uint8 = keras.ops.convert_to_numpy(model(pixels, training=False))
    from_float = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-6)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert reloaded.get_layer("pixel_normalization").mean_rgb == [100.0, 110.0, 120.0]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(pixels, training=False)), from_uint8, rtol=1e-5
    )
