"""The 8-layer network's shape arithmetic, in pure Python (no Keras, no TensorFlow).

Config validation needs the smallest input the network can be built for without building
it; model.py takes its minimum from here, so the two cannot disagree.
"""

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# (name, kernel, stride, padding) of the layers that change the map size, in order.
SPATIAL_LAYERS = (("conv1", 11, 4, "valid"), ("pool1", 3, 2, "valid"),
                  ("conv2", 5, 1, "same"), ("pool2", 3, 2, "valid"),
                  ("conv3", 3, 1, "same"), ("conv4", 3, 1, "same"),
                  ("conv5", 3, 1, "same"), ("pool5", 3, 2, "valid"))


def map_sizes(input_size):
    """{layer: side of its output map} for a square input (Keras' "valid" rounds down)."""
    sizes, side = {}, input_size
    for name, kernel, stride, padding in SPATIAL_LAYERS:
        side = -(-side // stride) if padding == "same" else (side - kernel) // stride + 1
        sizes[name] = side
    return sizes


def min_input_size():
    """The smallest input side that leaves pool5 a map of at least 1x1."""
    size = 11
    while min(map_sizes(size).values()) < 1:
        size += 1
    return size
