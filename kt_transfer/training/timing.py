"""Where a run's wall time goes: named phases, summed, for metrics.json and the grid.

A cell of the grid is not only training steps: start-up, copying the base, validation,
per-layer logging, backups and export all take time, and they are what a faster grid
cuts first. Every run records its split of the time in metrics.json ("timings").
"""

import contextlib
import time

import keras


class Stopwatch:
    """Seconds per named phase. Nested phases are subtracted from their parent, so the
    phases add up to the wall time measured."""

    def __init__(self):
        self.seconds = {}
        self._stack = []

    @contextlib.contextmanager
    def phase(self, name):
        start = time.monotonic()
        self._stack.append(0.0)  # time spent in phases nested in this one
        try:
            yield
        finally:
            nested = self._stack.pop()
            spent = time.monotonic() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + spent - nested
            if self._stack:
                self._stack[-1] += spent

    def rounded(self):
        return {name: round(s, 2) for name, s in sorted(self.seconds.items())}


NO_STOPWATCH = Stopwatch()  # the default of code timed only when someone asks


class ValidationTime(keras.callbacks.Callback):
    """Times the validation passes inside model.fit as the phase "validation"."""

    def __init__(self, stopwatch):
        super().__init__()
        self.stopwatch, self._phase = stopwatch, None

    def on_test_begin(self, logs=None):
        self._phase = self.stopwatch.phase("validation")
        self._phase.__enter__()

    def on_test_end(self, logs=None):
        if self._phase is not None:
            self._phase.__exit__(None, None, None)
            self._phase = None
