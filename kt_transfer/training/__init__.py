"""One network trained: the solver, the one training loop (backups, resume), per-layer
logging, strategies, export, and the Keras/TensorFlow workarounds."""
