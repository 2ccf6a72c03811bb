"""The paper's solver: Caffe SGD with per-layer learning-rate multipliers.

Caffe's update, per parameter w with learning-rate multiplier m and decay multiplier d:
    v <- momentum * v + lr * m * (grad + weight_decay * d * w);   w <- w - v
Weight decay goes through the momentum (coupled L2), unlike Keras' built-in decoupled
`weight_decay`, so it is added to the gradient here. Biases get m = 2 * layer multiplier
and d = 0. Each distinct (m, d) pair is one CaffeSGD inside a keras MultiOptimizer, which
is also how the fine-tuning sweep scales the learning rate of copied layers. Frozen layers
are not trainable, so they get neither gradient nor update nor decay.
"""

import keras
from keras import ops

from kt_transfer.training import keras_compat


@keras.saving.register_keras_serializable(package="kt_transfer")
class CaffeSGD(keras.optimizers.SGD):
    """SGD with momentum whose L2 weight decay is added to the gradient, as in Caffe."""

    def __init__(self, l2_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2_decay = l2_decay

    def update_step(self, gradient, variable, learning_rate):
        if self.l2_decay:
            gradient = ops.add(
                gradient, ops.multiply(ops.cast(self.l2_decay, variable.dtype), variable)
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2_decay"] = self.l2_decay
        return config


@keras.saving.register_keras_serializable(package="kt_transfer")
class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Caffe's "step" policy, base_lr * gamma ** floor(iteration / step_size), optionally
    ramped up linearly over the first `warmup_steps` iterations (not in the paper)."""

    def __init__(self, base_lr, step_size, gamma, warmup_steps=0):
        self.base_lr, self.step_size, self.gamma = base_lr, step_size, gamma
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = self.base_lr * ops.power(self.gamma, ops.floor(step / self.step_size))
        if self.warmup_steps:
            lr = lr * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "step_size": self.step_size,
            "gamma": self.gamma,
            "warmup_steps": self.warmup_steps,
        }


def step_schedule(base_lr, step_size, gamma, warmup_steps=0):
    return StepSchedule(base_lr, step_size, gamma, warmup_steps)


def make_optimizer(train_config, layer_lr_mults, model=None):
    """One MultiOptimizer applying each trainable layer's multiplier to its variables.

    Args:
      train_config: the `config.train` block (base_lr, lr_step_size, lr_gamma, momentum,
        weight_decay, bias_lr_mult).
      layer_lr_mults: {layer name: lr multiplier} for the trainable weight layers.
      model: the network, for blocks that hold several layers (ResNet, ViT): each of a
        block's variables takes the block's multiplier. Kernels (any weight of 2 or more
        dimensions) get weight decay; biases the bias multiplier and no decay (Caffe's
        rule); other 1-D weights (BatchNorm and LayerNorm scales and shifts) no decay.
        Without it, each name is one layer with a kernel and a bias (CaffeNet).

    Returns:
      A keras.optimizers.MultiOptimizer.
    """
    groups = {}

    def group(lr_mult, decay):
        key = (float(lr_mult), float(decay))
        if key not in groups:
            groups[key] = CaffeSGD(
                l2_decay=decay,
                momentum=train_config.momentum,
                learning_rate=step_schedule(
                    train_config.base_lr * lr_mult,
                    train_config.lr_step_size,
                    train_config.lr_gamma,
                    train_config.get("warmup_steps", 0),
                ),
                name=f"sgd_lr{lr_mult:g}_wd{decay:g}".replace("+", ""),  # 1e+06: no "+"
            )
        return groups[key]

    # Variables of layers outside the map (there should be none) get the new-layer solver.
    optimizer_map = keras.optimizers.OptimizerMap(
        default_optimizer=group(1.0, train_config.weight_decay)
    )
    for name, mult in layer_lr_mults.items():
        if model is None:
            optimizer_map[f"{name}/kernel"] = group(mult, train_config.weight_decay)
            optimizer_map[f"{name}/bias"] = group(mult * train_config.bias_lr_mult, 0.0)
            continue
        for variable in model.get_layer(name).trainable_weights:
            if len(variable.shape) >= 2:
                optimizer_map[variable.path] = group(mult, train_config.weight_decay)
            elif variable.path.endswith("bias"):
                optimizer_map[variable.path] = group(mult * train_config.bias_lr_mult, 0.0)
            else:
                optimizer_map[variable.path] = group(mult, 0.0)
    return keras.optimizers.MultiOptimizer(optimizer_map)


def block_kernel(layer):
    """A block's first kernel (its first weight of 2 or more dimensions): the weight
    whose learning rate and filters stand for the block's (CaffeNet: the layer's kernel)."""
    for weight in layer.weights:
        if len(weight.shape) >= 2:
            return weight
    raise ValueError(f"layer {layer.name!r} has no kernel")


def block_kernels(layer):
    """Every kernel of a block (weights of 2 or more dimensions), trainable or not."""
    return [w for w in layer.weights if len(w.shape) >= 2]


def layer_learning_rate(model, layer_name):
    """The learning rate the solver applies to a layer's (block's first) kernel now: its
    group's schedule (warmup and steps included) at the group's own iteration count.

    Args:
      model: a model compiled with an optimizer from make_optimizer, possibly inside
        Keras' LossScaleOptimizer (mixed_float16).
    """
    multi = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    path = block_kernel(model.get_layer(layer_name)).path
    group = keras_compat.optimizer_of_variable(multi, path)
    return float(keras.ops.convert_to_numpy(group.learning_rate))
