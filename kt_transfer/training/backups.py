"""Backups of a run in training: complete or absent, verified, and resumed from.

A backup is a directory `checkpoints/backup-<step>/` holding the weights with the
solver's state and `state.json` (step, training seconds so far, every evaluation up to
the step). The newest verified backup and the one before it are kept; one that cannot be
read is reported, set aside and the run falls back to the previous one.
"""

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from kt_transfer import atomic
from kt_transfer.training import keras_compat, timing

BACKUP_PREFIX, WEIGHTS_FILE, STATE_FILE = "backup-", "backup.weights.h5", "state.json"
UNREADABLE_PREFIX = "unreadable-"  # a backup set aside because it could not be read
KEEP_BACKUPS = 2  # the newest verified backup and the one before it


class UnreadableBackupError(RuntimeError):
    """A backup directory whose state or weights cannot be read (a garbled state.json,
    a truncated weights file)."""


class PeriodicBackup(keras.callbacks.Callback):
    """Saves weights, optimizer state, the step and the evaluations so far, every N steps
    and after each epoch's validation.

    Unlike keras.callbacks.BackupAndRestore, which resumes at the start of the interrupted
    epoch, a backup records its step, so a resumed run ends with exactly the planned
    number of steps. A backup is a directory `checkpoints/backup-<step>/` holding the
    weights and `state.json` (step, training seconds so far, every evaluation up to the
    step), written under a temporary name, read back, then renamed into place: a backup
    is complete or absent. The step that ends an epoch is saved once, after that epoch's
    validation, so its evaluation is in it. Only once a new backup is verified are older
    ones removed, and the one before it is kept too, so a backup damaged later (a
    truncated file) still leaves one to fall back to.
    """

    def __init__(
        self,
        checkpoints_dir,
        every_steps,
        counter,
        seconds_before=0.0,
        history=None,
        stopwatch=timing.NO_STOPWATCH,
        steps_per_epoch=None,
        share=1.0,
    ):
        super().__init__()
        self.checkpoints_dir, self.every_steps = checkpoints_dir, every_steps
        self.share = share  # of the wall time: 1/k for a member of a pack of k
        self.counter, self.history, self.stopwatch = counter, history, stopwatch
        self.steps_per_epoch = steps_per_epoch
        self.seconds_before, self.started = seconds_before, time.monotonic()

    def seconds(self):
        """Training wall time of this run: earlier processes' part and this one's."""
        return self.seconds_before + self.share * (time.monotonic() - self.started)

    def on_train_batch_end(self, batch, logs=None):
        # The StepCounter has already counted this step (it is first among the callbacks).
        step = self.counter.step
        ends_epoch = self.steps_per_epoch and step % self.steps_per_epoch == 0
        if step % self.every_steps == 0 and not ends_epoch:  # that one: after validation
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def save(self):
        with self.stopwatch.phase("backups"):
            self._save()

    def _save(self):
        step = self.counter.step
        final = os.path.join(self.checkpoints_dir, f"{BACKUP_PREFIX}{step:09d}")
        if (
            os.path.exists(final)
            and _readable_state(final).get("evaluations") == self._evaluations()
        ):
            return  # the same step saved already, with the same evaluations
        needed = _backup_size_estimate(self.model, self.checkpoints_dir)
        atomic.check_space(self.checkpoints_dir, needed)
        tmp = tempfile.mkdtemp(prefix=".tmp-backup-", dir=self.checkpoints_dir)
        try:
            with atomic.reporting_full_disk(self.checkpoints_dir, needed):
                _save_weights(self.model, os.path.join(tmp, WEIGHTS_FILE))
                atomic.write_json(
                    os.path.join(tmp, STATE_FILE),
                    {
                        "step": step,
                        "seconds": round(self.seconds(), 1),
                        "evaluations": self._evaluations(),
                    },
                )
                read_backup(tmp)  # complete and readable, or nothing replaces the last
                atomic.plain_dir_mode(tmp)
                if os.path.exists(final):  # replaced by the same step with its evaluation
                    shutil.rmtree(final)
                os.rename(tmp, final)
        except BaseException:
            gc.collect()  # close h5py's handle of the failed file now, not at exit
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._remove_older_than(final)

    def _evaluations(self):
        return list(self.history.evaluations) if self.history else []

    def _remove_older_than(self, newest):
        """Keeps `newest` (verified) and the newest readable backup before it; removes
        every other backup, also one of a later step (left by a process whose steps this
        run does not continue)."""
        kept = 1
        for path in reversed(list_backups(self.checkpoints_dir)):
            if path == newest:
                continue
            if kept < KEEP_BACKUPS and path < newest and _readable_state(path):
                kept += 1
                continue
            shutil.rmtree(path, ignore_errors=True)


def _save_weights(model, path):
    """model.save_weights(path), through memory where Keras allows (keras_compat): a disk
    that fills up half-way is then an OSError, not h5py's crash."""
    content = keras_compat.weights_file_bytes(model)
    if content is None:
        model.save_weights(path)
        return
    with open(path, "wb") as f:
        f.write(content)


def _backup_size_estimate(model, checkpoints_dir):
    """Bytes a backup takes: the last backup's size, else the weights and the solver's
    variables, with room for the file format."""
    existing = list_backups(checkpoints_dir)
    if existing:
        last = existing[-1]
        return int(1.1 * sum(os.path.getsize(os.path.join(last, n)) for n in os.listdir(last)))
    variables = list(model.weights) + list(getattr(model.optimizer, "variables", []))
    return (
        int(1.2 * sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables))
        + 65536
    )


def list_backups(checkpoints_dir):
    """Backup directories (renamed into place: complete when written), oldest first."""
    if not os.path.isdir(checkpoints_dir):
        return []
    names = sorted(n for n in os.listdir(checkpoints_dir) if n.startswith(BACKUP_PREFIX))
    return [os.path.join(checkpoints_dir, n) for n in names]


def _readable_state(path):
    """The backup's state.json, or {} if it cannot be read."""
    try:
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def read_backup(path):
    """The state of the backup at `path` ({"step", "seconds", "evaluations"}), after
    checking that its weights file can be opened and read through.

    Raises:
      UnreadableBackupError: saying what is wrong with it.
    """
    try:
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        int(state["step"])
    except FileNotFoundError:
        raise UnreadableBackupError(f"{STATE_FILE} is missing") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UnreadableBackupError(f"{STATE_FILE} does not parse ({e})") from None
    weights = os.path.join(path, WEIGHTS_FILE)
    try:
        import h5py  # Keras' own weights format

        with h5py.File(weights, "r") as f:

            def read_through(name, item):  # returns None: visititems stops at a value
                if isinstance(item, h5py.Dataset):
                    item[()]

            f.visititems(read_through)
    except FileNotFoundError:
        raise UnreadableBackupError(f"{WEIGHTS_FILE} is missing") from None
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError on damage
        raise UnreadableBackupError(
            f"{WEIGHTS_FILE} cannot be read (truncated or corrupt: {str(e).splitlines()[0][:120]})"
        ) from None
    return state


def set_aside(path, reason, log=print):
    """Reports an unreadable backup and renames it out of the way (kept for inspection,
    never again taken for the newest backup, never blocking the clean-up)."""
    aside = os.path.join(os.path.dirname(path), UNREADABLE_PREFIX + os.path.basename(path))
    log(
        f"warning: backup {path} cannot be used: {reason}; it is moved to {aside} and "
        "the run falls back to the previous backup"
    )
    shutil.rmtree(aside, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, aside)


def latest_backup(checkpoints_dir, log=print, set_aside_unreadable=True, skip=()):
    """(path, {"step", "seconds", "evaluations"}) of the newest readable backup not in
    `skip`, or (None, None). Unreadable ones are reported (and set aside)."""
    for path in reversed(list_backups(checkpoints_dir)):
        if path in skip:
            continue
        try:
            return path, read_backup(path)
        except UnreadableBackupError as e:
            if os.path.isdir(path):  # else removed meanwhile by its writer's clean-up
                _report_unreadable(path, e, log, set_aside_unreadable)
    return None, None


def _report_unreadable(path, reason, log, set_aside_unreadable):
    if set_aside_unreadable:
        set_aside(path, reason, log)
    else:
        log(f"warning: backup {path} cannot be used: {reason}; falling back to the previous one")


def restore_backup(model, checkpoints_dir, log=print, set_aside_unreadable=True):
    """Loads the newest readable backup into a compiled model, falling back to older
    ones (each unreadable one reported and, with `set_aside_unreadable`, set aside).

    Args:
      set_aside_unreadable: False for a process that reads another's backups (a
        non-chief worker reads the chief's): it skips an unreadable one, and only the
        owner renames it.
    Returns:
      (steps already done, training seconds already spent, the validation evaluations
      up to that step); (0, 0.0, []) if no backup.
    """
    skipped, initial = set(), None
    while True:
        path, state = latest_backup(checkpoints_dir, log, set_aside_unreadable, skipped)
        if path is None:
            if initial is not None:  # a failed load left part of a backup: undo it
                for variable, value in zip(initial[0], initial[1]):
                    variable.assign(value)
            return 0, 0.0, []
        model.optimizer.build(model.trainable_variables)  # its state is in the backup
        variables = list(model.weights) + list(model.optimizer.variables)
        if initial is None:
            initial = (variables, [keras.ops.convert_to_numpy(v) for v in variables])
        try:
            model.load_weights(os.path.join(path, WEIGHTS_FILE))
        except Exception as e:  # readable, but not this network's (or damaged since)
            # Keras loads what it can before it raises; an older backup, or the initial
            # weights, replace all of it.
            reason = f"its weights do not load into this network ({str(e).splitlines()[0][:160]})"
            _report_unreadable(path, reason, log, set_aside_unreadable)
            skipped.add(path)
            continue
        step = int(state["step"])
        evaluations = [e for e in state.get("evaluations", []) if e["step"] <= step]
        return step, float(state.get("seconds", 0.0)), evaluations
