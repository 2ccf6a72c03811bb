"""kt_transfer: how transferable are the features of a network, layer by layer.

Reproduces Yosinski, Clune, Bengio, Lipson, "How transferable are features in deep
neural networks?" (NIPS 2014) with Keras 3 on TensorFlow.
"""

__version__ = "0.1.0"
