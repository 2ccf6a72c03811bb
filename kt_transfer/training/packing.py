"""Several networks trained in one step on one input stream: a pack.

A CPU-scale network is too small to fill even two cores: its convolutions have 12-48
channels, and a step spends much of its time in per-op overhead. Networks of the grid that
read the same target half with the same seed (every treatment of a split and n, of
several n, and the base of that half) see the same images in the same order anyway;
trained as one pack, their ops run side by side in one graph, the images are decoded and
augmented once for all of them, and validation reads its images once. Measured on the
2-core machine: 4 full networks in one step took 21 ms a network against 42 ms alone
(docs/performance.md).

The paper's networks read their data in one fixed order too (Caffe's LevelDB), so a shared
stream is the same design; it pairs the treatments more tightly than separate streams do.

Each member stays a network of its own: its own Keras model, optimizer (its layers'
learning-rate multipliers), metrics, callbacks, backups, TensorBoard logs and metrics.json.
`PackedModel` is only the step: it calls every member's own `train_step` and `test_step`
and prefixes their logs; `MemberCallbacks` hands each member's callbacks its own model and
its own, unprefixed, logs. TensorFlow backend only (a member's `train_step` there is a
plain function of the data), under its default strategy (experiment.can_pack): elsewhere
a pack has one member.
"""

import keras

from kt_transfer.training import keras_compat


def _prefix(index):
    return f"m{index}/"


class PackedModel(keras.Model):
    """The members' training and validation steps as one step.

    Each member must be compiled (its own optimizer and metrics) before the pack is
    built; `build_members` builds their variables.
    """

    def __init__(self, members, **kwargs):
        super().__init__(name="pack", **kwargs)
        self.members = list(members)
        self.built = True

    def call(self, inputs, training=False):
        return [member(inputs, training=training) for member in self.members]

    @property
    def metrics(self):  # reset by fit and evaluate at each epoch and pass
        return [metric for member in self.members for metric in member.metrics]

    def train_step(self, data):
        logs = {}
        for index, member in enumerate(self.members):
            for key, value in member.train_step(data).items():
                logs[_prefix(index) + key] = value
        return logs

    def test_step(self, data):
        logs = {}
        for index, member in enumerate(self.members):
            for key, value in member.test_step(data).items():
                logs[_prefix(index) + key] = value
        return logs


def build_members(members, batch):
    """Creates every member's metric, loss and optimizer variables (a model's own `fit`
    does this on its first batch; a member never runs `fit`)."""
    for member in members:
        keras_compat.build_for_training(member, batch)


def member_logs(logs, index):
    """One member's logs, as its own fit would have given them: `m<i>/top1` -> `top1`,
    `val_m<i>/top1` -> `val_top1`; the pack's other logs are dropped."""
    prefix, own = _prefix(index), {}
    for key, value in (logs or {}).items():
        if key.startswith(prefix):
            own[key[len(prefix) :]] = value
        elif key.startswith("val_" + prefix):
            own["val_" + key[len("val_" + prefix) :]] = value
    return own


class MemberCallbacks(keras.callbacks.Callback):
    """A member's callbacks inside the pack's fit: they see the member's model and logs.

    A member whose loss stopped being finite (its `StopOnNonFiniteLoss` asked its model to
    stop) stops getting callbacks, so its last backup stays the one before the failure,
    and the pack trains on with the others; when every member has stopped, so does the
    pack. Any other stop request (a callback's) stops the pack.
    """

    def __init__(self, index, member, callbacks, failed):
        super().__init__()
        self.index, self.member = index, member
        self.callbacks = keras.callbacks.CallbackList(list(callbacks), model=member)
        self.failed = failed  # () -> whether the member's loss stopped being finite
        self.active = True
        self.siblings = [self]  # every member's MemberCallbacks (set by the pack's fit)

    def set_model(self, model):  # the pack; the member's callbacks keep the member
        self._pack = model
        # Every fit, as a model's own fit does: Keras' TensorBoard callback opens new
        # writers here, and closes them at the end of each fit. A pack resumed in the
        # middle of an epoch fits twice (the rest of that epoch, then the others).
        self.callbacks.set_model(self.member)

    def set_params(self, params):
        self.callbacks.set_params(params)

    def _forward(self, method, *args, logs=None):
        if self.active:
            getattr(self.callbacks, method)(*args, member_logs(logs, self.index))

    def _after_step(self):
        if not self.active or not self.member.stop_training:
            return
        self.member.stop_training = False
        if self.failed():
            self.active = False
            self._pack.stop_training = not any(c.active for c in self.siblings)
        else:
            self._pack.stop_training = True

    def on_train_begin(self, logs=None):
        self._forward("on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        self._forward("on_train_end", logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward("on_epoch_begin", epoch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward("on_epoch_end", epoch, logs=logs)
        self._after_step()

    def on_train_batch_begin(self, batch, logs=None):
        self._forward("on_train_batch_begin", batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self._forward("on_train_batch_end", batch, logs=logs)
        self._after_step()

    def on_test_begin(self, logs=None):
        self._forward("on_test_begin", logs=logs)

    def on_test_end(self, logs=None):
        self._forward("on_test_end", logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._forward("on_test_batch_begin", batch, logs=logs)

    def on_test_batch_end(self, batch, logs=None):
        self._forward("on_test_batch_end", batch, logs=logs)
