"""Exclusive claims on grid cells, shared through a directory (also across machines).

A cell's claims are numbered files `<cell>.claim.<generation>`; the highest generation is
the cell's current claim. A worker claims a free cell by creating the next generation
with O_CREAT | O_EXCL (atomic, also on NFS v3+), so of any number of workers racing for
the same generation exactly one succeeds, and taking over a stale claim is the same
operation: no check-then-rename window. A claim carries its owner's token; the owner's
heartbeat refreshes its own file and, finding a newer generation, marks the claim lost,
so the cell's training (which checks `lost` every step, see ClaimGuard) stops.

A claim is free when its owner released it, when it has not been refreshed for
`timeout_s` (its worker or machine is gone), or when it was left by a dead process of
this very machine. "This machine" is the host name *and* the kernel's boot id and PID
namespace, and a process is the same one only if its start time matches too: a host name
alone is shared by containers, and PIDs are reused.
"""

import json
import os
import re
import socket
import threading
import time
import uuid

import keras

from kt_transfer import atomic

CLAIM_PATTERN = re.compile(r"(?P<cell>.+)\.claim\.(?P<generation>\d+)$")


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _machine_id():
    """Host name, boot id and PID namespace: equal only for processes that can see each
    other's PIDs."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        return None  # no /proc: never judge a claim by its process, only by its age
    return ":".join(parts)


def _process_start(pid):
    """The process's start time (clock ticks since boot), or None if there is none."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def identity():
    """This process, as a claim records it."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "machine": _machine_id(),
        "pid": pid,
        "pid_start": _process_start(pid),
    }


def _holder_is_dead(holder):
    """True only when the holder provably ran on this machine and is gone."""
    machine = _machine_id()
    if machine is None or holder.get("machine") != machine:
        return False
    return _process_start(holder.get("pid", -1)) != holder.get("pid_start")


def _all_generations(claims_dir):
    """{cell: {generation: path}} of every claim file in the directory."""
    found = {}
    for name in os.listdir(claims_dir):
        match = CLAIM_PATTERN.match(name)
        if match:
            found.setdefault(match.group("cell"), {})[int(match.group("generation"))] = (
                os.path.join(claims_dir, name)
            )
    return found


def generations(claims_dir, cell):
    """{generation: path} of a cell's claim files."""
    return _all_generations(claims_dir).get(cell, {})


def is_free(path, timeout_s, now=None):
    """Whether the claim at `path` may be taken: released, stale, or of a dead process."""
    try:
        age = (now or time.time()) - os.stat(path).st_mtime
    except FileNotFoundError:
        return True
    if age > timeout_s:
        return True
    holder = _read(path)
    if holder is None:  # being written this instant by its creator
        return False
    return bool(holder.get("released")) or _holder_is_dead(holder)


def held_cells(claims_dir, timeout_s):
    """Names of the cells whose current claim is held (not free)."""
    return {
        cell
        for cell, found in _all_generations(claims_dir).items()
        if not is_free(found[max(found)], timeout_s)
    }


def try_claim(claims_dir, cell, timeout_s, owner=None):
    """Claims `cell` if its current claim is free; returns a Claim, or None.

    Exactly one of any number of concurrent callers gets a given generation (O_EXCL).
    """
    existing = generations(claims_dir, cell)
    generation = 0
    if existing:
        top = max(existing)
        if not is_free(existing[top], timeout_s):
            return None
        generation = top + 1
    path = os.path.join(claims_dir, f"{cell}.claim.{generation}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None  # another worker took this generation first
    token = uuid.uuid4().hex
    record = {**(owner or identity()), "token": token, "since": time.time()}
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return Claim(claims_dir, cell, generation, record, interval_s=max(timeout_s / 4, 0.05))


class Claim:
    """One worker's hold on one cell, kept alive by a heartbeat thread."""

    def __init__(self, claims_dir, cell, generation, record, interval_s):
        self.claims_dir, self.cell, self.generation = claims_dir, cell, generation
        self.record, self.interval_s = record, interval_s
        self.path = os.path.join(claims_dir, f"{cell}.claim.{generation}")
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def superseded(self):
        """Whether another worker has taken the cell over (a newer generation exists)."""
        return os.path.exists(
            os.path.join(self.claims_dir, f"{self.cell}.claim.{self.generation + 1}")
        )

    def _beat(self):
        while not self._stop.wait(self.interval_s):
            if self.superseded():
                self.lost = True
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.lost = True
                return

    def release(self, finished=False):
        """Gives the cell up. A finished cell's claim files are removed (nobody needs them
        again: a finished run is never retrained); otherwise the claim is marked released,
        so the generation count keeps rising and no number is ever reused."""
        self._stop.set()
        self._thread.join()
        if self.superseded():
            return
        if finished:
            for generation, path in generations(self.claims_dir, self.cell).items():
                if generation <= self.generation:
                    try:
                        os.remove(path)
                    except FileNotFoundError:
                        pass
        else:
            atomic.write_json(self.path, {**self.record, "released": True})


class ClaimLostError(RuntimeError):
    """Another worker took over the cell this worker was training."""


class ClaimGuard(keras.callbacks.Callback):
    """Stops a cell's training at the first step after its claim was lost."""

    def __init__(self, claim):
        super().__init__()
        self.claim = claim

    def on_train_batch_end(self, batch, logs=None):
        if self.claim.lost:
            raise ClaimLostError(
                f"{self.claim.cell}: another worker took over this cell's "
                "claim (this worker was presumed dead); it continues the cell"
            )
