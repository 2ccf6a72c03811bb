"""The whole experiment of a split: both bases, then every treatment for every n.

    python -m kt_transfer.main --mode=grid            # start as many of these as you like

Any number of worker processes, on one machine or on several sharing the workdir's
filesystem, work the same grid: each cell is claimed atomically before it is trained, so
no cell runs twice. A claim is a small file that its worker refreshes (a heartbeat); a
claim that has not been refreshed for `grid.claim_timeout_s` (its worker died, its machine
was lost) is taken over, and the cell resumes from its last backup. A claim left by a dead
process on this same machine is taken over at once. Finished cells are skipped, so running
the command again after a kill finishes the grid. At the end the results table and the
paper's figure are written beside the runs.
"""

import dataclasses
import json
import os
import socket
import threading
import time

from kt_transfer import experiment, results, splits, transfer

CLAIMS_DIR = ".claims"


def cells(grid_config):
    """The grid's treatments in the order they are worked: bases first, then by n.

    `grid.treatments` are written for the A -> B direction (BnB, AnB+, RnB, ...);
    `grid.direction = "BtoA"` trains the mirror image (AnA, BnA+, RnA, ...).
    """
    if grid_config.direction not in ("AtoB", "BtoA"):
        raise ValueError(f"--config.grid.direction={grid_config.direction!r}; use AtoB or BtoA")
    if not grid_config.ns:
        raise ValueError("--config.grid.ns is empty; give the n values, e.g. '(1, 2, 3)'")
    flip = splits.swap_halves if grid_config.direction == "BtoA" else (lambda mode: mode)
    treatments = [transfer.parse_treatment("baseA"), transfer.parse_treatment("baseB")]
    for n in grid_config.ns:
        for mode in grid_config.treatments:
            treatments.append(transfer.parse_treatment(flip(mode), n))
    return treatments


@dataclasses.dataclass
class Claim:
    """One worker's hold on one cell, kept alive by a heartbeat thread."""

    path: str
    owner: str
    interval_s: float

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(self.interval_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:  # taken over after a long stall; nothing to refresh
                return

    def release(self):
        self._stop.set()
        self._thread.join()
        try:
            if _read_claim(self.path).get("owner") == self.owner:
                os.remove(self.path)
        except FileNotFoundError:
            pass


def _read_claim(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_is_stale(path, timeout_s, now=None):
    """Stale: not refreshed within timeout_s, or left by a dead process on this host."""
    try:
        age = (now or time.time()) - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    if age > timeout_s:
        return True
    holder = _read_claim(path)
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid", 0))


def try_claim(claims_dir, cell_name, owner, timeout_s):
    """Creates the cell's claim file exclusively; returns a Claim, or None if held.

    O_CREAT | O_EXCL makes the claim atomic (also on NFS v3+). A stale claim is first
    renamed to a name unique to this worker: of several workers taking over the same stale
    claim, exactly one rename succeeds.
    """
    path = os.path.join(claims_dir, cell_name + ".claim")
    if claim_is_stale(path, timeout_s):
        try:
            os.rename(path, f"{path}.stale-{owner}")
            os.remove(f"{path}.stale-{owner}")
        except FileNotFoundError:
            return None  # another worker took it over first
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        host, pid = owner.rsplit(":", 1)
        json.dump({"owner": owner, "host": host, "pid": int(pid), "since": time.time()}, f)
    return Claim(path, owner, interval_s=max(timeout_s / 4, 0.05))


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
    """Works the grid until every cell is finished (or failed).

    Cells whose base is not finished yet wait; meanwhile this worker takes other cells.

    Returns:
      (rows of the results table, paths of the table and figure files written).
    Raises:
      RuntimeError: after the table is written, if a cell could not be run (its base
        failed, or an error in training).
    """
    grid_cells = cells(config.grid)
    exp_dir = experiment.experiment_dir(config, dataset)
    claims_dir = os.path.join(exp_dir, CLAIMS_DIR)
    os.makedirs(claims_dir, exist_ok=True)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    timeout_s = config.grid.claim_timeout_s
    poll_s = poll_s or min(10.0, timeout_s / 2)
    progress = Progress(len(grid_cells))
    started_grid = time.monotonic()
    errors = {}
    last_line = None
    while True:
        status = {c.run_name: experiment.read_metrics(experiment.run_dir(config, dataset, c))
                  for c in grid_cells}
        done = sum(m is not None for m in status.values())
        pending = [c for c in grid_cells if status[c.run_name] is None
                   and c.run_name not in errors]
        running = {os.path.basename(p)[:-len(".claim")] for p in os.listdir(claims_dir)
                   if p.endswith(".claim")} & {c.run_name for c in pending}
        line = progress.line(done, running, workers=max(len(running), 1))
        if line != last_line:
            log(line)
            last_line = line
        if not pending:
            break
        cell, claim = _claim_next(pending, status, config, dataset, claims_dir, owner,
                                  timeout_s, errors)
        if cell is None:  # others hold the rest, or it waits for a base someone trains
            time.sleep(poll_s)
            continue
        started = time.time()
        try:
            metrics, _ = experiment.run_treatment(config, dataset, cell, log=log,
                                                  strategy=strategy)
            progress.durations.append(time.time() - started)
            log(f"grid: {cell.run_name} {metrics['status']}"
                + (f", top-1 {metrics['top1']:.4f}" if metrics["status"] == "finished" else ""))
        except (RuntimeError, ValueError) as e:  # keep working the other cells
            errors[cell.run_name] = str(e)
            log(f"grid: {cell.run_name} could not run: {e}")
        finally:
            claim.release()
            _free_memory()
    log(f"grid: this worker ran {len(progress.durations)} cell(s) in "
        f"{_format_duration(time.monotonic() - started_grid)}; the grid's cells trained "
        f"for {_format_duration(_training_seconds(status))} in all")
    written = _write_results(config, dataset, exp_dir, log)
    if errors:
        raise RuntimeError("grid cells could not run: " + "; ".join(
            f"{name}: {reason}" for name, reason in errors.items()))
    return written


def _training_seconds(status):
    """Sum of the cells' recorded training wall times (all workers, all resumed parts)."""
    return sum(m.get("seconds", 0.0) for m in status.values() if m is not None)


def _claim_next(pending, status, config, dataset, claims_dir, owner, timeout_s, errors):
    """The first pending cell whose base is finished and that no one holds, claimed."""
    for cell in pending:
        if cell.base_mode and not experiment.external_base(config, cell):
            base = status.get(cell.base_mode)
            if base is None:
                continue  # its base is still to be trained (a base cell comes first)
            if base["status"] != "finished":
                errors[cell.run_name] = f"its base {cell.base_mode} failed"
                continue
        claim = try_claim(claims_dir, cell.run_name, owner, timeout_s)
        if claim is None:
            continue
        # Finished by another worker between our listing and our claim?
        if experiment.read_metrics(experiment.run_dir(config, dataset, cell)) is not None:
            claim.release()
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
