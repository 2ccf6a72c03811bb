"""Treatments in the paper's notation and the builder that copies and freezes by name.

A treatment is data: which half it trains on, where its first n layers come from, and
whether they are frozen. Modes:
  baseA, baseB        a network trained from scratch on one half;
  AnB, BnB (AnA, BnA) layers 1..n copied from baseA/baseB and frozen, n+1..8 trained;
  AnB+, BnB+, ...     the same, but the copied layers are fine-tuned;
  RnB, RnA            the random-features control: layers 1..n randomly initialized and
                      frozen, n+1..8 trained (the paper's "random, untrained" features);
  B8B+, A8A+          the restart control: all 8 layers copied from the target's own
                      base and trained again on its half with the schedule restarted
                      (warmup included). BnB+ at n differs from it only in re-initialising
                      layers n+1..8, so BnB+ - B8B+ is the re-initialisation's effect and
                      B8B+ - base the restart's (not in the paper).
"""

import dataclasses
import os
import re
import zipfile

import keras
import numpy as np

from kt_transfer.networks import architecture, caffenet, families, hub

MODE_PATTERN = re.compile(r"base(?P<base>[AB])|(?P<source>[ABR])n(?P<target>[AB])(?P<plus>\+?)")
RESTART_N = 8  # n of CaffeNet's restart control: every layer copied (a family's: its count)
MODES_HELP = (
    "baseA, baseB, AnB, AnB+, BnB, BnB+, BnA, BnA+, AnA, AnA+, RnB, RnA "
    "(R = random frozen features)"
)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    name: str
    origin: str  # "copied" (from the base), "fresh" (initialized), "random" (fresh, frozen)
    trainable: bool
    lr_mult: float  # 0 when frozen


@dataclasses.dataclass(frozen=True)
class Treatment:
    mode: str  # e.g. "AnB+", "baseA"
    target: str  # the half it trains and is evaluated on
    source: str | None = None  # "A", "B", "R" (random), None for a base network
    n: int = 0
    fine_tune: bool = False

    @property
    def run_name(self):
        """Directory name: baseA, A4B, A4B+, R3B ..."""
        if self.source is None:
            return self.mode
        return f"{self.source}{self.n}{self.target}{'+' if self.fine_tune else ''}"

    @property
    def base_mode(self):
        """The base network this treatment copies from, or None."""
        return f"base{self.source}" if self.source in ("A", "B") else None

    def layer_plans(self, copied_lr_mult=1.0, copied_fc_lr_mult=None, blocks=None):
        """One LayerPlan per block (CaffeNet: weight layer), in order.

        copied_fc_lr_mult, if given, is the multiplier of copied fully-connected layers
        (CaffeNet's fc6, fc7) in "+" treatments; the copied conv layers use copied_lr_mult.
        blocks: the network's cut points (families.block_names); default CaffeNet's.
        """
        plans = []
        for i, name in enumerate(blocks or architecture.LAYER_NAMES):
            if i >= self.n:
                plans.append(LayerPlan(name, "fresh", True, 1.0))
            elif self.source == "R":
                plans.append(LayerPlan(name, "random", False, 0.0))
            elif self.fine_tune:
                fc = name.startswith("fc") and copied_fc_lr_mult is not None
                plans.append(
                    LayerPlan(name, "copied", True, copied_fc_lr_mult if fc else copied_lr_mult)
                )
            else:
                plans.append(LayerPlan(name, "copied", False, 0.0))
        return plans


def parse_treatment(mode, n=None, blocks=None):
    """Validates a mode string and n and returns the Treatment.

    blocks: the network's cut points (families.block_names), default CaffeNet's 8 layers:
    n counts copied blocks, 1..len(blocks) - 1 (len(blocks): the restart control).

    Raises:
      ValueError: naming the accepted modes or range of n (the --mode / --n flags).
    """
    match = MODE_PATTERN.fullmatch(mode or "")
    if not match:
        raise ValueError(f"unknown --mode={mode!r}; use one of {MODES_HELP}, or grid")
    if match.group("base"):
        return Treatment(mode=mode, target=match.group("base"))
    if match.group("source") == "R" and match.group("plus"):
        raise ValueError(
            f"--mode={mode!r}: a fine-tuned random control is just a base "
            f"network; use --mode=R{mode[1:-1]} or --mode=base{mode[2]}"
        )
    count = len(blocks or architecture.LAYER_NAMES)
    last = count - 1
    restart = (  # B8B+: every layer of the target's own base, trained again (RESTART_N)
        n is not None
        and int(n) == count
        and match.group("source") == match.group("target")
        and match.group("plus")
    )
    if n is None or not (1 <= int(n) <= last or restart):
        raise ValueError(
            f"--mode={mode} needs --n between 1 and {last} (layers copied), got --n={n}"
            f" ({count} only for the restart control, a fine-tuned selffer: BnB+ or AnA+)"
        )
    return Treatment(
        mode=mode,
        target=match.group("target"),
        source=match.group("source"),
        n=int(n),
        fine_tune=bool(match.group("plus")),
    )


class BaseMismatchError(ValueError):
    """The base network's architecture or input normalization does not fit the network
    being built."""


class UnreadableBaseError(BaseMismatchError):
    """The base network's file cannot be loaded: truncated, not a Keras archive, not a
    kt_transfer network, or holding code that safe mode refuses."""


@dataclasses.dataclass
class BaseNetwork:
    """What a transfer needs of a base: its weight layers and the input normalization
    (PixelNormalization's mean, mean image and scale) they were trained under, which the
    transfer network inherits."""

    weights: dict  # {layer name: [kernel, bias]} as numpy arrays
    mean_rgb: tuple | None  # None: not recorded (a SavedModel from an older export)
    scale: float | None
    origin: str  # where it was loaded from, for messages
    mean_image: np.ndarray | None = None  # the per-pixel mean, if the base used one


def base_network(model, origin="a Keras model"):
    """The BaseNetwork of an in-memory Keras network: every top-level layer that holds
    weights (a block: all of its weights, BatchNorm's moving statistics included)."""
    weights = {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.weights and layer.name != caffenet.NORMALIZATION_LAYER
    }
    mean_image = None
    try:
        norm = model.get_layer(caffenet.NORMALIZATION_LAYER)
        mean_rgb, scale = tuple(norm.mean_rgb), norm.scale
        if getattr(norm, "mean_image", None) is not None:
            mean_image = keras.ops.convert_to_numpy(norm.mean_image)
    except ValueError:
        mean_rgb = scale = None
    return BaseNetwork(weights, mean_rgb, scale, origin, mean_image)


def base_model_format(path, label=None):
    """ "keras" or "saved_model": what --base_model points to, checked before any work.

    Raises:
      FileNotFoundError / ValueError naming --base_model and what it accepts.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"--base_model={path!r} does not exist; give a .keras file "
            "or a SavedModel directory (a run's model.keras or saved_model/)"
        )
    if os.path.isfile(path) and path.endswith(".keras"):
        if not zipfile.is_zipfile(path):
            raise UnreadableBaseError(
                f"{label or f'--base_model={path!r}'} is not a readable .keras file: it is "
                "not a zip archive (truncated by an interrupted copy, or not saved by "
                "Keras); give a kt_transfer run's model.keras or saved_model/"
            )
        return "keras"
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    if hub.preset_class(path):
        return "keras_hub"
    raise ValueError(
        f"--base_model={path!r} is neither a .keras file nor a SavedModel directory (one "
        "holding saved_model.pb), nor a keras-hub preset directory (metadata.json, config.json)"
    )


def load_base(path, label=None, model_config=None):
    """The base network stored at `path`: a run's `model.keras` or its `saved_model/`, or
    a keras-hub preset directory (cut into blocks as `model_config.keras_hub` cuts the
    network: hub.preset_base).

    The one way every base is loaded (the workdir's own and --base_model alike). A
    SavedModel is read through its variables, named "<layer>/kernel" and "<layer>/bias"
    by Keras, and the normalization kt_transfer's export records beside them, so no
    Keras code is needed to load it.

    Args:
      label: how messages name it (default "--base_model=<path>").
    Raises:
      UnreadableBaseError: one line naming the file, what is wrong and what to give.
    """
    label = label or f"--base_model={path!r}"
    fix = "give a kt_transfer run's model.keras or saved_model/"
    form = base_model_format(path, label)
    if form == "keras_hub":
        return hub.preset_base(path, model_config, BaseNetwork)
    if form == "keras":
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "Lambda" in str(e) or "safe_mode" in str(e):
                raise UnreadableBaseError(
                    f"{label} holds a Lambda layer (arbitrary Python code), which kt_transfer "
                    f"does not load (Keras safe mode); {fix}"
                ) from None
            raise UnreadableBaseError(
                f"{label} cannot be loaded as a Keras model ({message[:200]}); {fix}"
            ) from None
        names = [layer.name for layer in model.layers]
        if caffenet.NORMALIZATION_LAYER not in names:
            raise UnreadableBaseError(
                f"{label} is a Keras model but not a kt_transfer network (no "
                f"{caffenet.NORMALIZATION_LAYER!r} layer; its layers: "
                f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); {fix}"
            )
        return base_network(model, origin=path)
    import tensorflow as tf  # only here: SavedModels are a TensorFlow format

    from kt_transfer.training import export

    try:
        variables = tf.saved_model.load(path).variables
    except Exception as e:
        raise UnreadableBaseError(
            f"{label} cannot be loaded as a SavedModel ({str(e).splitlines()[0][:200]}); {fix}"
        ) from None
    by_name = {v.name.split(":")[0]: v.numpy() for v in variables}
    weights = {
        name: [by_name[f"{name}/kernel"], by_name[f"{name}/bias"]]
        for name in caffenet.LAYER_NAMES
        if f"{name}/kernel" in by_name and f"{name}/bias" in by_name
    }
    recorded = export.read_metadata(path)
    return BaseNetwork(
        weights,
        tuple(recorded["mean_rgb"]) if recorded else None,
        recorded["scale"] if recorded else None,
        path,
        by_name.get(f"{caffenet.NORMALIZATION_LAYER}/mean_image"),
    )


def check_compatible(base, model, layer_names):
    """Raises BaseMismatchError naming the first copied block the base lacks or whose
    weights differ in shape, and both networks' families. Only copied blocks are checked:
    a base trained on another class count (another split or dataset: transfer between
    tasks) fits any n whose copy stops below the classifier."""
    ours = families.identify(layer.name for layer in model.layers)
    theirs = families.identify(base.weights)
    for name in layer_names:
        if name not in base.weights:
            raise BaseMismatchError(
                f"base network {base.origin!r} ({theirs}: blocks "
                f"{', '.join(list(base.weights)[:5])}{', ...' if len(base.weights) > 5 else ''})"
                f" has no block {name!r} of this {ours} network; copy from a base of the "
                "same --config.model.network"
            )
        want = [tuple(w.shape) for w in model.get_layer(name).weights]
        have = [tuple(w.shape) for w in base.weights[name]]
        if want != have:
            raise BaseMismatchError(
                f"base network ({theirs}) does not match this {ours} network at "
                f"{'layer' if ours == 'caffenet' else 'block'} {name!r}: base weights have "
                f"shapes {have}, this network needs {want}. "
                "Train the base with the same --config.model (network, width, input_size) "
                "and dataset/split (classes)."
            )


def build_model(
    treatment,
    model_config,
    num_classes,
    base=None,
    copied_lr_mult=1.0,
    mean_rgb=(0.0, 0.0, 0.0),
    scale=1.0,
    copied_fc_lr_mult=None,
    mean_image=None,
):
    """The network of a treatment: copy layers 1..n by name, set `trainable` per layer.

    Args:
      treatment: a Treatment.
      model_config: the `config.model` block.
      num_classes: classes of the target half.
      base: the trained base network, for treatments that copy from one: a BaseNetwork
        (see load_base) or a Keras model.
      copied_lr_mult: learning-rate multiplier of copied layers in "+" treatments.
      mean_rgb, scale, mean_image: input normalization built into the network (see
        caffenet.py) when it copies nothing; a network that copies layers inherits its
        base's instead, as the paper's transfer nets used their base's mean file.
      copied_fc_lr_mult: multiplier of copied fc layers, if different (see layer_plans).

    Freezing means frozen: a frozen block is not trainable, so Keras computes no gradient
    for its weights and runs its BatchNorm layers in inference mode (their moving
    statistics stay as copied: bit-identical after training). Dropout inside a frozen
    block still drops in training (it has no weights; as in Caffe, where a frozen layer's
    dropout layer runs as usual); LayerNorm has no statistics, only its frozen scale and
    shift. In "+" treatments `model_config.batchnorm_fine_tune` says what the copied
    blocks' BatchNorm layers do: "train" (the default: statistics, scale and shift
    updated, as the rest of the block), or "frozen" (they stay in inference mode with
    the base's statistics, scale and shift, while the block's other weights fine-tune).

    Returns:
      (model, plans): the Keras model (uncompiled) and its LayerPlans.
    """
    blocks = families.block_names(model_config)
    plans = treatment.layer_plans(copied_lr_mult, copied_fc_lr_mult, blocks)
    copied = [p.name for p in plans if p.origin == "copied"]
    if copied:
        if base is None:
            raise ValueError(f"{treatment.run_name} copies {copied} but no base network was given")
        base = base if isinstance(base, BaseNetwork) else base_network(base)
        # Copied filters only mean what they meant on inputs normalized the same way:
        # the network inherits the base's normalization, as the paper's transfer nets
        # used their base's mean file.
        if base.mean_rgb is None:
            raise BaseMismatchError(
                f"base network {base.origin!r} does not record its input normalization (a "
                "SavedModel exported before kt_transfer recorded it: use its model.keras; "
                "a keras-hub preset saved without its image converter: save the task's "
                "preprocessor with it)"
            )
        mean_rgb, scale, mean_image = base.mean_rgb, base.scale, base.mean_image
    model = families.build(
        model_config,
        num_classes,
        name=treatment.run_name.replace("+", "_plus"),
        mean_rgb=mean_rgb,
        scale=scale,
        mean_image=mean_image,
    )
    if copied:
        check_compatible(base, model, copied)
        for name in copied:
            model.get_layer(name).set_weights(base.weights[name])
    for plan in plans:
        model.get_layer(plan.name).trainable = plan.trainable
    if treatment.fine_tune and model_config.get("batchnorm_fine_tune", "train") == "frozen":
        for name in copied:
            for layer in _sublayers(model.get_layer(name)):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    return model, plans


BATCHNORM_FINE_TUNE = ("train", "frozen")


def _sublayers(layer):
    """A block's layers, nested ones included (the block itself for a plain layer)."""
    inner = getattr(layer, "layers", None)
    if not inner:
        return [layer]
    return [sub for child in inner for sub in _sublayers(child)]
