"""SavedModel export of a trained network, for reuse outside Keras.

The serving signature takes a batch of images, float32 [batch, input_size, input_size, 3]
holding RGB pixels in 0..255, resized to `dataset.resize_size` and centre-cropped, exactly
as the validation pipeline feeds the network (the network subtracts its own mean), and
returns class probabilities over the half's classes (label i = the half's i-th class in
the split's order; see tools/split_info.py). Beside it, `kt_transfer.json` records the
input normalization, so a transfer that copies from this SavedModel can check it.
"""

import os
import shutil
import tempfile

import keras

from kt_transfer import atomic
from kt_transfer.networks import caffenet
from kt_transfer.training import keras_compat

SAVED_MODEL_DIR = "saved_model"
METADATA_FILE = "kt_transfer.json"


def with_probabilities(model):
    """The network with a softmax on its logits: what the serving signature computes."""
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model.output)
    return keras.Model(model.input, probabilities, name=f"{model.name}_serving")


def export_saved_model(model, run_dir):
    """Writes <run_dir>/saved_model atomically (a complete export or none).

    Raises:
      atomic.DiskFullError: no room for it (and nothing of it is left behind).
    """
    target = os.path.join(run_dir, SAVED_MODEL_DIR)
    tmp = tempfile.mkdtemp(prefix=".tmp-saved_model-", dir=run_dir)
    try:
        with atomic.reporting_full_disk(target):
            with keras_compat.quiet_tensorflow_info():
                with_probabilities(model).export(tmp, format="tf_saved_model", verbose=False)
            norm = model.get_layer(caffenet.NORMALIZATION_LAYER)
            atomic.write_json(
                os.path.join(tmp, METADATA_FILE),
                {
                    "mean_rgb": norm.mean_rgb,
                    "scale": norm.scale,
                    "input_size": int(model.input_shape[1]),
                    "num_classes": int(model.output_shape[-1]),
                },
            )
            atomic.plain_dir_mode(tmp)  # readable by whoever serves it, as a plain write is
            if os.path.exists(target):
                shutil.rmtree(target)
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_metadata(saved_model_dir):
    """What export_saved_model recorded beside a SavedModel, or None if nothing."""
    return atomic.read_json(os.path.join(saved_model_dir, METADATA_FILE))
