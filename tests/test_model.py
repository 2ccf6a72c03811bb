import json

import keras
import numpy as np
import pytest

from kt_transfer import model as model_lib
from kt_transfer import config_files


def test_paper_network_parameter_count_and_shapes():
    model = model_lib.build_caffenet(1000)
    # CaffeNet with groups=2 on conv2/4/5 (the published bvlc_reference_caffenet).
    assert model.count_params() == 60_965_224
    assert [l.name for l in model.layers if l.weights] == list(model_lib.LAYER_NAMES)
    assert model.output_shape == (None, 1000)
    assert model.get_layer("conv2").kernel.shape == (5, 5, 48, 256)  # grouped: 96 / 2 in
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 256)


def test_paper_initialization():
    keras.utils.set_random_seed(0)
    model = model_lib.build_caffenet(10, input_size=99, width=0.5)
    for name, std, bias in [("conv1", 0.01, 0), ("conv2", 0.01, 1), ("conv3", 0.01, 0),
                            ("fc6", 0.005, 1), ("fc7", 0.005, 1), ("fc8", 0.01, 0)]:
        kernel, b = model.get_layer(name).get_weights()
        assert abs(kernel.std() - std) < 0.15 * std, name
        assert np.all(b == bias), name


def test_width_and_input_size_scale_the_same_network():
    small = model_lib.build_caffenet(50, input_size=87, width=0.25)
    assert [l.name for l in small.layers if l.weights] == list(model_lib.LAYER_NAMES)
    assert small.get_layer("conv1").filters == 24
    assert small.output_shape == (None, 50)
    with pytest.raises(ValueError, match="input_size"):
        model_lib.build_caffenet(10, input_size=40)


def test_lrn_matches_caffe_formula():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype("float32") * 10
    layer = model_lib.LocalResponseNormalization(size=5, alpha=1e-2, beta=0.75, k=1.0)
    got = np.array(layer(x))
    padded = np.pad(x**2, [(0, 0), (0, 0), (0, 0), (2, 2)])
    window = sum(padded[..., i:i + 7] for i in range(5))
    np.testing.assert_allclose(got, x / (1 + 1e-2 / 5 * window) ** 0.75, rtol=1e-5)


def test_keras_file_round_trip_in_safe_mode(tmp_path):
    model = model_lib.build_caffenet(6, input_size=67, width=0.0625)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(size=(2, 67, 67, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()


def test_config_round_trip():
    for name in ("embedded", "imagenet_paper", "tiny"):
        config = config_files.load(name)
        again = json.loads(config.to_json())
        assert again == json.loads(json.dumps(config.to_dict()))
        with pytest.raises(AttributeError):
            config.train.learning_rat  # a typo is an error, not a silent default
    assert config_files.load("imagenet_paper").model.input_size == 227


def test_the_network_takes_8bit_pixels_and_subtracts_its_own_mean(tmp_path):
    model = model_lib.build_caffenet(5, 67, width=0.0625, init="he",
                                     mean_rgb=(100.0, 110.0, 120.0), scale=0.5)
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
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(pixels, training=False)),
                               from_uint8, rtol=1e-5)
