"""SavedModel export of a trained network, for reuse outside Keras.

The serving signature takes a batch of images, float32 [batch, input_size, input_size, 3]
holding RGB pixels in 0..255, resized to `dataset.resize_size` and centre-cropped, exactly
as the validation pipeline feeds the network (the network subtracts its own mean), and
returns class probabilities over the half's classes (label i = the half's i-th class in
the split's order; see tools/split_info.py).
"""

import os
import shutil
import tempfile

import keras

SAVED_MODEL_DIR = "saved_model"


def with_probabilities(model):
    """The network with a softmax on its logits: what the serving signature computes."""
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model.output)
    return keras.Model(model.input, probabilities, name=f"{model.name}_serving")


def export_saved_model(model, run_dir):
    """Writes <run_dir>/saved_model atomically (a complete export or none)."""
    target = os.path.join(run_dir, SAVED_MODEL_DIR)
    tmp = tempfile.mkdtemp(prefix=".tmp-saved_model-", dir=run_dir)
    try:
        with_probabilities(model).export(tmp, format="tf_saved_model", verbose=False)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
