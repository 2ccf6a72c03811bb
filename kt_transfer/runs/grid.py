"""The whole experiment, replicated: for every split of `grid.splits` both bases, then
for every n, split and direction of `grid.directions` every treatment.

    python -m kt_transfer.main --mode=grid

The random splits and the two directions are the paper's replicates: its Figure 2 pools
AnB with BnA and BnB with AnA over its four random splits. Each split's runs live in its
own experiment directory; the pooled table, figure and findings.md are written to
<workdir>/<dataset>/grid-<experiment id>/ (replicates.py, figures.py, findings.py).

This module is the grid's one scheduler. It runs in one process, which holds the
workdir's grid lock (a second grid on the same workdir is refused), decides which cells
are ready (a transfer cell waits for its base), groups the ready cells of a split and
target half, bases included, into packs of up to `grid.pack_size` (training/packing.py:
one step, one input stream, each cell still its own run), and hands them to an executor
(executors.py): a pool of persistent local worker processes, or Ray tasks across
machines. Finished cells are never trained again, so running the command again after a
kill finishes the grid; a cell killed in training resumes from its last backup. A cell
whose base failed or could not run cannot run either. The grid ends with a summary of what
finished, what failed and why, writes the results table and the paper's figure beside the
runs, and raises (the CLI exits non-zero) unless every cell finished.
"""

import contextlib
import dataclasses
import fcntl
import os
import socket
import time

from kt_transfer import atomic
from kt_transfer.analysis import replicates, results
from kt_transfer.data import splits
from kt_transfer.networks import families, transfer
from kt_transfer.runs import executors, experiment, records

LOCK_FILE = ".grid.lock"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One network of the grid: a treatment on a split."""

    split: str
    treatment: transfer.Treatment

    @property
    def name(self):
        return f"{self.split}/{self.treatment.run_name}"

    @property
    def base_name(self):
        return f"{self.split}/{self.treatment.base_mode}" if self.treatment.base_mode else None


def target_size_configs(config):
    """The grid's configs, one per target size of `grid.target_images_per_class` (each
    with train.target_images_per_class set; 0, the full half, first, so the reduced
    grids find the source bases trained), or the config alone when that is empty."""
    sizes = tuple(config.grid.get("target_images_per_class", ()))
    if not sizes:
        return [config]
    configs = []
    for size in sorted(set(sizes)):
        sized = config.copy_and_resolve_references()
        sized.train.target_images_per_class = size
        configs.append(sized)
    return configs


def grid_splits(config):
    """The grid's splits: `grid.splits`, or the config's one split when that is empty."""
    return tuple(config.grid.splits) or (config.split,)


def cells(grid_config, split_names=("random0",), blocks=None):
    """The grid's cells in the order they are worked: every base first, then by n.

    `grid.treatments` are written for the A -> B direction (BnB, AnB+, RnB, ...); the
    direction "BtoA" of `grid.directions` trains their mirror images (AnA, BnA+, RnA, ...).
    `grid.restart_control` adds B8B+ (A8A+) to every replicate, last.
    """
    for direction in grid_config.directions:
        if direction not in splits.DIRECTIONS:
            raise ValueError(f"--config.grid.directions has {direction!r}; use AtoB and/or BtoA")
    if not grid_config.ns:
        raise ValueError("--config.grid.ns is empty; give the n values, e.g. '(1, 2, 3)'")
    grid_cells = [
        Cell(split, transfer.parse_treatment(base))
        for split in split_names
        for base in _bases(split)
    ]
    for n in grid_config.ns:
        for split in split_names:
            for direction, mode in _treatments(grid_config, split):
                flip = splits.swap_halves if direction == "BtoA" else (lambda mode: mode)
                cell = Cell(split, transfer.parse_treatment(flip(mode), n, blocks))
                if cell not in grid_cells:
                    grid_cells.append(cell)
    if grid_config.get("restart_control", False):
        for split in split_names:
            if splits.base_name(split) == splits.WHOLE:
                continue  # no transfer on "all", so nothing to separate
            for direction in grid_config.directions:
                mode = "AnA+" if direction == "BtoA" else "BnB+"
                restart_n = len(blocks) if blocks else transfer.RESTART_N
                grid_cells.append(Cell(split, transfer.parse_treatment(mode, restart_n, blocks)))
    return grid_cells


def _bases(split):
    """Split "all" has one base, the whole-dataset network (baseB; A is the same)."""
    return ("baseB",) if splits.base_name(split) == splits.WHOLE else ("baseA", "baseB")


def _treatments(grid_config, split):
    """(direction, treatment) pairs of a split: on "all", only the random-weights
    control (the paper's nolearn), once; nothing can transfer between equal halves."""
    if splits.base_name(split) == splits.WHOLE:
        return [("AtoB", mode) for mode in grid_config.treatments if mode.startswith("R")]
    return [(d, mode) for d in grid_config.directions for mode in grid_config.treatments]


class Progress:
    """The grid's progress bar: done / running / failed / left, and the time to go from
    measured cell times (a resumed grid starts from its finished cells' stored times).

    On a terminal the bar is redrawn in place; in a log (a batch job's output) it is a
    line whenever the counts change."""

    WIDTH = 24

    def __init__(self, total, slots, durations=()):
        self.total, self.slots = total, max(slots, 1)
        self.durations = list(durations)  # seconds per cell
        self._last = None

    def line(self, done, running, failed):
        left = self.total - done - running - failed
        filled = round(self.WIDTH * (done + failed) / max(self.total, 1))
        text = (
            f"grid [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{self.total} done, "
            f"{running} running, {failed} failed, {left} left"
        )
        if self.durations and (left or running):
            mean = sum(self.durations) / len(self.durations)
            to_go = mean * (left + running / 2) / self.slots
            text += f"; about {_format_duration(to_go)} to go"
        return text

    def show(self, done, running, failed, log):
        text = self.line(done, running, failed)
        if text != self._last:  # with the clock time: a resumed grid's log gives its total
            log(f"{text} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
            self._last = text


def _format_duration(seconds):
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class GridBusyError(RuntimeError):
    """Another grid process holds the workdir's lock."""


@contextlib.contextmanager
def grid_lock(workdir):
    """The workdir's grid lock, held while a grid runs: a second grid process on the same
    workdir is refused at once rather than left to race the first. The OS releases it when
    the process ends, however it ends, so a killed grid leaves no stale lock."""
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise GridBusyError(
            f"another --mode=grid is running on --workdir={workdir} ({holder}); wait for it "
            "to end, or stop it and run this command again (it resumes), or give another "
            "--workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M')}"
    )
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def run_grid(config, dataset, log=print, executor=None, poll_s=5.0):
    """Trains every cell of the grid that is not finished, then reports.

    Args:
      executor: where the units run (executors.py); default: `grid.executor`'s, closed at
        the end.
      poll_s: how often a cell another process holds is looked at again.

    Returns:
      The paths of the report's files (results.write_report).
    Raises:
      GridIncompleteError: after the summary, tables, figure and findings, if a cell did
        not finish.
      atomic.DiskFullError: the disk is full (every other cell would fail the same way).
    """
    split_names = grid_splits(config)
    datasets = {name: dataset.with_split(name) for name in split_names}
    grid_cells = cells(config.grid, split_names, families.block_names(config.model))
    records_dir = config.grid.get("records_dir", "")
    if records_dir and os.path.isdir(records_dir):  # another session's finished cells
        restored, _ = records.copy_records(
            records_dir, config.workdir, overwrite=False, dataset=dataset.name
        )
        if restored:
            log(f"grid: restored {restored} record(s) of finished runs from {records_dir}")
    status = _status(config, datasets, grid_cells)
    stored = [m.get("seconds", 0.0) for m in status.values() if m is not None]
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(executors.make_executor(config, log))
        log(
            f"grid: {len(grid_cells)} cells, {len(stored)} finished earlier; on {executor.describe}"
        )
        progress = Progress(len(grid_cells), executor.capacity, stored)
        schedule = _Schedule(config, datasets, grid_cells, status, executor, progress, log)
        schedule.run(poll_s)
    log(
        f"grid: {schedule.trained} cell(s) trained in "
        f"{_format_duration(time.monotonic() - started)}; the grid's cells trained for "
        f"{_format_duration(_training_seconds(status))} in all"
    )
    summary, incomplete = _summary(grid_cells, status, schedule.errors)
    for summary_line in summary:
        log(summary_line)
    written = write_results(config, dataset, log)
    if incomplete:
        raise GridIncompleteError(
            f"{len(incomplete)} of {len(grid_cells)} grid cells did not finish: "
            + "; ".join(f"{name}: {reason}" for name, reason in incomplete.items())
        )
    return written


class GridIncompleteError(RuntimeError):
    """The grid ended with cells that failed or could not run."""


class _Schedule:
    """The grid's state while it runs: each cell waits, runs, is finished (its
    metrics.json) or could not run (`errors`); ready cells go to the executor in packs."""

    def __init__(self, config, datasets, grid_cells, status, executor, progress, log):
        self.config, self.datasets, self.cells = config, datasets, grid_cells
        self.status, self.executor, self.log = status, executor, log
        self.progress = progress
        self.worker_config = _worker_config(config, executor)
        self.errors = {}  # cell name -> why it could not run
        self.running = {}  # job -> (cells, start time)
        self.not_before = {}  # cell name -> when to try a cell another process holds
        self.trained = 0

    def waiting(self):
        in_flight = {c.name for unit, _ in self.running.values() for c in unit}
        return [
            c
            for c in self.cells
            if self.status[c.name] is None and c.name not in self.errors.keys() | in_flight
        ]

    def run(self, poll_s):
        while True:
            while self.executor.has_room():
                unit = self._next_unit()
                if not unit:
                    break
                job = self.executor.submit(
                    self.worker_config,
                    self.datasets[unit[0].split],
                    unit[0].split,
                    [c.treatment for c in unit],
                )
                self.running[job] = (unit, time.monotonic())
                self.log(f"grid: training {_unit_name(unit)}")
            self._show_progress()
            if not self.running:
                if not self.not_before:
                    return  # nothing runs and nothing is ready: every cell has ended
                time.sleep(poll_s)  # only cells that another process holds are left
                continue
            for job, result in self.executor.wait(timeout=poll_s):
                self._record(*self.running.pop(job), result, poll_s)

    def _show_progress(self):
        done = failed = 0
        for cell in self.cells:
            metrics = self.status[cell.name]
            if cell.name in self.errors or (metrics or {}).get("status", "finished") != "finished":
                failed += 1
            elif metrics is not None:
                done += 1
        running = sum(len(unit) for unit, _ in self.running.values())
        self.progress.show(done, running, failed, self.log)

    def _next_unit(self):
        """The first ready cell and up to `grid.pack_size` - 1 more of its split and
        target half: a pack. A base reads its half's stream like the transfers into that
        half, so it packs with them (baseB with the ready AnB and RnB cells once baseA is
        done) instead of taking a step of its own. A cell whose base failed or could not
        run is recorded as unable to run."""
        now, unit = time.monotonic(), []
        for cell in self.waiting():
            if self.not_before.get(cell.name, 0) > now or not self._ready(cell):
                continue
            if not unit or (
                cell.split == unit[0].split and cell.treatment.target == unit[0].treatment.target
            ):
                unit.append(cell)
            if len(unit) >= max(self.config.grid.pack_size, 1):
                break
        for cell in unit:
            self.not_before.pop(cell.name, None)
        return unit

    def _ready(self, cell):
        if not cell.treatment.base_mode:
            return True
        base = self.status.get(cell.base_name)
        reason = None
        if cell.base_name in self.errors:
            reason = (
                f"its base {cell.treatment.base_mode} could not run ({self.errors[cell.base_name]})"
            )
        elif base is not None and base.get("status") != "finished":
            reason = f"its base {cell.treatment.base_mode} failed ({base.get('reason', '')})"
        if reason:
            self.errors[cell.name] = reason
            self.log(f"grid: {cell.name} could not run: {reason}")
        return base is not None and reason is None

    def _record(self, unit, started, result, poll_s):
        if isinstance(result, Exception):  # the worker died, retries used up
            result = {"error": str(result)}
        if "disk_full" in result:
            raise atomic.DiskFullError(result["disk_full"])
        if "busy" in result:  # another process trains one of them: look again later
            for cell in unit:
                self.not_before[cell.name] = time.monotonic() + poll_s
            self.log(f"grid: {_unit_name(unit)} is being trained by another process; waiting")
            return
        if "error" in result:
            for cell in unit:
                self.errors[cell.name] = result["error"]
                self.log(f"grid: {cell.name} could not run: {result['error']}")
            return
        seconds = (time.monotonic() - started) / len(unit)
        for cell, metrics in zip(unit, result["metrics"]):
            self.status[cell.name] = metrics
            self._keep_record(cell)
            self.trained += 1
            self.progress.durations.append(seconds)
            self.log(
                f"grid: {cell.name} {metrics['status']}"
                + (f", top-1 {metrics['top1']:.4f}" if metrics["status"] == "finished" else "")
            )

    def _keep_record(self, cell):
        """The cell's record copied to grid.records_dir as soon as it has one, so a lost
        machine loses no finished cell (runs/records.py)."""
        records_dir = self.config.grid.get("records_dir", "")
        if not records_dir:
            return
        workdir = self.config.workdir
        run = experiment.run_dir(self.config, self.datasets[cell.split], cell.treatment)
        records.copy_run(workdir, records_dir, os.path.relpath(run, workdir))


def _unit_name(unit):
    return f"{unit[0].split}/{'+'.join(c.treatment.run_name for c in unit)}"


def _worker_config(config, executor):
    """The config the workers get: absolute paths (a Ray worker's directory is not this
    one's), and one line per epoch where several workers share the output."""
    worker_config = config.copy_and_resolve_references()
    with worker_config.unlocked():
        worker_config.workdir = os.path.abspath(config.workdir)
        for dataset_config in (worker_config.dataset, worker_config.get("source_dataset")):
            if dataset_config is not None and dataset_config.data_dir:
                dataset_config.data_dir = os.path.abspath(dataset_config.data_dir)
        if executor.capacity > 1 or isinstance(executor, executors.RayExecutor):
            worker_config.verbose = 2 if config.verbose else 0
    return worker_config


def _status(config, datasets, grid_cells):
    return {
        c.name: experiment.read_metrics(experiment.run_dir(config, datasets[c.split], c.treatment))
        for c in grid_cells
    }


def _summary(grid_cells, status, errors):
    """Lines saying what finished and what did not (and why), and {cell: reason} of the
    cells that did not finish."""
    incomplete = {}
    for cell in grid_cells:
        metrics = status[cell.name]
        if metrics is None:
            incomplete[cell.name] = "could not run: " + errors.get(cell.name, "not trained")
        elif metrics.get("status", "finished") != "finished":
            incomplete[cell.name] = f"failed: {metrics.get('reason', '')}"
    finished = len(grid_cells) - len(incomplete)
    lines = [
        f"grid: summary: {finished} of {len(grid_cells)} cells finished"
        + (f", {len(incomplete)} did not:" if incomplete else "")
    ]
    lines += [f"grid:   {name}: {reason}" for name, reason in incomplete.items()]
    return lines, incomplete


def _training_seconds(status):
    """Sum of the cells' recorded training wall times (all workers, all resumed parts)."""
    return sum(m.get("seconds", 0.0) for m in status.values() if m is not None)


def report_dir(config, dataset):
    """<workdir>/<dataset>/grid-<experiment id>[-<families>]: the pooled table, figure,
    findings. A grid of random splits only writes grid-<id>; one over other splits too
    (natman, all) gets their names, so it does not overwrite the random grid's report."""
    exp_id = os.path.basename(experiment.experiment_dir(config, dataset))
    families = sorted({results.split_family(s) for s in grid_splits(config)} - {"random"})
    return os.path.join(config.workdir, dataset.name, "-".join([f"grid-{exp_id}", *families]))


def write_results(config, dataset, log=print, only_if_written=False):
    """The grid's report (results.write_report in the grid's scope) in report_dir;
    with `only_if_written`, only where the grid wrote one before (--mode=similarity adds
    its rank correlations to findings.md).

    Returns:
      The paths written.
    """
    out = report_dir(config, dataset)
    if only_if_written and not os.path.isdir(out):
        return []
    scope = results.GridScope(
        dataset=dataset.name,
        experiment=os.path.basename(experiment.experiment_dir(config, dataset)),
        splits=tuple(grid_splits(config)),
        directions=tuple(config.grid.directions),
        treatments=tuple(_paper_names(config.grid.treatments))
        + (("restart",) if config.grid.get("restart_control", False) else ()),
        ns=tuple(config.grid.ns),
    )
    written = results.write_report(
        config.workdir, out, paper=config.grid.paper_overlay, grid=scope, log=log
    )
    for path in written:
        log(f"grid: wrote {path}")
    return written


def _paper_names(treatments):
    return [replicates.paper_name(mode)[0] for mode in treatments]
