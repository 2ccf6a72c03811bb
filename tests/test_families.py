"""Network families (networks/families.py): ResNet, ViT and a user's own network, cut into
named blocks that a transfer copies, freezes and fine-tunes by name like CaffeNet's layers."""

import os
import re
import sys

import keras
import numpy as np
import pytest

from kt_transfer import config_files, validate
from kt_transfer.analysis import representations
from kt_transfer.data import sources
from kt_transfer.networks import families, transfer
from kt_transfer.runs import experiment
from kt_transfer.training import train

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _config(network, **sub):
    config = config_files.load("tiny")
    config.model.network = network
    config.model.resnet.stages = (1, 1)  # stem, res1, res2, classifier
    config.model.vit.update(patch_size=16, hidden_dim=16, num_heads=2, num_blocks=2, mlp_dim=32)
    config.model.update(sub)
    return config


def _train_steps(model, config, plans, steps=3, seed=0):
    """A few real steps of the run's solver (compile_model) on random images."""
    rng = np.random.default_rng(seed)
    side = config.model.input_size
    images = rng.integers(0, 256, (steps * 8, side, side, 3)).astype("uint8")
    labels = rng.integers(0, 6, steps * 8)
    train.compile_model(model, config.train, plans)
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False)


def _weights(model, name):
    return [np.array(w) for w in model.get_layer(name).get_weights()]


@pytest.mark.parametrize("network", ["resnet", "vit"])
def test_frozen_blocks_stay_bit_identical_and_fine_tuned_ones_move(network):
    config = _config(network)
    blocks = families.block_names(config.model)
    assert len(blocks) == 4 and blocks[-1] == "classifier"
    keras.utils.set_random_seed(1)
    base, _ = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
    _train_steps(base, config, transfer.parse_treatment("baseA").layer_plans(blocks=blocks))

    frozen, plans = transfer.build_model(
        transfer.parse_treatment("AnB", 2, blocks), config.model, 6, base=base
    )
    for name in blocks[:2]:  # copied by name, every weight (BatchNorm statistics included)
        assert all(
            np.array_equal(a, b) for a, b in zip(_weights(frozen, name), _weights(base, name))
        )
    fresh_before = _weights(frozen, blocks[2])
    _train_steps(frozen, config, plans)
    for name in blocks[:2]:
        after = _weights(frozen, name)
        assert all(np.array_equal(a, b) for a, b in zip(after, _weights(base, name))), name
    assert not all(np.array_equal(a, b) for a, b in zip(_weights(frozen, blocks[2]), fresh_before))

    tuned, plans = transfer.build_model(
        transfer.parse_treatment("AnB+", 2, blocks), config.model, 6, base=base
    )
    _train_steps(tuned, config, plans)
    for name in blocks[:2]:  # "+": the copied blocks fine-tune
        pairs = zip(_weights(tuned, name), _weights(base, name))
        assert any(not np.array_equal(a, b) for a, b in pairs), name


def _batchnorm_statistics(model, name):
    block = model.get_layer(name)
    return [
        np.array(w)
        for layer in block.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


def test_batchnorm_policy_of_fine_tuned_blocks():
    keras.utils.set_random_seed(2)
    for policy, statistics_move in (("train", True), ("frozen", False)):
        config = _config("resnet", batchnorm_fine_tune=policy)
        blocks = families.block_names(config.model)
        base, _ = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
        tuned, plans = transfer.build_model(
            transfer.parse_treatment("AnB+", 2, blocks), config.model, 6, base=base
        )
        stats_before = _batchnorm_statistics(tuned, "res1")
        conv_before = np.array(tuned.get_layer("res1").get_layer("res1_a_conv").kernel)
        _train_steps(tuned, config, plans)
        stats_after = _batchnorm_statistics(tuned, "res1")
        changed = any(not np.array_equal(a, b) for a, b in zip(stats_before, stats_after))
        assert changed == statistics_move, policy
        # The block's convolutions fine-tune under either policy.
        conv_after = np.array(tuned.get_layer("res1").get_layer("res1_a_conv").kernel)
        assert not np.array_equal(conv_before, conv_after)


def test_a_base_of_another_family_or_shape_is_refused_naming_both():
    resnet = _config("resnet")
    caffenet_base, _ = transfer.build_model(
        transfer.parse_treatment("baseA"), config_files.load("tiny").model, 6
    )
    blocks = families.block_names(resnet.model)
    treatment = transfer.parse_treatment("AnB", 2, blocks)
    with pytest.raises(transfer.BaseMismatchError, match=r"\(caffenet: .*resnet network"):
        transfer.build_model(treatment, resnet.model, 6, base=caffenet_base)
    wider = _config("resnet", width=0.125)
    wide_base, _ = transfer.build_model(transfer.parse_treatment("baseA"), wider.model, 6)
    with pytest.raises(transfer.BaseMismatchError, match="block 'stem'"):
        transfer.build_model(treatment, resnet.model, 6, base=wide_base)


def test_n_counts_the_family_s_blocks():
    config = _config("vit")
    blocks = families.block_names(config.model)  # patch_embedding, encoder1, encoder2, classifier
    assert transfer.parse_treatment("AnB", 3, blocks).n == 3
    with pytest.raises(ValueError, match="between 1 and 3"):
        transfer.parse_treatment("AnB", 4, blocks)
    assert transfer.parse_treatment("BnB+", 4, blocks).n == 4  # the restart control
    config.mode, config.n = "AnB", 5
    with pytest.raises(validate.ConfigError, match="between 1 and 3"):
        validate.validate(config)
    config.n, config.grid.ns = 3, (1, 2, 3, 4, 5, 6, 7)  # CaffeNet's grid: one run ignores it
    validate.validate(config)
    config.mode = "grid"
    with pytest.raises(validate.ConfigError, match=r"grid\.ns=.*each 1\.\.3"):
        validate.validate(config)


def _readme_network(tmp_path, monkeypatch):
    """README's "Your network, your data" example, written out as a module."""
    with open(README) as f:
        text = f.read()
    code = re.search(r"```python\n(# my_network\.py.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12  # the README promises about 10 lines
    (tmp_path / "my_network.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_network", None)
    return "my_network:build"


def test_a_user_network_from_the_readme_copies_by_its_cut_points(tmp_path, monkeypatch):
    config = _config(_readme_network(tmp_path, monkeypatch))
    blocks = families.block_names(config.model)
    assert blocks == ("block1", "block2", "block3", "classifier")
    base, _ = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 6)
    model, plans = transfer.build_model(
        transfer.parse_treatment("AnB", 2, blocks), config.model, 6, base=base
    )
    assert [p.trainable for p in plans] == [False, False, True, True]
    _train_steps(model, config, plans)
    assert np.array_equal(model.get_layer("block2").kernel, base.get_layer("block2").kernel)


def test_bad_user_networks_get_one_line_naming_the_flag(tmp_path, monkeypatch):
    (tmp_path / "broken_nets.py").write_text(
        "import keras\n"
        "def no_cuts(inputs, num_classes):\n"
        "    return keras.layers.Dense(num_classes, name='out')(keras.layers.Flatten()(inputs))\n"
        "def unknown_cut(inputs, num_classes):\n"
        "    x = keras.layers.Flatten()(inputs)\n"
        "    return keras.layers.Dense(num_classes, name='out')(x), ['hidden', 'out']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for network, problem in (
        ("no_such_module:build", "cannot import module 'no_such_module'"),
        ("broken_nets:missing", "has no function 'missing'"),
        ("broken_nets:no_cuts", r"must return \(logits, cut_points\)"),
        ("broken_nets:unknown_cut", "cut point 'hidden' is not a layer with weights"),
        ("resnet50", "use one of caffenet, resnet, vit, keras_hub, or module:function"),
    ):
        config = _config(network)
        with pytest.raises(validate.ConfigError) as error:
            validate.validate(config)
        assert re.search(problem, str(error.value)), str(error.value)
        assert "--config.model.network=" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("network", ["resnet", "vit"])
def test_a_family_runs_the_whole_treatment(tiny_config, network):
    """baseA and A1B+ through the one training loop: layer curves, export, metrics."""
    config = tiny_config
    config.model.network = network
    config.model.resnet.stages = (1, 1)
    config.model.vit.update(patch_size=16, hidden_dim=16, num_heads=2, num_blocks=2, mlp_dim=32)
    dataset = sources.resolve_dataset(config, log=lambda *_: None)
    blocks = families.block_names(config.model)
    experiment.run_treatment(
        config, dataset, transfer.parse_treatment("AnB+", 1, blocks), log=lambda *_: None
    )
    run = experiment.run_dir(config, dataset, transfer.parse_treatment("AnB+", 1, blocks))
    metrics = experiment.read_metrics(run)
    assert metrics["status"] == "finished" and metrics["blocks"] == 4
    assert os.path.exists(os.path.join(run, "saved_model", "saved_model.pb"))
    layer_logs = os.listdir(os.path.join(run, "logs", "layers"))
    assert layer_logs  # the per-block curves were written
    base = transfer.load_base(os.path.join(os.path.dirname(run), "baseA", "model.keras"))
    assert list(base.weights)[:2] == list(blocks[:2])
    # --mode=similarity measures every cut point but the classifier.
    experiment.run_treatment(
        config, dataset, transfer.parse_treatment("baseB"), log=lambda *_: None
    )
    config.similarity.update(
        max_images=24, probe_train_images=60, probe_epochs=2, transfer_images=24
    )
    rows = representations.run_similarity(config, dataset, log=lambda *_: None)
    cka = [r for r in rows if r["measure"] == "CKA(baseA, baseB) on A"]
    assert [r["layer"] for r in cka] == list(blocks[:-1])
    assert all(-0.05 <= r["value"] <= 1 + 1e-9 for r in cka)
    copied = [r for r in rows if r["measure"] == "CKA(A1B+, baseA)"]
    assert [r["layer"] for r in copied] == list(blocks[:-1])


@pytest.mark.parametrize(
    "config_name,trainable,blocks",
    [
        # torchvision's resnet50: 25,557,032 (Keras adds BatchNorm's moving statistics).
        ("imagenet_resnet50", 25_557_032, 18),
        # torchvision's vit_b_16: 86,567,656, less its class token and that token's
        # position embedding (2 x 768): the classifier averages the tokens instead.
        ("imagenet_vit_b16", 86_567_656 - 2 * 768, 14),
    ],
)
def test_paper_scale_families_have_the_published_sizes(config_name, trainable, blocks, tmp_path):
    config = config_files.load(config_name)
    config.mode, config.n, config.workdir = "AnB", blocks - 1, str(tmp_path)
    config.dataset.data_dir = str(tmp_path)
    validate.validate(config)
    names = families.block_names(config.model)
    assert len(names) == blocks
    model, _ = transfer.build_model(transfer.parse_treatment("baseA"), config.model, 1000)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == trainable
