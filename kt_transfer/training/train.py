"""Compile, fit and evaluate: the one training loop every treatment uses."""

import dataclasses
import math
import os
import warnings

import keras

from kt_transfer import atomic
from kt_transfer.training import backups, keras_compat, packing, timing
from kt_transfer.training import optimizer as optimizer_lib


def compile_model(model, train_config, plans):
    """Compiles with a fresh Caffe solver honouring each layer's plan.

    Must be called after `trainable` is set (Keras reads it at compile time).
    `train.jit_compile` compiles the step with XLA (worth it on GPUs, rarely on CPUs).
    """
    model.compile(
        jit_compile=train_config.get("jit_compile", False),
        optimizer=optimizer_lib.make_optimizer(
            train_config, {p.name: p.lr_mult for p in plans if p.trainable}, model
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


# The paper's notebook averages each network's 10 highest validation evaluations, of the
# 450 its solver made (every 1,000 of 450,000 steps): the top 10/450 = 2.2% of a curve.
PAPER_HIGHEST, PAPER_EVALUATIONS = 10, 450


def highest_count(evaluations):
    """How many of a run's evaluations the paper's figure of merit averages: the paper's
    top fraction (10 of 450), at least one."""
    return max(1, round(evaluations * PAPER_HIGHEST / PAPER_EVALUATIONS))


def mean_highest(evaluations, k=None):
    """Mean of the k highest validation top-1 values, k = highest_count (the paper's top
    2.2% of a run's evaluations): how the paper's plotting notebook scores a network.

    It is a selection on the validation set itself, so biased upward against the final
    top-1, by more the noisier the evaluations: with 2,000 validation images one
    evaluation's binomial standard error is about 1.1 points, and the highest of 20
    noisy evaluations of a flat curve sits about 1.9 standard errors above it. With the
    default config (20 evaluations, train.steps_per_epoch 100) k is 1: the best
    evaluation, the top 5% of the curve (the paper's: the top 2.2%). The figure and the
    findings use the final top-1, which is unbiased."""
    values = [e["top1"] for e in evaluations if e["top1"] is not None]
    best = sorted(values, reverse=True)[: k or highest_count(len(values))]
    return sum(best) / len(best) if best else None


class BadFileReport(keras.callbacks.Callback):
    """Names the files the input pipeline skipped, at the end of the epoch they turned up
    in, and keeps the full list in <run>/bad_files.tsv (training goes on regardless)."""

    FILE = "bad_files.tsv"

    def __init__(self, bad_files, run_dir, log=print):
        super().__init__()
        self.bad_files, self.run_dir, self.log = bad_files, run_dir, log
        self._reported = set()  # the networks of a pack share one BadFiles

    def on_epoch_end(self, epoch, logs=None):
        self._report(f"epoch {epoch + 1}")

    def on_train_end(self, logs=None):
        self._report("end of training")

    def _report(self, when):
        seen = self.bad_files.all()
        new = {name: reason for name, reason in seen.items() if name not in self._reported}
        if not new:
            return
        self._reported.update(new)
        self.log(f"Skipped {len(new)} unreadable file(s) ({when}); training continues:")
        for name, reason in new.items():
            self.log(f"  {name}: {reason}")
        rows = "".join(f"{n}\t{r}\n" for n, r in sorted(seen.items()))
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


@dataclasses.dataclass
class Member:
    """One network of a pack (packing.py) and where its run lives.

    run_dir: where its checkpoints/ and logs/ go.
    extra_callbacks: more Keras callbacks of this network (e.g. its per-layer logger).
    restore_dir: the run directory whose backup to resume from (default run_dir); a
      non-chief worker writes to a scratch run_dir but resumes from the chief's backup.
    counter: the run's StepCounter, when callbacks outside need the step (a fresh one
      otherwise); it is set to the resumed step here.
    """

    model: keras.Model
    run_dir: str
    extra_callbacks: tuple = ()
    restore_dir: str = None
    counter: StepCounter = None


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
    """Trains one network: `fit_pack` with one member (see there and Member)."""
    member = Member(model, run_dir, tuple(extra_callbacks), restore_dir, counter)
    return fit_pack(
        [member], train_data, val_ds, train_config, verbose, log, holdout_ds, stopwatch
    )[0]


def fit_pack(
    members,
    train_data,
    val_ds,
    train_config,
    verbose=1,
    log=print,
    holdout_ds=None,
    stopwatch=timing.NO_STOPWATCH,
):
    """Trains compiled networks for train.total_steps on one input stream, each resuming
    from its run's backup if any; one network is trained by its own `fit`, several as a
    pack (packing.py) in one step.

    Args:
      members: Members, each a compiled model with its run.
      train_data: function of the steps already done giving the repeated training
        dataset from that point (a resumed run continues the data stream).
      val_ds: one pass over the validation set.
      train_config: the `config.train` block.
      verbose: Keras verbosity (progress bars by default).
      log: where the resume message goes.
      holdout_ds: held-out training images to evaluate as well (a tuning trial's
        objective; one member only).
      stopwatch: a timing.Stopwatch that gets the phases "validation" and "backups"
        (the rest of the time in here is the training steps), for the whole pack.

    Returns:
      For each member, in order: {"status": "finished", "top1", "top5", "loss", "steps",
      "mean_highest_top1"}: final validation figures and the paper's mean of the 10
      highest evaluations (and "holdout_top1", "holdout_top5" with a holdout_ds), or
      {"status": "failed", "reason", "steps"} if the loss stopped being finite; all with
      "evaluations" (every validation evaluation: step, top1, top5, loss), "seconds"
      (training wall time, summed over the processes that trained it; a member of a pack
      of k counts 1/k of the pack's) and "resumed_from_step" (0 for a run trained in one
      go).
    """
    if holdout_ds is not None and len(members) > 1:
        raise ValueError("a holdout evaluation is for one network, not a pack")
    restored = []
    for member in members:
        checkpoints = os.path.join(member.run_dir, "checkpoints")
        os.makedirs(checkpoints, exist_ok=True)
        restored.append(
            backups.restore_backup(
                member.model,
                os.path.join(member.restore_dir or member.run_dir, "checkpoints"),
                log,
                # only the owner renames
                set_aside_unreadable=member.restore_dir in (None, member.run_dir),
            )
        )
    steps_done = sorted({done for done, _, _ in restored})
    if len(steps_done) > 1:
        # Killed between two members' backups: each group of members at the same step
        # trains on as a pack of its own (their streams continue from their own steps).
        log(f"The pack's backups are at steps {steps_done}: training each group in turn")
        outcomes = {}
        for done in steps_done:
            group = [i for i, r in enumerate(restored) if r[0] == done]
            results = fit_pack(
                [members[i] for i in group],
                train_data,
                val_ds,
                train_config,
                verbose,
                log,
                holdout_ds,
                stopwatch,
            )
            outcomes.update(zip(group, results))
        return [outcomes[i] for i in range(len(members))]
    done = steps_done[0]
    steps_per_epoch, epochs = train_config.steps_per_epoch, num_epochs(train_config)
    runs = [
        _MemberRun(member, restored_state, train_config, stopwatch, 1 / len(members))
        for member, restored_state in zip(members, restored)
    ]
    pack_callbacks = [timing.ValidationTime(stopwatch), RunProgress(epochs)]
    if len(runs) == 1:
        model = members[0].model
        callbacks = runs[0].callbacks + pack_callbacks
    else:
        model = packing.PackedModel([m.model for m in members])
        model.compile(optimizer=None, jit_compile=train_config.get("jit_compile", False))
        packing.build_members([m.model for m in members], val_ds.element_spec)
        adapters = [
            packing.MemberCallbacks(i, r.member.model, r.callbacks, r.failed)
            for i, r in enumerate(runs)
        ]
        for adapter in adapters:
            adapter.siblings = adapters
        callbacks = adapters + pack_callbacks
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
        if epoch < epochs and not all(r.failed() for r in runs):
            fit(
                epoch * steps_per_epoch,
                initial_epoch=epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
            )
        missing = [r for r in runs if not r.failed() and not r.evaluated()]
        final = {}
        if missing:
            # The last epoch's validation is the final evaluation (same weights, same
            # images); evaluate only when it is missing.
            with stopwatch.phase("validation"):
                logs = model.evaluate(val_ds, return_dict=True, verbose=0)
            for i, r in enumerate(runs):
                own = logs if len(runs) == 1 else packing.member_logs(logs, i)
                final[i] = {k: float(v) for k, v in own.items()}
        outcomes = [r.outcome(final.get(i)) for i, r in enumerate(runs)]
        if holdout_ds is not None and outcomes[0]["status"] == "finished":
            with stopwatch.phase("validation"):
                held = model.evaluate(holdout_ds, return_dict=True, verbose=0)
            outcomes[0].update(holdout_top1=float(held["top1"]), holdout_top5=float(held["top5"]))
    return [
        {
            **outcome,
            "evaluations": r.history.evaluations,
            "seconds": round(r.backup.seconds(), 1),
            "resumed_from_step": done,
        }
        for r, outcome in zip(runs, outcomes)
    ]


class _MemberRun:
    """One member's callbacks (step counter, evaluations, backups, TensorBoard, the
    non-finite stop, its extra ones) and its outcome."""

    def __init__(self, member, restored, train_config, stopwatch, share):
        done, seconds_before, evaluations = restored
        self.member = member
        self.counter = member.counter or StepCounter()
        self.counter.step = done
        self.non_finite = StopOnNonFiniteLoss(self.counter)
        self.history = ValidationHistory(self.counter, evaluations)
        self.backup = backups.PeriodicBackup(
            os.path.join(member.run_dir, "checkpoints"),
            train_config.backup_every_steps,
            self.counter,
            seconds_before=seconds_before,
            history=self.history,
            stopwatch=stopwatch,
            steps_per_epoch=train_config.steps_per_epoch,
            share=share,
        )
        self.callbacks = [
            self.counter,  # first: the others read the step it counts
            self.history,  # before the backup, which saves the evaluations
            self.backup,
            keras.callbacks.TensorBoard(os.path.join(member.run_dir, "logs")),
            self.non_finite,
            *member.extra_callbacks,
        ]

    def failed(self):
        return self.non_finite.failed_step is not None

    def evaluated(self):
        evaluations = self.history.evaluations
        return bool(evaluations) and evaluations[-1]["step"] == self.counter.step

    def outcome(self, final=None):
        if self.failed():
            step = self.non_finite.failed_step
            return {
                "status": "failed",
                "steps": step,
                "reason": f"loss became NaN or infinite at step {step}",
            }
        last = final or self.history.evaluations[-1]
        return {
            "status": "finished",
            "top1": last["top1"],
            "top5": last["top5"],
            "loss": last["loss"],
            "steps": self.counter.step,
            "mean_highest_top1": mean_highest(self.history.evaluations or [last]),
        }
