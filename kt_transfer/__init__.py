"""kt_transfer: how transferable are the features of a network, layer by layer.

Reproduces Yosinski, Clune, Bengio, Lipson, "How transferable are features in deep
neural networks?" (NIPS 2014) with Keras 3.

`import kt_transfer` registers every custom Keras object of the package (the network's
layers, the Caffe solver and its schedule), so a saved `model.keras` loads with
`keras.saving.load_model(path, safe_mode=True)` after it and nothing else.
"""

import os

from kt_transfer.training import keras_compat

__version__ = "0.1.0"

# Worker processes that only draw images (data/embedded.py) set this: they need no Keras.
if not os.environ.get("_KT_TRANSFER_NO_KERAS"):
    with keras_compat.quiet_native_stderr():  # TensorFlow's start-up lines, if it loads
        # Registers the classes (layers, solver, schedule) with Keras.
        from kt_transfer.networks import caffenet  # noqa: F401
        from kt_transfer.training import optimizer  # noqa: F401
