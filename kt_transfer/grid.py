"""The whole experiment of a split: both bases, then every treatment for every n.

    python -m kt_transfer.main --mode=grid            # start as many of these as you like

Any number of worker processes, on one machine or on several sharing the workdir's
filesystem, work the same grid: each cell is claimed exclusively before it is trained
(claims.py), so no cell is trained by two workers. A claim is kept fresh by a heartbeat;
one not refreshed for `grid.claim_timeout_s` (its worker died, its machine was lost), or
left by a dead process on this same machine, is taken over, and the cell resumes from its
last backup; a worker whose claim was taken over stops that cell. Finished cells are
skipped, so running the command again after a kill finishes the grid.

A cell that cannot run (its base failed or could not run, an error before training) is
recorded in the claims directory, so every worker stops waiting for it and for the cells
that need it. A new grid process tries such cells again. The grid ends with a summary of
what finished, what failed and why, writes the results table and the paper's figure
beside the runs, and raises (the CLI exits non-zero) unless every cell finished.
"""

import os
import time

from kt_transfer import atomic, claims, experiment, results, splits, transfer, validate

CLAIMS_DIR = ".claims"


def cells(grid_config):
    """The grid's treatments in the order they are worked: bases first, then by n.

    `grid.treatments` are written for the A -> B direction (BnB, AnB+, RnB, ...);
    `grid.direction = "BtoA"` trains the mirror image (AnA, BnA+, RnA, ...).
    """
    if grid_config.direction not in validate.DIRECTIONS:
        raise ValueError(f"--config.grid.direction={grid_config.direction!r}; use AtoB or BtoA")
    if not grid_config.ns:
        raise ValueError("--config.grid.ns is empty; give the n values, e.g. '(1, 2, 3)'")
    flip = splits.swap_halves if grid_config.direction == "BtoA" else (lambda mode: mode)
    treatments = [transfer.parse_treatment("baseA"), transfer.parse_treatment("baseB")]
    for n in grid_config.ns:
        for mode in grid_config.treatments:
            treatments.append(transfer.parse_treatment(flip(mode), n))
    return treatments


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


def run_grid(config, dataset, log=print, strategy=None, poll_s=None):
    """Works the grid until every cell is finished, failed or could not run.

    Cells whose base is not finished yet wait; meanwhile this worker takes other cells.

    Returns:
      (rows of the results table, paths of the table and figure files written).
    Raises:
      GridIncompleteError: after the summary, table and figure, if a cell did not finish.
    """
    grid_cells = cells(config.grid)
    exp_dir = experiment.experiment_dir(config, dataset)
    claims_dir = os.path.join(exp_dir, CLAIMS_DIR)
    os.makedirs(claims_dir, exist_ok=True)
    timeout_s = config.grid.claim_timeout_s
    poll_s = poll_s or min(10.0, timeout_s / 2)
    progress = Progress(len(grid_cells))
    started_grid, started_at = time.monotonic(), time.time()
    last_line = None
    while True:
        status = _status(config, dataset, grid_cells)
        errors = _errors(claims_dir, started_at)
        done = sum(m is not None for m in status.values())
        pending = [c for c in grid_cells if status[c.run_name] is None
                   and c.run_name not in errors]
        running = claims.held_cells(claims_dir, timeout_s) & {c.run_name for c in pending}
        line = progress.line(done, running, workers=max(len(running), 1))
        if line != last_line:
            log(line)
            last_line = line
        if not pending:
            break
        cell, claim = _claim_next(pending, status, errors, config, dataset, claims_dir,
                                  timeout_s)
        if cell is None:  # others hold the rest, or it waits for a base someone trains
            time.sleep(poll_s)
            continue
        finished = False
        started = time.time()
        try:
            metrics, _ = experiment.run_treatment(config, dataset, cell, log=log,
                                                  strategy=strategy,
                                                  guard=claims.ClaimGuard(claim))
            finished = True
            progress.durations.append(time.time() - started)
            log(f"grid: {cell.run_name} {metrics['status']}"
                + (f", top-1 {metrics['top1']:.4f}" if metrics["status"] == "finished" else ""))
        except experiment.RunBusyError:  # another worker is still training it: wait
            log(f"grid: {cell.run_name} is being trained by another worker; waiting")
            time.sleep(poll_s)
        except claims.ClaimLostError as e:
            log(f"grid: {e}")
        except (RuntimeError, ValueError) as e:  # keep working the other cells
            _record_error(claims_dir, cell.run_name, str(e))
            log(f"grid: {cell.run_name} could not run: {e}")
        finally:
            claim.release(finished=finished)
            _free_memory()
    log(f"grid: this worker ran {len(progress.durations)} cell(s) in "
        f"{_format_duration(time.monotonic() - started_grid)}; the grid's cells trained "
        f"for {_format_duration(_training_seconds(status))} in all")
    summary, incomplete = _summary(grid_cells, status, errors)
    for summary_line in summary:
        log(summary_line)
    written = _write_results(config, dataset, exp_dir, log)
    if incomplete:
        raise GridIncompleteError(
            f"{len(incomplete)} of {len(grid_cells)} grid cells did not finish: "
            + "; ".join(f"{name}: {reason}" for name, reason in incomplete.items()))
    return written


class GridIncompleteError(RuntimeError):
    """The grid ended with cells that failed or could not run."""


def _status(config, dataset, grid_cells):
    return {c.run_name: experiment.read_metrics(experiment.run_dir(config, dataset, c))
            for c in grid_cells}


def _record_error(claims_dir, cell, reason):
    atomic.write_json(os.path.join(claims_dir, f"{cell}.error"),
                      {"reason": reason, "time": time.time()})


def _errors(claims_dir, since):
    """{cell: reason} of the cells recorded as unable to run since this worker started.

    Older records are ignored: a new grid process tries those cells again (the fault may
    have been fixed), and records its own error if it persists.
    """
    errors = {}
    for name in os.listdir(claims_dir):
        if name.endswith(".error"):
            record = atomic.read_json(os.path.join(claims_dir, name))  # written atomically
            if record is not None and record["time"] >= since:
                errors[name[:-len(".error")]] = record["reason"]
    return errors


def _summary(grid_cells, status, errors):
    """Lines saying what finished and what did not (and why), and {cell: reason} of the
    cells that did not finish."""
    incomplete = {}
    for cell in grid_cells:
        metrics = status[cell.run_name]
        if metrics is None:
            incomplete[cell.run_name] = "could not run: " + errors.get(cell.run_name,
                                                                      "not trained")
        elif metrics.get("status", "finished") != "finished":
            incomplete[cell.run_name] = f"failed: {metrics.get('reason', '')}"
    finished = len(grid_cells) - len(incomplete)
    lines = [f"grid: summary: {finished} of {len(grid_cells)} cells finished"
             + (f", {len(incomplete)} did not:" if incomplete else "")]
    lines += [f"grid:   {name}: {reason}" for name, reason in incomplete.items()]
    return lines, incomplete


def _training_seconds(status):
    """Sum of the cells' recorded training wall times (all workers, all resumed parts)."""
    return sum(m.get("seconds", 0.0) for m in status.values() if m is not None)


def _claim_next(pending, status, errors, config, dataset, claims_dir, timeout_s):
    """The first pending cell whose base is finished and that no one holds, claimed.

    A cell whose base failed or could not run is recorded as unable to run (so no worker
    waits for it).
    """
    for cell in pending:
        if cell.base_mode and not experiment.external_base(config, cell):
            base = status.get(cell.base_mode)
            reason = None
            if base is None and cell.base_mode in errors:
                reason = f"its base {cell.base_mode} could not run ({errors[cell.base_mode]})"
            elif base is not None and base["status"] != "finished":
                reason = f"its base {cell.base_mode} failed ({base.get('reason', '')})"
            if reason:
                _record_error(claims_dir, cell.run_name, reason)
                errors[cell.run_name] = reason
                continue
            if base is None:
                continue  # its base is still to be trained (a base cell comes first)
        claim = claims.try_claim(claims_dir, cell.run_name, timeout_s)
        if claim is None:
            continue
        # Finished by another worker between our listing and our claim?
        if experiment.read_metrics(experiment.run_dir(config, dataset, cell)) is not None:
            claim.release(finished=True)
            continue
        return cell, claim
    return None, None


def _free_memory():
    """Drops the finished cell's graphs and tensors before the next cell builds its own."""
    import gc

    import keras
    keras.backend.clear_session()
    gc.collect()


def _write_results(config, dataset, exp_dir, log):
    """The grid's table (CSV, Markdown) and figure, beside its runs."""
    rows = [r for r in results.gather(config.workdir)
            if os.path.join(config.workdir, r["dataset"], r["split"], r["experiment"])
            == exp_dir]
    written = results.write_tables(rows, exp_dir)
    figure = os.path.join(exp_dir, "results.png")
    results.plot(rows, figure, results.figure_title(dataset.name, dataset.split.name),
                 paper=dataset.split.name.startswith("random") and config.grid.paper_overlay)
    written.append(figure)
    for path in written:
        log(f"grid: wrote {path}")
    return rows, written
