import keras
import numpy as np
import pytest

from kt_transfer import config_files
from kt_transfer.networks import caffenet, transfer
from kt_transfer.training import train

MODES = ["AnB", "AnB+", "BnB", "BnB+", "BnA", "BnA+", "AnA", "AnA+", "RnB", "RnA"]


@pytest.fixture(scope="module")
def model_config():
    return config_files.load("tiny").model


@pytest.fixture(scope="module")
def base(model_config):
    keras.utils.set_random_seed(7)
    return caffenet.build_from_config(model_config, 6)


@pytest.mark.parametrize("mode", MODES)
def test_builder_copies_freezes_and_reinitializes_by_layer(mode, base, model_config):
    for n in range(1, 8):
        treatment = transfer.parse_treatment(mode, n)
        model, plans = transfer.build_model(treatment, model_config, 6, base)
        for i, name in enumerate(caffenet.LAYER_NAMES):
            layer, base_layer = model.get_layer(name), base.get_layer(name)
            same = all(
                np.array_equal(a, b) for a, b in zip(layer.get_weights(), base_layer.get_weights())
            )
            copied = i < n and treatment.source != "R"
            # Biases initialized to a constant coincide with the base's; kernels never do.
            kernel_same = np.array_equal(layer.kernel.numpy(), base_layer.kernel.numpy())
            assert same if copied else not kernel_same, (mode, n, name)
            frozen = i < n and not treatment.fine_tune
            assert layer.trainable is not frozen, (mode, n, name)
            assert plans[i].trainable is not frozen


def test_base_modes_and_run_names():
    assert transfer.parse_treatment("baseB").run_name == "baseB"
    t = transfer.parse_treatment("AnB+", 4)
    assert (t.run_name, t.base_mode, t.target, t.fine_tune) == ("A4B+", "baseA", "B", True)
    assert transfer.parse_treatment("RnB", 3).base_mode is None
    # The restart control: every layer of the target's own base, fine-tuned.
    restart = transfer.parse_treatment("BnB+", 8)
    assert (restart.run_name, restart.base_mode) == ("B8B+", "baseB")
    assert [p.origin for p in restart.layer_plans()] == ["copied"] * 8
    assert all(p.trainable for p in restart.layer_plans())
    assert transfer.parse_treatment("AnA+", 8).run_name == "A8A+"


@pytest.mark.parametrize(
    "mode,n,message",
    [
        ("AnB", 0, "between 1 and 7"),
        ("AnB", 8, "between 1 and 7"),  # 8 only for the restart control
        ("BnB", 8, "restart control"),
        ("RnB", 8, "between 1 and 7"),
        ("XnY", 3, "unknown --mode"),
        ("AnB", None, "--n"),
        ("RnB+", 2, "random control"),
    ],
)
def test_bad_mode_or_n_raises_a_clear_error(mode, n, message):
    with pytest.raises(ValueError, match=message):
        transfer.parse_treatment(mode, n)


def test_mismatched_base_names_the_layer_and_both_shapes(model_config, base):
    wider = model_config.copy_and_resolve_references()
    wider.width = 0.125
    treatment = transfer.parse_treatment("AnB", 2)
    with pytest.raises(ValueError, match=r"layer 'conv1'.*\(11, 11, 3, 6\).*\(11, 11, 3, 12\)"):
        transfer.build_model(treatment, wider, 6, base)
    # Only copied layers are checked: a base of another class count (unequal halves,
    # another dataset) fits every n below 8; copying its fc8 does not.
    model, _ = transfer.build_model(transfer.parse_treatment("AnB", 7), model_config, 9, base)
    assert model.output_shape[-1] == 9
    with pytest.raises(ValueError, match=r"layer 'fc8'.*\(\d+, 6\).*\(\d+, 9\)"):
        transfer.build_model(transfer.parse_treatment("BnB+", 8), model_config, 9, base)
    bigger = model_config.copy_and_resolve_references()
    bigger.input_size = 99  # changes fc6's input: caught when fc6 is copied
    with pytest.raises(ValueError, match="layer 'fc6'"):
        transfer.build_model(transfer.parse_treatment("AnB", 6), bigger, 6, base)


def test_one_fit_step_leaves_frozen_weights_bit_identical(model_config, base):
    config = config_files.load("tiny")
    model, plans = transfer.build_model(transfer.parse_treatment("AnB", 3), model_config, 6, base)
    train.compile_model(model, config.train, plans)
    before = {
        layer.name: [w.copy() for w in layer.get_weights()]
        for layer in model.layers
        if layer.weights
    }
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, size=(8, 67, 67, 3)).astype("float32")
    model.fit(x, rng.integers(0, 6, 8), batch_size=8, epochs=1, verbose=0)
    for i, name in enumerate(caffenet.LAYER_NAMES):
        after = model.get_layer(name).get_weights()
        unchanged = all(np.array_equal(a, b) for a, b in zip(before[name], after))
        assert unchanged == (i < 3), name


def test_training_is_deterministic_under_a_seed(model_config):
    config = config_files.load("tiny")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, size=(16, 67, 67, 3)).astype("float32")
    y = rng.integers(0, 6, 16)
    results = []
    for _ in range(2):
        keras.utils.set_random_seed(1)
        model, plans = transfer.build_model(transfer.parse_treatment("baseA"), model_config, 6)
        train.compile_model(model, config.train, plans)
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        results.append((history.history["loss"], model.get_weights()))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert np.array_equal(a, b)


# Faults (issue 22): a base file that cannot be used is one line naming it and the fix.


def test_a_keras_hub_preset_directory_that_does_not_load_is_one_line(tmp_path):
    """What keras_hub's save_to_preset writes (config.json, metadata.json, weights), here
    with an empty weights file and a config keras-hub cannot build (tests/test_hub.py
    loads real ones)."""
    import json

    from kt_transfer.networks import hub

    preset = tmp_path / "resnet_preset"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps({"class_name": "ResNetBackbone"}))
    (preset / "metadata.json").write_text(json.dumps({"keras_hub_version": "0.32.0"}))
    (preset / "model.weights.h5").write_bytes(b"")
    assert transfer.base_model_format(str(preset)) == "keras_hub"
    with pytest.raises(hub.HubError, match=r"the keras-hub preset .* does not load: ") as raised:
        transfer.load_base(str(preset))
    assert "\n" not in str(raised.value)


def test_an_unreadable_base_file_is_named_with_what_is_wrong(tmp_path, base):
    good = str(tmp_path / "base.keras")
    base.save(good)
    truncated = str(tmp_path / "truncated.keras")
    with open(good, "rb") as f, open(truncated, "wb") as out:
        out.write(f.read()[:2000])
    not_zip = str(tmp_path / "not_zip.keras")
    with open(not_zip, "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\n")
    for path in (truncated, not_zip):
        with pytest.raises(
            ValueError,
            match=f"--base_model='{path}' is not a readable .keras file: it is not a zip archive",
        ):
            transfer.base_model_format(path)  # checked before any work (validate)
        with pytest.raises(transfer.UnreadableBaseError, match="not a zip archive"):
            transfer.load_base(path)

    inputs = keras.Input((4,))
    foreign = keras.Model(inputs, keras.layers.Dense(3, name="head")(inputs))
    foreign.save(tmp_path / "foreign.keras")
    with pytest.raises(
        transfer.UnreadableBaseError, match="is a Keras model but not a kt_transfer network.*head"
    ):
        transfer.load_base(str(tmp_path / "foreign.keras"))

    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    lambda_model.save(tmp_path / "lambda.keras")
    with pytest.raises(transfer.UnreadableBaseError, match="holds a Lambda layer") as error:
        transfer.load_base(str(tmp_path / "lambda.keras"))
    assert len(str(error.value).splitlines()) == 1
    assert transfer.load_base(good).weights.keys() >= {"conv1", "fc8"}
