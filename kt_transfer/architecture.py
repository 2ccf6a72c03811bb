"""The 8-layer network's shape arithmetic, in pure Python (no Keras, no TensorFlow).

Config validation needs the smallest input the network can be built for without building
it; model.py takes its minimum from here, so the two cannot disagree.
"""

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# (name, kernel, stride, padding) of the layers that change the map size, in order.
# "valid" convolutions round down; "ceil" is Caffe's pooling, which rounds up.
SPATIAL_LAYERS = (("conv1", 11, 4, "valid"), ("pool1", 3, 2, "ceil"),
                  ("conv2", 5, 1, "same"), ("pool2", 3, 2, "ceil"),
                  ("conv3", 3, 1, "same"), ("conv4", 3, 1, "same"),
                  ("conv5", 3, 1, "same"), ("pool5", 3, 2, "ceil"))


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
