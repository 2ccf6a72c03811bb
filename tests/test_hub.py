"""A keras-hub preset as a network and as a base (networks/hub.py), on presets the tests
save with keras-hub's own save_to_preset: a tiny ResNetBackbone (keras-hub insists on
64 filters in its first stack), with and without its image converter."""

import os

import keras
import numpy as np
import pytest
from conftest import HUB_MEAN, HUB_STD

from kt_transfer import config_files, validate
from kt_transfer.data import sources
from kt_transfer.networks import caffenet, families, hub, transfer
from kt_transfer.runs import experiment
from kt_transfer.training import train

MEAN, STD = np.array(HUB_MEAN), np.array(HUB_STD)


def _config(preset, **hub_config):
    config = config_files.load("tiny")
    config.model.network = "keras_hub"
    config.model.keras_hub.preset = preset
    config.model.keras_hub.update(hub_config)
    return config


def _weights(model, name):
    return [np.array(w) for w in model.get_layer(name).get_weights()]


def _train_steps(model, config, plans, steps=3):
    rng = np.random.default_rng(0)
    side = config.model.input_size
    images = rng.integers(0, 256, (steps * 8, side, side, 3)).astype("uint8")
    train.compile_model(model, config.train, plans)
    model.fit(images, rng.integers(0, 6, steps * 8), batch_size=8, verbose=0, shuffle=False)


def test_a_preset_is_a_base_cut_at_its_stem_and_stages(hub_presets):
    paths, backbone = hub_presets
    config = _config(paths["converter"])
    blocks = families.block_names(config.model)
    assert blocks == ("stem", "stack0", "stack1", "classifier")

    base = transfer.load_base(paths["converter"], model_config=config.model)
    # The image converter's pixel * scale + offset, as (pixel - mean) * scale.
    np.testing.assert_allclose(base.mean_rgb, MEAN, rtol=1e-6)
    np.testing.assert_allclose(base.scale, 1 / STD, rtol=1e-6)
    assert families.identify(base.weights) == "keras_hub"

    frozen, plans = transfer.build_model(
        transfer.parse_treatment("AnB", 2, blocks), config.model, 6, base=base
    )
    # Copied by name from the preset's own layers, BatchNorm statistics included.
    stem_conv = frozen.get_layer("stem").get_layer("conv1_conv")
    assert np.array_equal(stem_conv.kernel, backbone.get_layer("conv1_conv").kernel)
    stack_bn = frozen.get_layer("stack0").get_layer("stack0_block0_1_bn")
    assert np.array_equal(
        stack_bn.moving_variance, backbone.get_layer("stack0_block0_1_bn").moving_variance
    )
    normalization = frozen.get_layer(caffenet.NORMALIZATION_LAYER)
    np.testing.assert_allclose(normalization.scale, 1 / STD, rtol=1e-6)

    head_before = _weights(frozen, "classifier")
    _train_steps(frozen, config, plans)
    for name in ("stem", "stack0"):  # frozen: every weight bit-identical after training
        assert all(np.array_equal(a, b) for a, b in zip(_weights(frozen, name), base.weights[name]))
    assert not all(
        np.array_equal(a, b) for a, b in zip(_weights(frozen, "classifier"), head_before)
    )

    tuned, plans = transfer.build_model(
        transfer.parse_treatment("AnB+", 2, blocks), config.model, 6, base=base
    )
    _train_steps(tuned, config, plans)
    for name in ("stem", "stack0"):  # "+": the copied blocks fine-tune
        assert any(
            not np.array_equal(a, b) for a, b in zip(_weights(tuned, name), base.weights[name])
        )


def test_a_preset_without_its_image_converter_is_refused(hub_presets):
    paths, _ = hub_presets
    config = _config(paths["bare"])
    base = transfer.load_base(paths["bare"], model_config=config.model)
    assert base.mean_rgb is None
    blocks = families.block_names(config.model)
    with pytest.raises(transfer.BaseMismatchError, match="without its image converter"):
        transfer.build_model(transfer.parse_treatment("AnB", 1, blocks), config.model, 6, base=base)


def test_cut_points_name_the_backbone_s_layers(hub_presets):
    paths, _ = hub_presets
    config = _config(paths["bare"], cut_points=("pool1_pool", "stack0_block0_out"))
    # The network is the backbone up to its last cut point, then the classifier.
    assert families.block_names(config.model) == ("pool1", "stack0", "classifier")
    config.model.keras_hub.cut_points = ("pool1_pool", "stack9_block0_out")
    with pytest.raises(hub.HubError, match="no layer 'stack9_block0_out'"):
        families.block_names(config.model)
    config.model.keras_hub.cut_points = ("stack0_block0_out", "pool1_pool")
    with pytest.raises(hub.HubError, match="in the backbone's order"):
        families.block_names(config.model)


@pytest.mark.parametrize(
    "network,preset,base_model,message",
    [
        ("keras_hub", "", None, "--config.model.keras_hub.preset"),
        ("keras_hub", "/nonexistent", None, "is not a keras-hub preset directory"),
        ("caffenet", "", "converter", "--config.model.network=keras_hub"),
    ],
)
def test_bad_keras_hub_settings_are_named_with_the_fix(
    hub_presets, network, preset, base_model, message, tmp_path
):
    paths, _ = hub_presets
    config = _config(preset)
    config.model.network = network
    config.workdir = str(tmp_path / "wd")
    config.mode, config.n = "AnB", 1
    if base_model:
        config.base_model = paths[base_model]
    with pytest.raises(validate.ConfigError) as raised:
        validate.validate(config)
    assert message in str(raised.value), str(raised.value)


@pytest.mark.slow
def test_a_transfer_from_a_preset_and_from_the_workdir_s_base(hub_presets, tiny_config):
    """A2B from --base_model=<preset>, and A1B+ from the workdir's baseA (a keras_hub
    network saved as model.keras and loaded back), through the one training loop."""
    paths, backbone = hub_presets
    config = tiny_config
    config.model.network = "keras_hub"
    config.model.keras_hub.preset = paths["converter"]
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    blocks = families.block_names(config.model)

    own = transfer.parse_treatment("AnB+", 1, blocks)
    experiment.run_treatment(config, dataset, own, log=lambda *_: None)
    run = experiment.run_dir(config, dataset, own)
    assert experiment.read_metrics(run)["status"] == "finished"
    saved = transfer.load_base(os.path.join(os.path.dirname(run), "baseA", "model.keras"))
    assert list(saved.weights)[:3] == list(blocks[:3])

    config.base_model = paths["converter"]
    pretrained = transfer.parse_treatment("AnB", 2, blocks)
    experiment.run_treatment(config, dataset, pretrained, log=lambda *_: None)
    model = keras.saving.load_model(
        os.path.join(experiment.run_dir(config, dataset, pretrained), "model.keras")
    )
    assert np.array_equal(
        model.get_layer("stem").get_layer("conv1_conv").kernel,
        backbone.get_layer("conv1_conv").kernel,
    )


def test_a_preset_of_a_fixed_image_size_names_the_input_size_to_set(tmp_path):
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(32, 32, 3),
    )
    backbone.save_to_preset(str(tmp_path / "fixed"))
    config = _config(str(tmp_path / "fixed"))
    config.workdir = str(tmp_path / "wd")
    config.mode = "baseA"
    with pytest.raises(validate.ConfigError, match=r"--config.model.input_size=32 \(now 67\)"):
        validate.validate(config)
    config.model.input_size = 32
    assert families.block_names(config.model) == ("stem", "stack0", "classifier")
