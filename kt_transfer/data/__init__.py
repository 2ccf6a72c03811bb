"""Images in: class splits, sources (folder, TFDS, the embedded dataset), decoding, the
tf.data pipeline, the mean, prepared copies."""
