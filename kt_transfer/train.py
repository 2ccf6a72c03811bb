"""Compile, fit and evaluate: the one training loop every treatment uses."""

import math
import os

import keras

from kt_transfer import optimizer as optimizer_lib


def compile_model(model, train_config, plans):
    """Compiles with a fresh Caffe solver honouring each layer's plan.

    Must be called after `trainable` is set (Keras reads it at compile time).
    """
    model.compile(
        optimizer=optimizer_lib.make_optimizer(
            train_config, {p.name: p.lr_mult for p in plans if p.trainable}),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])


def num_epochs(train_config):
    """Keras epochs = total_steps / steps_per_epoch (validation runs after each)."""
    if train_config.total_steps % train_config.steps_per_epoch:
        raise ValueError(
            f"train.total_steps={train_config.total_steps} is not a multiple of "
            f"train.steps_per_epoch={train_config.steps_per_epoch}; change either "
            "(--config.train.total_steps / --config.train.steps_per_epoch)")
    return train_config.total_steps // train_config.steps_per_epoch


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers the step."""

    def __init__(self):
        super().__init__()
        self.failed_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True


def fit_and_evaluate(model, train_ds, val_ds, run_dir, train_config, verbose=1):
    """Trains `model` for train.total_steps, resuming from the run's backup if any.

    Args:
      model: compiled Keras model.
      train_ds: repeated training dataset.
      val_ds: one pass over the validation set.
      run_dir: where checkpoints/ and logs/ go.
      train_config: the `config.train` block.
      verbose: Keras verbosity (progress bars by default).

    Returns:
      {"status": "finished", "top1", "top5", "loss", "steps"}: final validation figures,
      or {"status": "failed", "reason", "steps"} if the loss stopped being finite.
    """
    non_finite = StopOnNonFiniteLoss()
    callbacks = [
        # Resume after a crash from the last finished epoch; kept after training as the
        # run's checkpoint.
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "checkpoints"),
                                         delete_checkpoint=False),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        non_finite,
    ]
    model.fit(train_ds, epochs=num_epochs(train_config),
              steps_per_epoch=train_config.steps_per_epoch, validation_data=val_ds,
              callbacks=callbacks, verbose=verbose, shuffle=False)  # tf.data shuffles
    steps = int(model.optimizer.iterations.numpy())
    if non_finite.failed_step is not None:
        return {"status": "failed", "steps": non_finite.failed_step,
                "reason": f"loss became NaN or infinite at step {non_finite.failed_step}"}
    result = model.evaluate(val_ds, return_dict=True, verbose=0)
    return {"status": "finished", "top1": float(result["top1"]),
            "top5": float(result["top5"]), "loss": float(result["loss"]), "steps": steps}
