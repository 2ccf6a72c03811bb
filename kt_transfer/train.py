"""Compile, fit and evaluate: the one training loop every treatment uses."""

import contextlib
import json
import math
import os
import time
import warnings

import keras

from kt_transfer import atomic
from kt_transfer import optimizer as optimizer_lib


def compile_model(model, train_config, plans):
    """Compiles with a fresh Caffe solver honouring each layer's plan.

    Must be called after `trainable` is set (Keras reads it at compile time).
    `train.jit_compile` compiles the step with XLA (worth it on GPUs, rarely on CPUs).
    """
    model.compile(
        jit_compile=train_config.get("jit_compile", False),
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
    epochs = train_config.total_steps // train_config.steps_per_epoch
    budget = train_config.get("budget_epochs", 0)
    return min(budget, epochs) if budget > 0 else epochs


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


class PeriodicBackup(keras.callbacks.Callback):
    """Saves weights and optimizer state every N steps and at each epoch end, atomically.

    Unlike keras.callbacks.BackupAndRestore, which resumes at the start of the interrupted
    epoch, the optimizer's iteration count is the resume point, so a resumed run ends with
    exactly the planned number of steps. Beside the weights, a small JSON file keeps the
    training time spent so far, so that a resumed run still reports its whole wall time.
    """

    def __init__(self, path, every_steps, seconds_before=0.0):
        super().__init__()
        self.path, self.every_steps = path, every_steps
        self.seconds_before, self.started = seconds_before, time.monotonic()

    def seconds(self):
        """Training wall time of this run: earlier processes' part and this one's."""
        return self.seconds_before + time.monotonic() - self.started

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def save(self):
        tmp = self.path.replace(".weights.h5", ".tmp.weights.h5")
        self.model.save_weights(tmp)
        os.replace(tmp, self.path)  # a kill mid-save leaves the previous backup intact
        atomic.write_json(_backup_time_path(self.path),
                          {"step": int(self.model.optimizer.iterations.numpy()),
                           "seconds": round(self.seconds(), 1)})


def _backup_time_path(backup_path):
    return backup_path.replace(".weights.h5", ".time.json")


def backup_seconds(backup_path):
    """Training seconds recorded with a backup (0 if none, or from before this field)."""
    try:
        with open(_backup_time_path(backup_path)) as f:
            return float(json.load(f)["seconds"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0.0


class BadFileReport(keras.callbacks.Callback):
    """Names the files the input pipeline skipped, at the end of the epoch they turned up
    in, and keeps the full list in <run>/bad_files.tsv (training goes on regardless)."""

    FILE = "bad_files.tsv"

    def __init__(self, bad_files, run_dir, log=print):
        super().__init__()
        self.bad_files, self.run_dir, self.log = bad_files, run_dir, log

    def on_epoch_end(self, epoch, logs=None):
        self._report(f"epoch {epoch + 1}")

    def on_train_end(self, logs=None):
        self._report("end of training")

    def _report(self, when):
        new = self.bad_files.new_since_last_call()
        if not new:
            return
        self.log(f"Skipped {len(new)} unreadable file(s) ({when}); training continues:")
        for name, reason in new.items():
            self.log(f"  {name}: {reason}")
        rows = "".join(f"{n}\t{r}\n" for n, r in sorted(self.bad_files.all().items()))
        atomic.write_text(os.path.join(self.run_dir, self.FILE), "file\treason\n" + rows)


def restore_backup(model, path):
    """Loads a backup into a compiled model; returns the steps already done (0 if none)."""
    if not os.path.exists(path):
        return 0
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return int(model.optimizer.iterations.numpy())


def _distribution_context(model):
    """Where fit/evaluate run. Under MultiWorkerMirroredStrategy, Keras 3 builds the model
    from an eagerly all-reduced first batch, which fails across workers (keras-team/keras
    #20585); the model is already built, so Keras is told no strategy and instead runs
    inside the strategy's scope, where it finds the same strategy for its steps."""
    from kt_transfer import distribute
    strategy = model.distribute_strategy
    if not distribute.is_multi_worker(strategy):
        return contextlib.nullcontext()
    model._distribute_strategy = None
    return strategy.scope()


def fit_and_evaluate(model, train_data, val_ds, run_dir, train_config, verbose=1, log=print,
                     extra_callbacks=(), restore_dir=None):
    """Trains `model` for train.total_steps, resuming from the run's backup if any.

    Args:
      model: compiled Keras model.
      train_data: function of the steps already done giving the repeated training
        dataset from that point (a resumed run continues the data stream).
      val_ds: one pass over the validation set.
      run_dir: where checkpoints/ and logs/ go.
      train_config: the `config.train` block.
      verbose: Keras verbosity (progress bars by default).
      log: where the resume message goes.
      extra_callbacks: more Keras callbacks (e.g. the per-layer logger).
      restore_dir: the run directory whose backup to resume from (default run_dir); a
        non-chief worker writes to a scratch run_dir but resumes from the chief's backup.

    Returns:
      {"status": "finished", "top1", "top5", "loss", "steps"}: final validation figures,
      or {"status": "failed", "reason", "steps"} if the loss stopped being finite; both
      with "seconds" (training wall time, summed over the processes that trained it) and
      "resumed_from_step" (0 for a run trained in one go).
    """
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    backup_path = os.path.join(run_dir, "checkpoints", "backup.weights.h5")
    restore_path = os.path.join(restore_dir or run_dir, "checkpoints", "backup.weights.h5")
    non_finite = StopOnNonFiniteLoss()
    done = restore_backup(model, restore_path)
    backup = PeriodicBackup(backup_path, train_config.backup_every_steps,
                            seconds_before=backup_seconds(restore_path) if done else 0.0)
    callbacks = [
        backup,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        non_finite,
        *extra_callbacks,
    ]
    steps_per_epoch, epochs = train_config.steps_per_epoch, num_epochs(train_config)
    if done:
        log(f"Resuming from the backup at step {done} of "
            f"{num_epochs(train_config) * steps_per_epoch}")
    epoch, into_epoch = divmod(done, steps_per_epoch)
    def fit(first_step, **kwargs):  # each fit reads the stream from its own first step
        model.fit(train_data(first_step), validation_data=val_ds, callbacks=callbacks,
                  verbose=verbose, shuffle=False, **kwargs)  # tf.data shuffles

    # Validation is one pass of a dataset whose length tf.data cannot know in advance (bad
    # files are filtered out); Keras warns when such a pass ends. Training data repeats.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    with _distribution_context(model):
        if into_epoch:  # finish the interrupted epoch first, then whole epochs
            fit(done, initial_epoch=epoch, epochs=epoch + 1,
                steps_per_epoch=steps_per_epoch - into_epoch)
            epoch += 1
        if epoch < epochs and non_finite.failed_step is None:
            fit(epoch * steps_per_epoch, initial_epoch=epoch, epochs=epochs,
                steps_per_epoch=steps_per_epoch)
        steps = int(model.optimizer.iterations.numpy())
        if non_finite.failed_step is not None:
            outcome = {"status": "failed", "steps": non_finite.failed_step, "reason":
                       f"loss became NaN or infinite at step {non_finite.failed_step}"}
        else:
            result = model.evaluate(val_ds, return_dict=True, verbose=0)
            outcome = {"status": "finished", "top1": float(result["top1"]),
                       "top5": float(result["top5"]), "loss": float(result["loss"]),
                       "steps": steps}
    return {**outcome, "seconds": round(backup.seconds(), 1), "resumed_from_step": done}
