"""Compile, fit and evaluate: the one training loop every treatment uses."""

import math
import os
import warnings

import keras

from kt_transfer import atomic
from kt_transfer.training import backups, keras_compat, timing
from kt_transfer.training import optimizer as optimizer_lib


def compile_model(model, train_config, plans):
    """Compiles with a fresh Caffe solver honouring each layer's plan.

    Must be called after `trainable` is set (Keras reads it at compile time).
    `train.jit_compile` compiles the step with XLA (worth it on GPUs, rarely on CPUs).
    """
    model.compile(
        jit_compile=train_config.get("jit_compile", False),
        optimizer=optimizer_lib.make_optimizer(
            train_config, {p.name: p.lr_mult for p in plans if p.trainable}
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
    )


def num_epochs(train_config):
    """Keras epochs = total_steps / steps_per_epoch (validation runs after each)."""
    if train_config.total_steps % train_config.steps_per_epoch:
        raise ValueError(
            f"train.total_steps={train_config.total_steps} is not a multiple of "
            f"train.steps_per_epoch={train_config.steps_per_epoch}; change either "
            "(--config.train.total_steps / --config.train.steps_per_epoch)"
        )
    epochs = train_config.total_steps // train_config.steps_per_epoch
    budget = train_config.get("budget_epochs", 0)
    return min(budget, epochs) if budget > 0 else epochs


class StepCounter(keras.callbacks.Callback):
    """The number of training steps done, resumed parts included: the one step count of
    a run (backups, resume, the failed step, metrics, per-layer logs).

    Not the optimizer's `iterations`: under mixed_float16, Keras' LossScaleOptimizer
    skips the update of a step whose gradients overflowed and does not count it, so
    `iterations` falls behind the steps actually trained.
    """

    def __init__(self, start=0):
        super().__init__()
        self.step = start

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers the step."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.failed_step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_step = self.counter.step
            self.model.stop_training = True


class ValidationHistory(keras.callbacks.Callback):
    """Every validation evaluation of the run, with its step: the training curve, and
    the paper's figure of merit (mean_highest). Saved with each backup, so a resumed run
    keeps the evaluations of the processes before it."""

    def __init__(self, counter, evaluations=()):
        super().__init__()
        self.counter = counter
        self.evaluations = list(evaluations)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_top1" in logs:
            self.evaluations.append(
                {
                    "step": self.counter.step,
                    **{
                        key: _finite_or_none(logs[f"val_{key}"]) for key in ("top1", "top5", "loss")
                    },
                }
            )


def _finite_or_none(value):
    """JSON has no NaN: a diverged evaluation's values are stored as null."""
    value = float(value)
    return value if math.isfinite(value) else None


HIGHEST = 10  # the paper's notebook averages each net's 10 highest validation evaluations


def mean_highest(evaluations, k=HIGHEST):
    """Mean of the k highest validation top-1 values (all of them if fewer): how the
    paper's plotting notebook (`mean_highest`) scores a network.

    What it measures depends on how many evaluations a run has. The paper evaluated every
    1,000 of 450,000 steps, so its 10 highest were the top ~2% of a curve, picked on the
    validation set (biased upward). With 10 or fewer evaluations (the CPU configs
    validate once per epoch, 10 times) it is the mean of the whole curve, early epochs
    included: a selection of nothing, below the final top-1 for a base. The figure and
    the findings use the final top-1."""
    best = sorted((e["top1"] for e in evaluations if e["top1"] is not None), reverse=True)[:k]
    return sum(best) / len(best) if best else None


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


class RunProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, numbering epochs out of the run's total: a resumed run fits
    its interrupted epoch alone first, which Keras would show as "Epoch 3/3" in a run of
    4 epochs."""

    def __init__(self, run_epochs):
        super().__init__()
        self.run_epochs = run_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.run_epochs


def fit_and_evaluate(
    model,
    train_data,
    val_ds,
    run_dir,
    train_config,
    verbose=1,
    log=print,
    extra_callbacks=(),
    restore_dir=None,
    counter=None,
    holdout_ds=None,
    stopwatch=timing.NO_STOPWATCH,
):
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
      counter: the run's StepCounter, when callbacks outside need the step (a fresh one
        otherwise); it is set to the resumed step here.
      holdout_ds: held-out training images to evaluate as well (a tuning trial's
        objective).
      stopwatch: a timing.Stopwatch that gets the phases "validation" and "backups"
        (the rest of the time in here is the training steps).

    Returns:
      {"status": "finished", "top1", "top5", "loss", "steps", "mean_highest_top1"}: final
      validation figures and the paper's mean of the 10 highest evaluations (and
      "holdout_top1", "holdout_top5" with a holdout_ds), or {"status": "failed",
      "reason", "steps"} if the loss stopped being finite; all with "evaluations" (every
      validation evaluation: step, top1, top5, loss), "seconds" (training wall time,
      summed over the processes that trained it) and "resumed_from_step" (0 for a run
      trained in one go).
    """
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    counter = counter or StepCounter()
    done, seconds_before, evaluations = backups.restore_backup(
        model,
        os.path.join(restore_dir or run_dir, "checkpoints"),
        log,
        set_aside_unreadable=restore_dir in (None, run_dir),  # only the owner renames
    )
    counter.step = done
    steps_per_epoch, epochs = train_config.steps_per_epoch, num_epochs(train_config)
    non_finite = StopOnNonFiniteLoss(counter)
    history = ValidationHistory(counter, evaluations)
    backup = backups.PeriodicBackup(
        checkpoints,
        train_config.backup_every_steps,
        counter,
        seconds_before=seconds_before,
        history=history,
        stopwatch=stopwatch,
        steps_per_epoch=train_config.steps_per_epoch,
    )
    callbacks = [
        counter,  # first: the others read the step it counts
        history,  # before the backup, which saves the evaluations
        backup,
        timing.ValidationTime(stopwatch),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")),
        RunProgress(epochs),
        non_finite,
        *extra_callbacks,
    ]
    if done:
        log(
            f"Resuming from the backup at step {done} of "
            f"{num_epochs(train_config) * steps_per_epoch}"
        )
    epoch, into_epoch = divmod(done, steps_per_epoch)

    def fit(first_step, **kwargs):  # each fit reads the stream from its own first step
        model.fit(
            train_data(first_step),
            validation_data=val_ds,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
            **kwargs,
        )  # tf.data shuffles

    # Validation is one pass of a dataset whose length tf.data cannot know in advance (bad
    # files are filtered out); Keras warns when such a pass ends. Training data repeats.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    with keras_compat.multi_worker_fit_context(model):
        if into_epoch:  # finish the interrupted epoch first, then whole epochs
            fit(
                done,
                initial_epoch=epoch,
                epochs=epoch + 1,
                steps_per_epoch=steps_per_epoch - into_epoch,
            )
            epoch += 1
        if epoch < epochs and non_finite.failed_step is None:
            fit(
                epoch * steps_per_epoch,
                initial_epoch=epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
            )
        steps = counter.step
        if non_finite.failed_step is not None:
            outcome = {
                "status": "failed",
                "steps": non_finite.failed_step,
                "reason": f"loss became NaN or infinite at step {non_finite.failed_step}",
            }
        else:
            last = history.evaluations[-1] if history.evaluations else None
            if last is None or last["step"] != steps:
                # The last epoch's validation is the final evaluation (same weights, same
                # images); evaluate only when it is missing.
                with stopwatch.phase("validation"):
                    last = {
                        k: float(v)
                        for k, v in model.evaluate(val_ds, return_dict=True, verbose=0).items()
                    }
            outcome = {
                "status": "finished",
                "top1": last["top1"],
                "top5": last["top5"],
                "loss": last["loss"],
                "steps": steps,
                "mean_highest_top1": mean_highest(history.evaluations or [last]),
            }
            if holdout_ds is not None:
                with stopwatch.phase("validation"):
                    held = model.evaluate(holdout_ds, return_dict=True, verbose=0)
                outcome.update(holdout_top1=float(held["top1"]), holdout_top5=float(held["top5"]))
    return {
        **outcome,
        "evaluations": history.evaluations,
        "seconds": round(backup.seconds(), 1),
        "resumed_from_step": done,
    }
