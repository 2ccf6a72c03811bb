"""The 8-layer network's shape arithmetic, in pure Python (no Keras, no TensorFlow).

Config validation needs the smallest input the network can be built for without building
it; caffenet.py takes its minimum from here, so the two cannot disagree.
"""

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# (name, kernel, stride, padding) of the layers that change the map size, in order.
# "valid" convolutions round down; "ceil" is Caffe's pooling, which rounds up.
SPATIAL_LAYERS = (
    ("conv1", 11, 4, "valid"),
    ("pool1", 3, 2, "ceil"),
    ("conv2", 5, 1, "same"),
    ("pool2", 3, 2, "ceil"),
    ("conv3", 3, 1, "same"),
    ("conv4", 3, 1, "same"),
    ("conv5", 3, 1, "same"),
    ("pool5", 3, 2, "ceil"),
)


def output_side(side, kernel, stride, padding):
    """One layer's output side. Caffe's pooling (unpadded, as in the paper's net) gives
    ceil((in - k) / s) + 1: its last window may hang over the edge, so an 87 px input
    keeps a 2x2 pool5 map where Keras' "valid" pooling leaves 1x1."""
    if side < kernel and padding != "same":
        return 0
    if padding == "same":
        return -(-side // stride)
    if padding == "ceil":
        return -(-(side - kernel) // stride) + 1
    return (side - kernel) // stride + 1


def map_sizes(input_size):
    """{layer: side of its output map} for a square input."""
    sizes, side = {}, input_size
    for name, kernel, stride, padding in SPATIAL_LAYERS:
        side = output_side(side, kernel, stride, padding)
        sizes[name] = side
    return sizes


def min_input_size():
    """The smallest input side that leaves pool5 a map of at least 1x1."""
    size = 11
    while min(map_sizes(size).values()) < 1:
        size += 1
    return size


# (name, kernel, groups, channels at width 1) of the weight layers; fc layers have kernel 0.
WEIGHT_LAYERS = (
    ("conv1", 11, 1, 96),
    ("conv2", 5, 2, 256),
    ("conv3", 3, 1, 384),
    ("conv4", 3, 2, 384),
    ("conv5", 3, 2, 256),
    ("fc6", 0, 1, 4096),
    ("fc7", 0, 1, 4096),
    ("fc8", 0, 1, None),
)


def channels(count, width):
    """A layer's channels at a width multiplier (even: grouped layers split them in 2)."""
    return max(2, int(round(count * width / 2)) * 2)


def forward_flops(input_size, width, num_classes):
    """{layer: multiply-adds x 2 per image} of the forward pass, from the layer shapes
    (weight layers only: pooling, LRN and ReLU are a rounding error)."""
    sides = map_sizes(input_size)
    out_side = {
        "conv1": sides["conv1"],
        "conv2": sides["conv2"],
        "conv3": sides["conv3"],
        "conv4": sides["conv4"],
        "conv5": sides["conv5"],
    }
    flops, in_channels = {}, 3
    for name, kernel, groups, count in WEIGHT_LAYERS:
        out = num_classes if count is None else channels(count, width)
        if kernel:
            flops[name] = 2 * out_side[name] ** 2 * out * kernel * kernel * in_channels // groups
        else:
            inputs = in_channels * (sides["pool5"] ** 2 if name == "fc6" else 1)
            flops[name] = 2 * inputs * out
        in_channels = out
    return flops


def training_flops(input_size, width, num_classes, frozen=0):
    """FLOPs per image of one training step: the forward pass, plus about twice the
    forward FLOPs of each trained layer for its backward pass (input and weight
    gradients). Layers 1..frozen are frozen: the backward pass stops above them."""
    flops = forward_flops(input_size, width, num_classes)
    trained = [name for name, *_ in WEIGHT_LAYERS][frozen:]
    return sum(flops.values()) + 2 * sum(flops[name] for name in trained)
