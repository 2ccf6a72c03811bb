"""Treatments in the paper's notation and the builder that copies and freezes by name.

A treatment is data: which half it trains on, where its first n layers come from, and
whether they are frozen. Modes:
  baseA, baseB        a network trained from scratch on one half;
  AnB, BnB (AnA, BnA) layers 1..n copied from baseA/baseB and frozen, n+1..8 trained;
  AnB+, BnB+, ...     the same, but the copied layers are fine-tuned;
  RnB, RnA            the random-features control: layers 1..n randomly initialized and
                      frozen, n+1..8 trained (the paper's "random, untrained" features).
"""

import dataclasses
import re

import numpy as np

from kt_transfer import model as model_lib

MODE_PATTERN = re.compile(r"base(?P<base>[AB])|(?P<source>[ABR])n(?P<target>[AB])(?P<plus>\+?)")
MODES_HELP = ("baseA, baseB, AnB, AnB+, BnB, BnB+, BnA, BnA+, AnA, AnA+, RnB, RnA "
              "(R = random frozen features)")


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

    def layer_plans(self, copied_lr_mult=1.0):
        """One LayerPlan per weight layer, in order."""
        plans = []
        for i, name in enumerate(model_lib.LAYER_NAMES):
            if i >= self.n:
                plans.append(LayerPlan(name, "fresh", True, 1.0))
            elif self.source == "R":
                plans.append(LayerPlan(name, "random", False, 0.0))
            elif self.fine_tune:
                plans.append(LayerPlan(name, "copied", True, copied_lr_mult))
            else:
                plans.append(LayerPlan(name, "copied", False, 0.0))
        return plans


def parse_treatment(mode, n=None):
    """Validates a mode string and n and returns the Treatment.

    Raises:
      ValueError: naming the accepted modes or range of n (the --mode / --n flags).
    """
    match = MODE_PATTERN.fullmatch(mode or "")
    if not match:
        raise ValueError(f"unknown --mode={mode!r}; use one of {MODES_HELP}, or grid")
    if match.group("base"):
        return Treatment(mode=mode, target=match.group("base"))
    if match.group("source") == "R" and match.group("plus"):
        raise ValueError(f"--mode={mode!r}: a fine-tuned random control is just a base "
                         f"network; use --mode=R{mode[1:-1]} or --mode=base{mode[2]}")
    last = len(model_lib.LAYER_NAMES) - 1
    if n is None or not 1 <= int(n) <= last:
        raise ValueError(f"--mode={mode} needs --n between 1 and {last} (layers copied), "
                         f"got --n={n}")
    return Treatment(mode=mode, target=match.group("target"), source=match.group("source"),
                     n=int(n), fine_tune=bool(match.group("plus")))


def check_compatible(base_model, model, layer_names):
    """Raises ValueError naming the first layer whose weights differ in shape."""
    for name in layer_names:
        try:
            base_layer = base_model.get_layer(name)
        except ValueError:
            raise ValueError(f"base network has no layer {name!r}; it is not a kt_transfer "
                             "network (see --config.model)") from None
        want = [tuple(w.shape) for w in model.get_layer(name).weights]
        have = [tuple(w.shape) for w in base_layer.weights]
        if want != have:
            raise ValueError(
                f"base network does not match at layer {name!r}: base weights have shapes "
                f"{have}, this network needs {want}. Train the base with the same "
                "--config.model (width, input_size) and dataset/split (classes).")
    # fc8's shape encodes the class count; compare it even when fc8 is not copied.
    if base_model.output_shape[-1] != model.output_shape[-1]:
        raise ValueError(
            f"base network does not match at layer 'fc8': {base_model.output_shape[-1]} "
            f"classes in the base, {model.output_shape[-1]} here; use the same split")


def build_model(treatment, model_config, num_classes, base_model=None, copied_lr_mult=1.0):
    """The network of a treatment: copy layers 1..n by name, set `trainable` per layer.

    Args:
      treatment: a Treatment.
      model_config: the `config.model` block.
      num_classes: classes of the target half.
      base_model: the trained base network, for treatments that copy from one.
      copied_lr_mult: learning-rate multiplier of copied layers in "+" treatments.

    Returns:
      (model, plans): the Keras model (uncompiled) and its LayerPlans.
    """
    plans = treatment.layer_plans(copied_lr_mult)
    model = model_lib.build_from_config(
        model_config, num_classes, name=treatment.run_name.replace("+", "_plus"))
    copied = [p.name for p in plans if p.origin == "copied"]
    if copied:
        if base_model is None:
            raise ValueError(f"{treatment.run_name} copies {copied} but no base network was given")
        check_compatible(base_model, model, copied)
        for name in copied:
            model.get_layer(name).set_weights(
                [np.array(w) for w in base_model.get_layer(name).get_weights()])
    for plan in plans:
        model.get_layer(plan.name).trainable = plan.trainable
    return model, plans
