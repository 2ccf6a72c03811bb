"""Network families: the networks whose blocks kt_transfer copies, each an ordered list of
named cut points.

A family builds a functional Keras model in which every block is one named layer, the
last block the classifier. "n layers copied" means the first n blocks: a transfer copies
them by name, with every weight they hold (BatchNorm's moving statistics included), and
freezes or fine-tunes them as whole layers. So transfer.py, the optimizer's per-layer
learning rates, the per-layer TensorBoard curves and --mode=similarity treat a ResNet's
residual block as they treat CaffeNet's conv3.

- caffenet (the default): the paper's 8 layers, conv1..fc8, exactly as caffenet.py builds
  them (every existing config, experiment id and result unchanged).
- resnet: a width-scaled ResNet from Keras layers (He et al. 2016): a stem, one block per
  residual block (basic or bottleneck), a classifier (global pooling and a dense layer).
  Our own functional model, not keras-hub's ResNetBackbone: that one fixes 64 filters in
  its first stage and names a block's layers by prefix rather than holding it as one
  layer; here a block is a nested functional model, so it is copied and frozen as one.
- vit: a Vision Transformer (Dosovitskiy et al. 2021) from Keras layers: a patch
  embedding (with learned position embeddings), pre-norm transformer blocks, and a
  classifier (LayerNorm, mean over tokens, a dense layer; no class token).
- keras_hub: the backbone of a keras-hub preset (model.keras_hub.preset), cut into blocks
  at named layers of its own (hub.py), and this module's classifier. With --base_model
  naming the same preset, a transfer starts from its pretrained weights.
- "module:function": a user's network. The function is called as
  `function(inputs, num_classes)`, builds its layers functionally on `inputs` (the
  normalized image tensor, float32) and returns `(logits, cut_points)`: the output tensor
  and the names of its blocks in order, the classifier last. kt_transfer puts its input
  normalization in front, so a base's pixel mean travels with it as for every family.

Inside a block, layers are named "<block>_<part>" so every variable's path is unique in
the model (the optimizer maps variables by path).
"""

import importlib

import keras

from kt_transfer.networks import architecture, caffenet, hub

BUILT_IN = ("caffenet", "resnet", "vit", "keras_hub")
# What a network family's sub-config holds; only the network's own one defines it.
SUB_CONFIGS = {"resnet": "resnet", "vit": "vit", "keras_hub": "keras_hub"}


def network_name(model_config):
    return model_config.get("network", "caffenet")


def is_user_function(network):
    return network not in BUILT_IN and ":" in network


def defining_fields(model_config):
    """The model config that defines a network, for the experiment's id: the family's
    own sub-config only, and for CaffeNet exactly the fields it had before families
    existed (so every existing experiment keeps its id)."""
    network = network_name(model_config)
    fields = {
        k: v
        for k, v in model_config.to_dict().items()
        if k not in ("network", "batchnorm_fine_tune", *SUB_CONFIGS.values())
    }
    if network != "caffenet":
        fields["network"] = network
        fields["batchnorm_fine_tune"] = model_config.get("batchnorm_fine_tune", "train")
        if network in SUB_CONFIGS:
            fields[network] = model_config[SUB_CONFIGS[network]].to_dict()
    return fields


def block_names(model_config):
    """The cut points of the network `model_config` describes, in order (the last is
    the classifier). Pure Python for the built-in families; a user's function is called
    on a small input to learn them."""
    network = network_name(model_config)
    if network == "caffenet":
        return architecture.LAYER_NAMES
    if network == "resnet":
        count = sum(model_config.resnet.stages)
        return ("stem", *(f"res{i}" for i in range(1, count + 1)), "classifier")
    if network == "vit":
        count = model_config.vit.num_blocks
        return ("patch_embedding", *(f"encoder{i}" for i in range(1, count + 1)), "classifier")
    if network == "keras_hub":
        return hub.block_names_of(model_config)
    side = model_config.input_size
    inputs = keras.Input((side, side, 3), name="image")
    outputs, cuts = _user_network(model_config, 2, inputs)
    _check_cut_points(network, keras.Model(inputs, outputs), cuts)
    return cuts


def identify(layer_names):
    """A family's name for a set of top-level layer names (for messages about a base)."""
    names = set(layer_names)
    if set(architecture.LAYER_NAMES) <= names:
        return "caffenet"
    if {"stem", "res1", "classifier"} <= names:
        return "resnet"
    if {"patch_embedding", "encoder1", "classifier"} <= names:
        return "vit"
    if hub.STEM in names and "res1" not in names:
        return "keras_hub"
    return "another network"


def build(model_config, num_classes, name, mean_rgb=(0.0, 0.0, 0.0), scale=1.0, mean_image=None):
    """The family's network as a functional model whose blocks are named layers."""
    network = network_name(model_config)
    if network == "caffenet":
        return caffenet.build_from_config(
            model_config, num_classes, name, mean_rgb, scale, mean_image
        )
    inputs = keras.Input((model_config.input_size, model_config.input_size, 3), name="image")
    normalization = caffenet.PixelNormalization(
        mean_rgb,
        scale,
        0 if mean_image is None else mean_image.shape[0],
        name=caffenet.NORMALIZATION_LAYER,
    )
    if mean_image is not None:
        normalization.set_weights([mean_image])
    x = normalization(inputs)
    if network == "resnet":
        outputs = _resnet(x, num_classes, model_config)
    elif network == "vit":
        outputs = _vit(x, num_classes, model_config)
    elif network == "keras_hub":
        x = hub.apply(x, model_config)
        pooling = keras.layers.GlobalAveragePooling2D if len(x.shape) == 4 else None
        pooling = pooling or keras.layers.GlobalAveragePooling1D
        outputs = _classifier(x, num_classes, pooling, model_config.dropout)
    else:
        outputs, cuts = _user_network(model_config, num_classes, x)
        model = keras.Model(inputs, outputs, name=name)
        _check_cut_points(network, model, cuts)
        return model
    return keras.Model(inputs, outputs, name=name)


def _block(name, inputs_shape, body):
    """A nested functional model named `name`: one layer of the network, holding the
    layers `body(x, prefix)` builds."""
    inputs = keras.Input(inputs_shape[1:], name=f"{name}_input")
    return keras.Model(inputs, body(inputs, name), name=name)


# --- ResNet ------------------------------------------------------------------------


def _conv_bn(x, filters, kernel, strides, name, relu=True):
    L = keras.layers
    x = L.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = L.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual(filters, strides, bottleneck):
    L = keras.layers

    def body(x, name):
        out_channels = filters * 4 if bottleneck else filters
        if bottleneck:
            y = _conv_bn(x, filters, 1, 1, f"{name}_a")
            y = _conv_bn(y, filters, 3, strides, f"{name}_b")
            y = _conv_bn(y, out_channels, 1, 1, f"{name}_c", relu=False)
        else:
            y = _conv_bn(x, filters, 3, strides, f"{name}_a")
            y = _conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
        shortcut = x
        if strides != 1 or x.shape[-1] != out_channels:
            shortcut = _conv_bn(x, out_channels, 1, strides, f"{name}_shortcut", relu=False)
        return L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([y, shortcut]))

    return body


def _resnet(x, num_classes, model_config):
    L = keras.layers
    rc = model_config.resnet
    bottleneck = rc.block == "bottleneck"
    width = lambda c: architecture.channels(c, model_config.width)  # noqa: E731

    def stem(x, name):
        if rc.stem == "imagenet":  # 7x7/2 and a 3x3/2 max pool, as ResNet-50 at 224 px
            x = _conv_bn(x, width(64), 7, 2, name)
            return L.MaxPooling2D(3, 2, padding="same", name=f"{name}_pool")(x)
        return _conv_bn(x, width(64), 3, 1, name)  # small images: one 3x3 conv

    x = _block("stem", x.shape, stem)(x)
    index = 0
    for stage, count in enumerate(rc.stages):
        for i in range(count):
            index += 1
            strides = 2 if stage > 0 and i == 0 else 1
            body = _residual(width(64 * 2**stage), strides, bottleneck)
            x = _block(f"res{index}", x.shape, body)(x)
    return _classifier(x, num_classes, L.GlobalAveragePooling2D, model_config.dropout)


def _classifier(x, num_classes, pooling, dropout, norm=False):
    L = keras.layers

    def body(x, name):
        if norm:
            x = L.LayerNormalization(epsilon=1e-6, name=f"{name}_norm")(x)
        x = pooling(name=f"{name}_pool")(x)
        if dropout:
            x = L.Dropout(dropout, name=f"{name}_dropout")(x)
        # Logits in float32 even under a mixed-precision policy, as CaffeNet's fc8.
        return L.Dense(num_classes, dtype="float32", name=f"{name}_dense")(x)

    return _block("classifier", x.shape, body)(x)


# --- Vision Transformer ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kt_transfer")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding per token position (ViT's, initialized N(0, 0.02))."""

    def build(self, input_shape):
        self.embedding = self.add_weight(
            shape=tuple(input_shape[1:]),
            name="embedding",
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, inputs):
        return inputs + keras.ops.cast(self.embedding, inputs.dtype)


def _vit(x, num_classes, model_config):
    L = keras.layers
    vc = model_config.vit
    hidden, patch = vc.hidden_dim, vc.patch_size

    def patch_embedding(x, name):
        x = L.Conv2D(hidden, patch, strides=patch, padding="valid", name=f"{name}_patches")(x)
        x = L.Reshape((-1, hidden), name=f"{name}_tokens")(x)
        return PositionEmbedding(name=f"{name}_positions")(x)

    def encoder(x, name):
        y = L.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
        y = L.MultiHeadAttention(
            vc.num_heads, hidden // vc.num_heads, dropout=model_config.dropout, name=f"{name}_attn"
        )(y, y)
        x = L.Add(name=f"{name}_add1")([x, y])
        y = L.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
        y = L.Dense(vc.mlp_dim, activation="gelu", name=f"{name}_mlp1")(y)
        if model_config.dropout:
            y = L.Dropout(model_config.dropout, name=f"{name}_dropout")(y)
        y = L.Dense(hidden, name=f"{name}_mlp2")(y)
        return L.Add(name=f"{name}_add2")([x, y])

    x = _block("patch_embedding", x.shape, patch_embedding)(x)
    for i in range(1, vc.num_blocks + 1):
        x = _block(f"encoder{i}", x.shape, encoder)(x)
    return _classifier(x, num_classes, L.GlobalAveragePooling1D, 0.0, norm=True)


# --- A user's network --------------------------------------------------------------


def load_user_function(network):
    """The function `module:function` names.

    Raises:
      ValueError naming --config.model.network and what is wrong.
    """
    module_name, _, function_name = network.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ValueError(
            f"--config.model.network={network!r}: cannot import module {module_name!r} "
            f"({type(e).__name__}: {e}); put it on PYTHONPATH or give caffenet, resnet or vit"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(
            f"--config.model.network={network!r}: module {module_name!r} has no function "
            f"{function_name!r}"
        )
    return function


def _user_network(model_config, num_classes, inputs):
    network = network_name(model_config)
    function = load_user_function(network)
    result = function(inputs, num_classes)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValueError(
            f"--config.model.network={network!r} must return (logits, cut_points), "
            f"got {type(result).__name__}"
        )
    outputs, cuts = result
    return outputs, tuple(cuts)


def _check_cut_points(network, model, cuts):
    """Every cut point is a top-level layer of the model that holds weights, named once."""
    if len(cuts) < 2:
        raise ValueError(
            f"--config.model.network={network!r} gave {len(cuts)} cut point(s); give at "
            "least 2 (a block to copy and the classifier)"
        )
    if len(set(cuts)) != len(cuts):
        raise ValueError(f"--config.model.network={network!r}: cut points repeat: {cuts}")
    layers = {layer.name: layer for layer in model.layers}
    for cut in cuts:
        if cut not in layers or not layers[cut].weights:
            raise ValueError(
                f"--config.model.network={network!r}: cut point {cut!r} is not a layer with "
                f"weights of the model it returns (its layers: {', '.join(list(layers)[:8])}"
                f"{', ...' if len(layers) > 8 else ''})"
            )
