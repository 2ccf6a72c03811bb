"""keras-hub backbones as kt_transfer networks: a preset's functional backbone cut into
named blocks, so a pretrained network is a base like any other.

`--config.model.network=keras_hub` builds the backbone of the keras-hub preset at
`model.keras_hub.preset` (a local directory: what `save_to_preset` writes, or a Kaggle or
Hugging Face preset downloaded beforehand) from its config alone, cuts it into blocks at
`model.keras_hub.cut_points` and puts kt_transfer's classifier on top. A cut point is a
layer of the backbone whose output ends a block; each block is a nested functional model
of the backbone's own layers between two cut points, so copying and freezing stay by
block name, as for every family. Empty cut points: the backbone's stem and each level of
its feature pyramid (ResNetBackbone: "stem" up to pool1_pool, then stack0..stack3).

`--base_model=<preset directory>` copies the preset's weights into the first n blocks
(preset_base). Its input normalization comes from the preset's image converter, which
computes `pixel * scale + offset`: kt_transfer's PixelNormalization computes
`(pixel - mean) * scale`, so mean = -offset / scale, per channel. A preset saved without
an image converter records no normalization and is refused, as an old SavedModel is.

keras-hub is imported here only (it takes seconds and is an optional dependency:
`pip install "kt_transfer[hub]"`).
"""

import json
import os

import keras

# Where a preset names what it holds (keras_hub/src/utils/preset_utils.py).
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.json"
CONVERTER_FILES = ("image_converter.json", "preprocessor.json")
STEM = "stem"


class HubError(ValueError):
    """A keras-hub preset or its cut points cannot make a kt_transfer network."""


def preset_class(path):
    """The class a keras-hub preset directory holds (its config.json beside a
    metadata.json that names keras-hub's version), or None for anything else."""
    try:
        with open(os.path.join(path, METADATA_FILE)) as f:
            if "keras_hub_version" not in json.load(f):
                return None
        with open(os.path.join(path, CONFIG_FILE)) as f:
            return json.load(f).get("class_name", "a keras-hub model")
    except (OSError, ValueError, AttributeError):
        return None


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise HubError(
            "--config.model.network=keras_hub needs keras-hub: pip install 'kt_transfer[hub]'"
        ) from None
    return keras_hub


def load_backbone(preset, weights=False):
    """The preset's backbone, with its weights or (weights=False) freshly initialised."""
    if not preset_class(preset):
        raise HubError(
            f"--config.model.keras_hub.preset={preset!r} is not a keras-hub preset directory "
            f"(one holding {METADATA_FILE} and {CONFIG_FILE}: what save_to_preset writes)"
        )
    try:
        return _keras_hub().models.Backbone.from_preset(preset, load_weights=weights)
    except HubError:
        raise
    except Exception as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubError(f"the keras-hub preset {preset!r} does not load: {message[:200]}") from None


def _layer_of(tensor):
    """The name of the layer that produced a functional model's tensor."""
    return tensor._keras_history.operation.name


def default_cut_points(backbone):
    """The backbone's stem and the levels of its feature pyramid, as layer names: for
    keras-hub's ResNets, the layer before the first "stack0_" layer and each stage's last
    block output."""
    pyramid = getattr(backbone, "pyramid_outputs", None) or {}
    cuts = [_layer_of(tensor) for tensor in pyramid.values()]
    if not cuts:
        raise HubError(
            f"{type(backbone).__name__} has no feature pyramid to cut at: give the layers "
            "that end each block, --config.model.keras_hub.cut_points='(\"layer1\", ...)'"
        )
    names = [layer.name for layer in backbone.layers]
    first_stage = cuts[0].split("_")[0] + "_"
    starts = [i for i, name in enumerate(names) if name.startswith(first_stage)]
    if starts and starts[0] > 1:
        cuts.insert(0, names[starts[0] - 1])
    return tuple(cuts)


def block_names(cuts, default):
    """A block's name: the stage its cut layer belongs to ("stack0_block1_out": stack0)
    where those are distinct, else the layer's name; the default cuts' first is "stem"."""
    names = [cut.split("_")[0] for cut in cuts]
    if len(set(names)) < len(names):
        names = [f"{cut}_block" for cut in cuts]
    if default:
        names[0] = STEM
    return tuple(names)


def blocks(backbone, cut_points=()):
    """[(name, functional model)]: the backbone cut into consecutive blocks."""
    cuts = tuple(cut_points) or default_cut_points(backbone)
    layers = {layer.name: layer for layer in backbone.layers}
    missing = [cut for cut in cuts if cut not in layers]
    if missing:
        names = list(layers)
        raise HubError(
            f"--config.model.keras_hub.cut_points: {type(backbone).__name__} has no layer "
            f"{missing[0]!r} (its layers: {', '.join(names[1:7])}, ..., {names[-1]})"
        )
    order = {name: i for i, name in enumerate(layers)}
    if [order[c] for c in cuts] != sorted(order[c] for c in cuts) or len(set(cuts)) < len(cuts):
        raise HubError(
            f"--config.model.keras_hub.cut_points must name layers once each, in the "
            f"backbone's order; got {cuts}"
        )
    ends = [backbone.input] + [layers[cut].output for cut in cuts]
    names = block_names(cuts, default=not cut_points)
    try:
        return [
            (name, keras.Model(ends[i], ends[i + 1], name=name)) for i, name in enumerate(names)
        ]
    except ValueError as e:  # a block that needs a tensor from before its cut point
        raise HubError(
            f"--config.model.keras_hub.cut_points {cuts}: a block is not a function of the "
            f"previous block's output alone ({str(e).splitlines()[0][:160]}); cut where one "
            "tensor carries everything on"
        ) from None


def _sized_backbone(model_config):
    """The preset's backbone (no weights), refused in one line when it takes images of a
    fixed size other than model.input_size."""
    hc = model_config.keras_hub
    backbone = load_backbone(hc.preset)
    side = model_config.input_size
    fixed = tuple(backbone.input.shape[1:3])
    if None not in fixed and fixed != (side, side):
        raise HubError(
            f"the keras-hub preset {hc.preset!r} takes {fixed[0]}x{fixed[1]} images; set "
            f"--config.model.input_size={fixed[0]} (now {side})"
        )
    return backbone


def block_names_of(model_config):
    """The network's cut points in order, the classifier last."""
    backbone = _sized_backbone(model_config)
    names = (name for name, _ in blocks(backbone, model_config.keras_hub.cut_points))
    return (*names, "classifier")


def apply(x, model_config):
    """The backbone's blocks, freshly initialised, applied to the normalized image x."""
    backbone = _sized_backbone(model_config)
    for _, block in blocks(backbone, model_config.keras_hub.cut_points):
        x = block(x)
    return x


def normalization(preset):
    """(mean_rgb, scale) of the preset's image converter, or (None, None) when the
    preset holds none. keras-hub's converter computes pixel * scale + offset."""
    for name in CONVERTER_FILES:
        try:
            with open(os.path.join(preset, name)) as f:
                config = json.load(f)["config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        converter = config.get("image_converter", {}).get("config", config)
        if "scale" not in converter:
            continue
        # keras-hub's None: no scaling, no offset (the pixels as they are).
        scale, offset = converter["scale"], converter.get("offset")
        scale = 1.0 if scale is None else scale
        offset = 0.0 if offset is None else offset
        scales = [float(s) for s in scale] if isinstance(scale, list) else [float(scale)] * 3
        offsets = [float(o) for o in offset] if isinstance(offset, list) else [float(offset)] * 3
        if any(s == 0 for s in scales):
            continue
        mean = tuple(-o / s for o, s in zip(offsets, scales))
        return mean, scales if len(set(scales)) > 1 else scales[0]
    return None, None


def preset_base(path, model_config, base_network):
    """The BaseNetwork of a keras-hub preset: its pretrained weights per block, cut as
    model_config.keras_hub.cut_points cuts the network built from the config, and the
    normalization its image converter records. `base_network` is transfer.BaseNetwork."""
    hub_config = model_config.get("keras_hub") if model_config is not None else None
    cut_points = hub_config.cut_points if hub_config is not None else ()
    backbone = load_backbone(path, weights=True)
    weights = {name: block.get_weights() for name, block in blocks(backbone, cut_points)}
    mean_rgb, scale = normalization(path)
    return base_network(weights, mean_rgb, scale, path)
