"""The exported SavedModel serves the same probabilities as the Keras model."""

import os
import subprocess
import sys

import keras
import numpy as np

from kt_transfer import experiment, export, transfer

RELOAD = r"""
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], loaded.serve(tf.constant(x)).numpy())
"""


def test_saved_model_matches_keras_in_a_fresh_process(tiny_config, tmp_path):
    dataset = experiment.resolve_dataset(tiny_config, log=lambda *_: None)
    _, out = experiment.run_treatment(tiny_config, dataset, transfer.parse_treatment("baseA"),
                                      log=lambda *_: None)
    model = keras.saving.load_model(os.path.join(out, experiment.MODEL_FILE), safe_mode=True)
    x = np.random.default_rng(0).normal(size=(5, 67, 67, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", RELOAD, os.path.join(out, export.SAVED_MODEL_DIR),
                    str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    served = np.load(tmp_path / "y.npy")
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(x, training=False)))
    assert served.shape == (5, 6)  # the 6 classes of tiny half A
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]  # no leftovers
