"""The paper's 8-layer network (Caffe's "CaffeNet", an AlexNet variant) in Keras 3.

Only keras.layers and keras.ops are used, so the model runs on any Keras backend.
Input size, width multiplier and class count are parameters: the CPU-scale default is
the same 8-layer network, only narrower and on smaller images.
"""

import functools

import keras
import ml_dtypes
import numpy as np
from keras import ops

from kt_transfer.networks import architecture

# The weight layers, in order; transfer copies the first n of these by name.
LAYER_NAMES = architecture.LAYER_NAMES
NORMALIZATION_LAYER = "pixel_normalization"


@keras.saving.register_keras_serializable(package="kt_transfer")
class PixelNormalization(keras.layers.Layer):
    """(pixel - mean) * scale, inside the network: the input pipeline hands over 8-bit
    RGB crops (4x fewer bytes to batch and copy to the accelerator), and the mean the
    network was trained with travels with the saved model. Computed in float32 whatever
    the dtype policy (float16 holds 0..255 only to 1/8); the next layer casts the result.

    The scale is one factor or one per channel. The mean is per channel (mean_rgb), or
    with mean_image_size > 0 a per-pixel mean image of that side (the paper's), a
    non-trainable weight saved with the model, whose centre crop is subtracted. (Caffe
    subtracts the mean image at the data crop's own offset; the network does not see the
    offset of a random training crop, and for a mean image as smooth as ImageNet's the
    centre crop differs from it by a fraction of a level.)
    """

    def __init__(self, mean_rgb=(0.0, 0.0, 0.0), scale=1.0, mean_image_size=0, **kwargs):
        # float32 under any policy, output included (conv1 casts it): under a mixed policy
        # Keras would read the mean image as float16 in call, rounding means above 128 to
        # 1/8 of a level.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mean_rgb = [float(v) for v in mean_rgb]
        # One factor, or one per channel (a keras-hub preset's image converter scales
        # each channel by its own standard deviation: networks/hub.py).
        self.scale = [float(v) for v in scale] if np.ndim(scale) else float(scale)
        self.mean_image_size = int(mean_image_size)
        self.mean_image = None
        if self.mean_image_size:
            self.mean_image = self.add_weight(
                shape=(self.mean_image_size, self.mean_image_size, 3),
                name="mean_image",
                initializer="zeros",
                trainable=False,
                dtype="float32",
            )

    def call(self, inputs):
        inputs = ops.cast(inputs, "float32")
        if self.mean_image is None:
            mean = ops.convert_to_tensor(self.mean_rgb, "float32")
        else:
            top = (self.mean_image_size - inputs.shape[1]) // 2
            left = (self.mean_image_size - inputs.shape[2]) // 2
            mean = ops.convert_to_tensor(self.mean_image)[
                top : top + inputs.shape[1], left : left + inputs.shape[2], :
            ]
        return (inputs - mean) * ops.convert_to_tensor(self.scale, "float32")

    def get_config(self):
        return {
            **super().get_config(),
            "mean_rgb": self.mean_rgb,
            "scale": self.scale,
            "mean_image_size": self.mean_image_size,
        }


@keras.saving.register_keras_serializable(package="kt_transfer")
class LocalResponseNormalization(keras.layers.Layer):
    """Caffe's across-channel LRN: x / (k + alpha/size * sum_window x^2) ** beta.

    Caffe divides alpha by the window size (unlike tf.nn.local_response_normalization),
    so this is written out with keras.ops rather than borrowed from a backend.
    Computed in float32 under any dtype policy: squaring float16 activations overflows
    for |x| > 256 (paper-scale conv1/conv2 outputs reach that), which would zero the output.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0, **kwargs):
        super().__init__(**kwargs)
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        half = self.size // 2
        squared = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [half, half]])
        window_sum = sum(squared[..., i : i + channels] for i in range(self.size))
        scale = self.k + (self.alpha / self.size) * window_sum
        return ops.cast(x / ops.power(scale, self.beta), inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)
        return config


@keras.saving.register_keras_serializable(package="kt_transfer")
class GroupedConv2D(keras.layers.Conv2D):
    """Conv2D whose `groups` are computed as one convolution per group, concatenated.

    Same weights and result as keras.layers.Conv2D(groups=g) (kernel shape
    (kh, kw, in / g, out)), but about twice as fast on CPU, where TensorFlow has no native
    grouped convolution and Keras falls back to a slow XLA path.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        in_per_group = inputs.shape[-1] // self.groups
        out_per_group = self.filters // self.groups
        outputs = [
            ops.conv(
                inputs[..., g * in_per_group : (g + 1) * in_per_group],
                kernel[..., g * out_per_group : (g + 1) * out_per_group],
                strides=self.strides,
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            for g in range(self.groups)
        ]
        return ops.concatenate(outputs, axis=-1)


@keras.saving.register_keras_serializable(package="kt_transfer")
class CaffeMaxPooling2D(keras.layers.Layer):
    """Caffe's max pooling: output side ceil((in - k) / s) + 1, where Keras' "valid"
    rounds down. The input is padded at the bottom and right with the lowest value of
    its dtype so that the last window, which overhangs the edge, pools only real values
    (Caffe clips it the same way). At 227 px both give the paper's 55 -> 27 -> 13 -> 6."""

    def __init__(self, pool_size=3, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides = int(pool_size), int(strides)

    def _pad(self, side):
        out = architecture.output_side(side, self.pool_size, self.strides, "ceil")
        return max((out - 1) * self.strides + self.pool_size - side, 0)

    def call(self, inputs):
        pad_h, pad_w = self._pad(inputs.shape[1]), self._pad(inputs.shape[2])
        if pad_h or pad_w:
            # ml_dtypes' finfo knows bfloat16 (numpy's does not).
            lowest = float(ml_dtypes.finfo(keras.backend.standardize_dtype(inputs.dtype)).min)
            inputs = ops.pad(
                inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], constant_values=lowest
            )
        return ops.max_pool(inputs, self.pool_size, self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def side(s):
            if s is None:
                return None
            return architecture.output_side(s, self.pool_size, self.strides, "ceil")

        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides}


INITS = ("paper", "he")


def _initializers(init, std, bias, last=False):
    """The paper's Gaussian(std) kernels, or He-normal ones; the paper's constant biases.

    "he" keeps fc8 at the paper's small Gaussian so that the first logits are small.
    It exists for CPU-scale runs: a narrow network trained for a few hundred steps
    does not leave the paper init's initial plateau (the full net needs thousands of
    iterations to), so the embedded default uses it and says so.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use --config.model.init=paper or he")
    kernel = (
        keras.initializers.RandomNormal(stddev=std)
        if init == "paper" or last
        else keras.initializers.HeNormal()
    )
    return dict(kernel_initializer=kernel, bias_initializer=keras.initializers.Constant(bias))


_width = architecture.channels  # grouped layers need a channel count divisible by 2


def build_caffenet(
    num_classes,
    input_size=227,
    width=1.0,
    dropout=0.5,
    init="paper",
    name="caffenet",
    mean_rgb=(0.0, 0.0, 0.0),
    scale=1.0,
    mean_image=None,
):
    """Builds the paper's network as a functional Keras model.

    Args:
      num_classes: outputs of fc8 (logits, no softmax).
      input_size: side of the square input crop (227 in the paper).
      width: multiplier on every layer's channel/unit count (1.0 = the paper).
      dropout: dropout rate after fc6 and fc7.
      init: "paper" (Gaussian std 0.01, 0.005 for fc6/fc7) or "he" (He-normal kernels).
      name: model name.
      mean_rgb, scale: the input is RGB pixels in 0..255 (any dtype, e.g. uint8); the
        network first computes (pixel - mean_rgb) * scale.
      mean_image: a per-pixel mean [side, side, 3] (side >= input_size) subtracted
        instead of mean_rgb (its centre crop), or None.

    Returns:
      A keras.Model whose weight layers are named as in LAYER_NAMES, initialized as in
      the paper (Gaussian std 0.01, 0.005 for fc6/fc7; biases 1 for conv2/4/5, fc6/7).
    """
    min_size = architecture.min_input_size()  # pool5 keeps at least a 1x1 map
    if input_size < min_size:
        raise ValueError(
            f"input_size={input_size} is too small for the 8-layer network; use at "
            f"least {min_size} (set --config.model.input_size)."
        )
    w = lambda c: _width(c, width)  # noqa: E731
    _init = functools.partial(_initializers, init)
    L = keras.layers
    inputs = keras.Input((input_size, input_size, 3), name="image")
    normalization = PixelNormalization(
        mean_rgb, scale, 0 if mean_image is None else mean_image.shape[0], name=NORMALIZATION_LAYER
    )
    if mean_image is not None:
        if mean_image.shape[0] < input_size:
            raise ValueError(
                f"mean image of {mean_image.shape[0]} px is smaller than the "
                f"{input_size} px input; compute it at the resize size"
            )
        normalization.set_weights([np.asarray(mean_image, np.float32)])
    x = normalization(inputs)
    x = L.Conv2D(w(96), 11, strides=4, activation="relu", name="conv1", **_init(0.01, 0.0))(x)
    x = CaffeMaxPooling2D(3, 2, name="pool1")(x)
    x = LocalResponseNormalization(name="norm1")(x)
    x = GroupedConv2D(
        w(256), 5, padding="same", groups=2, activation="relu", name="conv2", **_init(0.01, 1.0)
    )(x)
    x = CaffeMaxPooling2D(3, 2, name="pool2")(x)
    x = LocalResponseNormalization(name="norm2")(x)
    x = L.Conv2D(w(384), 3, padding="same", activation="relu", name="conv3", **_init(0.01, 0.0))(x)
    x = GroupedConv2D(
        w(384), 3, padding="same", groups=2, activation="relu", name="conv4", **_init(0.01, 1.0)
    )(x)
    x = GroupedConv2D(
        w(256), 3, padding="same", groups=2, activation="relu", name="conv5", **_init(0.01, 1.0)
    )(x)
    x = CaffeMaxPooling2D(3, 2, name="pool5")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(w(4096), activation="relu", name="fc6", **_init(0.005, 1.0))(x)
    x = L.Dropout(dropout, name="drop6")(x)
    x = L.Dense(w(4096), activation="relu", name="fc7", **_init(0.005, 1.0))(x)
    x = L.Dropout(dropout, name="drop7")(x)
    # Logits in float32 even under a mixed-precision policy, for a stable softmax.
    outputs = L.Dense(num_classes, name="fc8", dtype="float32", **_init(0.01, 0.0, last=True))(x)
    return keras.Model(inputs, outputs, name=name)


def build_from_config(
    model_config, num_classes, name="caffenet", mean_rgb=(0.0, 0.0, 0.0), scale=1.0, mean_image=None
):
    """build_caffenet with the fields of a `config.model` block."""
    return build_caffenet(
        num_classes,
        input_size=model_config.input_size,
        width=model_config.width,
        dropout=model_config.dropout,
        init=model_config.get("init", "paper"),
        name=name,
        mean_rgb=mean_rgb,
        scale=scale,
        mean_image=mean_image,
    )
