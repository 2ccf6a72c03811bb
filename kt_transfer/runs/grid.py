"""The whole experiment, replicated: for every split of `grid.splits` both bases, then
for every n, split and direction of `grid.directions` every treatment.

    python -m kt_transfer.main --mode=grid            # start as many of these as you like

The random splits and the two directions are the paper's replicates: its Figure 2 pools
AnB with BnA and BnB with AnA over its four random splits. Each split's runs live in its
own experiment directory; the pooled table, figure and findings.md are written to
<workdir>/<dataset>/grid-<experiment id>/ (replicates.py, figures.py, findings.py).

Any number of worker processes, on one machine or on several sharing the workdir's
filesystem, work the same grid: each cell is claimed exclusively before it is trained
(claims.py), so no cell is trained by two workers. A claim is kept fresh by a heartbeat;
one not refreshed for `grid.claim_timeout_s` (its worker died, its machine was lost), or
left by a dead process on this same machine, is taken over, and the cell resumes from its
last backup; a worker whose claim was taken over stops that cell. Finished cells are
skipped, so running the command again after a kill finishes the grid.

A worker claims up to `grid.pack_size` transfer cells of one split and target half at once
and trains them as a pack (training/packing.py): one step, one input stream, each cell
still its own run.

A cell that cannot run (its base failed or could not run, an error before training) is
recorded in the claims directory, so every worker stops waiting for it and for the cells
that need it. A new grid process tries such cells again. The grid ends with a summary of
what finished, what failed and why, writes the results table and the paper's figure
beside the runs, and raises (the CLI exits non-zero) unless every cell finished.
"""

import dataclasses
import os
import time

from kt_transfer import atomic
from kt_transfer.analysis import replicates, results
from kt_transfer.data import splits
from kt_transfer.networks import transfer
from kt_transfer.runs import claims, experiment
from kt_transfer.training import distribute

CLAIMS_DIR = ".claims"


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


def grid_splits(config):
    """The grid's splits: `grid.splits`, or the config's one split when that is empty."""
    return tuple(config.grid.splits) or (config.split,)


def cells(grid_config, split_names=("random0",)):
    """The grid's cells in the order they are worked: every base first, then by n.

    `grid.treatments` are written for the A -> B direction (BnB, AnB+, RnB, ...); the
    direction "BtoA" of `grid.directions` trains their mirror images (AnA, BnA+, RnA, ...).
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
                cell = Cell(split, transfer.parse_treatment(flip(mode), n))
                if cell not in grid_cells:
                    grid_cells.append(cell)
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
    """Done / running / left over the grid's cells, and an estimate of the time left."""

    def __init__(self, total):
        self.total = total
        self.durations = []

    def line(self, done, running, workers):
        left = self.total - done - len(running)
        text = f"grid: {done}/{self.total} done, {len(running)} running"
        if running:
            text += f" ({', '.join(sorted(running))})"
        text += f", {left} left"
        if self.durations and done < self.total:
            mean = sum(self.durations) / len(self.durations)
            remaining = mean * (left + len(running) / 2) / max(workers, 1)
            text += f"; about {_format_duration(remaining)} to go"
        return text


def _format_duration(seconds):
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def run_grid(config, dataset, log=print, strategy=None, poll_s=None, train_cells=True, since=None):
    """Works the grid until every cell is finished, failed or could not run.

    Cells whose base is not finished yet wait; meanwhile this worker takes other cells.

    Args:
      train_cells: False: only summarize and report (after local worker processes).
      since: errors recorded from this time on count (default: this call's start).

    Returns:
      The paths of the report's files (results.write_report).
    Raises:
      GridIncompleteError: after the summary, tables, figure and findings, if a cell did
        not finish.
    """
    split_names = grid_splits(config)
    datasets = {name: dataset.with_split(name) for name in split_names}
    grid_cells = cells(config.grid, split_names)
    claims_dirs = {
        name: os.path.join(experiment.experiment_dir(config, datasets[name]), CLAIMS_DIR)
        for name in split_names
    }
    for path in claims_dirs.values():
        os.makedirs(path, exist_ok=True)
    timeout_s = config.grid.claim_timeout_s
    poll_s = poll_s or min(10.0, timeout_s / 2)
    progress = Progress(len(grid_cells))
    started_grid, started_at = time.monotonic(), since or time.time()
    last_line = None
    while train_cells:
        status = _status(config, datasets, grid_cells)
        errors = _errors(claims_dirs, started_at)
        done = sum(m is not None for m in status.values())
        pending = [c for c in grid_cells if status[c.name] is None and c.name not in errors]
        running = _held(claims_dirs, timeout_s) & {c.name for c in pending}
        line = progress.line(done, running, workers=max(len(running), 1))
        if line != last_line:  # with the clock time: a resumed grid's log gives its total
            log(f"{line} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
            last_line = line
        if not pending:
            break
        cell, claim = _claim_next(pending, status, errors, config, datasets, claims_dirs, timeout_s)
        if cell is None:  # others hold the rest, or it waits for a base someone trains
            time.sleep(poll_s)
            continue
        pack = [(cell, claim)] + _claim_pack_mates(
            cell, pending, status, errors, config, datasets, claims_dirs, timeout_s, strategy
        )
        finished = set()
        started = time.time()
        try:
            results = experiment.run_pack(
                config,
                datasets[cell.split],
                [c.treatment for c, _ in pack],
                log=log,
                strategy=strategy,
                guards=[claims.ClaimGuard(c) for _, c in pack],
            )
            for (member, _), (metrics, _) in zip(pack, results):
                finished.add(member.name)
                progress.durations.append((time.time() - started) / len(pack))
                log(
                    f"grid: {member.name} {metrics['status']}"
                    + (f", top-1 {metrics['top1']:.4f}" if metrics["status"] == "finished" else "")
                )
        except experiment.RunBusyError:  # another worker is still training it: wait
            log(f"grid: {cell.name} is being trained by another worker; waiting")
            time.sleep(poll_s)
        except claims.ClaimLostError as e:
            log(f"grid: {e}")
        except atomic.DiskFullError:
            raise  # every other cell would fail the same way: stop, rerun when there is room
        except (RuntimeError, ValueError) as e:  # keep working the other cells
            for member, _ in pack:
                _record_error(claims_dirs[member.split], member.treatment.run_name, str(e))
                log(f"grid: {member.name} could not run: {e}")
        finally:
            for member, member_claim in pack:
                member_claim.release(finished=member.name in finished)
            _free_memory()
    if not train_cells:
        status = _status(config, datasets, grid_cells)
        errors = _errors(claims_dirs, started_at)
    log(
        f"grid: this worker ran {len(progress.durations)} cell(s) in "
        f"{_format_duration(time.monotonic() - started_grid)}; the grid's cells trained "
        f"for {_format_duration(_training_seconds(status))} in all"
    )
    summary, incomplete = _summary(grid_cells, status, errors)
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


def _status(config, datasets, grid_cells):
    return {
        c.name: experiment.read_metrics(experiment.run_dir(config, datasets[c.split], c.treatment))
        for c in grid_cells
    }


def _held(claims_dirs, timeout_s):
    """Names (split/run) of the cells some live worker holds."""
    return {
        f"{split}/{run}"
        for split, path in claims_dirs.items()
        for run in claims.held_cells(path, timeout_s)
    }


def _record_error(claims_dir, cell, reason):
    atomic.write_json(
        os.path.join(claims_dir, f"{cell}.error"), {"reason": reason, "time": time.time()}
    )


def _errors(claims_dirs, since):
    """{split/run: reason} of the cells recorded as unable to run since this worker
    started.

    Older records are ignored: a new grid process tries those cells again (the fault may
    have been fixed), and records its own error if it persists.
    """
    errors = {}
    for split, claims_dir in claims_dirs.items():
        for name in os.listdir(claims_dir):
            if name.endswith(".error"):
                record = atomic.read_json(os.path.join(claims_dir, name))  # atomic
                if record is not None and record["time"] >= since:
                    errors[f"{split}/{name[: -len('.error')]}"] = record["reason"]
    return errors


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


def _claim_next(pending, status, errors, config, datasets, claims_dirs, timeout_s):
    """The first pending cell whose base is finished and that no one holds, claimed.

    A cell whose base failed or could not run is recorded as unable to run (so no worker
    waits for it).
    """
    for cell in pending:
        treatment, claims_dir = cell.treatment, claims_dirs[cell.split]
        if treatment.base_mode and not experiment.external_base(config, treatment):
            base = status.get(cell.base_name)
            reason = None
            if base is None and cell.base_name in errors:
                reason = f"its base {treatment.base_mode} could not run ({errors[cell.base_name]})"
            elif base is not None and base["status"] != "finished":
                reason = f"its base {treatment.base_mode} failed ({base.get('reason', '')})"
            if reason:
                _record_error(claims_dir, treatment.run_name, reason)
                errors[cell.name] = reason
                continue
            if base is None:
                continue  # its base is still to be trained (a base cell comes first)
        claim = claims.try_claim(claims_dir, treatment.run_name, timeout_s)
        if claim is None:
            continue
        # Finished by another worker between our listing and our claim?
        run_dir = experiment.run_dir(config, datasets[cell.split], treatment)
        if experiment.read_metrics(run_dir) is not None:
            claim.release(finished=True)
            continue
        return cell, claim
    return None, None


def _claim_pack_mates(
    cell, pending, status, errors, config, datasets, claims_dirs, timeout_s, strategy
):
    """More cells to train with `cell` as a pack (training/packing.py), claimed: up to
    `grid.pack_size` in all, of the same split and target half (so one input stream),
    in the grid's order. A base trains alone (each base has a half of its own)."""
    size = config.grid.get("pack_size", 1)
    strategy = strategy or distribute.current_strategy()
    if size <= 1 or cell.treatment.source is None or not experiment.can_pack(strategy):
        return []
    mates = []
    for other in pending:
        if len(mates) + 1 >= size:
            break
        if (
            other is cell
            or other.split != cell.split
            or other.treatment.source is None
            or other.treatment.target != cell.treatment.target
        ):
            continue
        claimed, claim = _claim_next(
            [other], status, errors, config, datasets, claims_dirs, timeout_s
        )
        if claimed is not None:
            mates.append((claimed, claim))
    return mates


def _free_memory():
    """Drops the finished cell's graphs and tensors before the next cell builds its own."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


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
        treatments=tuple(_paper_names(config.grid.treatments)),
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
