"""Several grid workers on one machine, each pinned to its own share of the cores.

A CPU-scale cell is a small network, and TensorFlow spreads a small network's ops over
many cores poorly, so on a machine with many cores several grid workers, each pinned to a
few cores, can finish more cells per hour than one process on all of them. `--mode=grid`
on a machine without GPUs starts `grid.workers_per_machine` worker processes (0 = one per
`grid.cores_per_worker` cores) and waits for them; they share the grid through its claims
exactly as workers on several machines do. Each is pinned to its cores with
sched_setaffinity, and TensorFlow, oneDNN and tf.data size their thread pools from that.
Measured on the 2-core machine (tools/bench_grid_workers.py), one worker on both cores
beat two one-core workers (46.2 against 38.6 cells/hour), hence the default of 2 cores
per worker: one worker there, eight on 16 cores.
With GPUs the one process uses them all (its strategy mirrors over them).
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

WORKER_ENV = "_KT_TRANSFER_GRID_WORKER"  # set in a worker: "<index>/<count>"


def available_cpus():
    return sorted(os.sched_getaffinity(0))


def workers_for(grid_config, has_gpus, cpus=None):
    """How many worker processes `--mode=grid` starts on this machine."""
    if os.environ.get(WORKER_ENV) or has_gpus:
        return 1
    cpus = len(cpus if cpus is not None else available_cpus())
    requested = grid_config.workers_per_machine
    if requested <= 0:
        requested = cpus // max(grid_config.cores_per_worker, 1)
    return max(1, min(requested, cpus))


def cpu_shares(workers, cpus=None):
    """The cores of each worker: contiguous, as equal as the count allows."""
    cpus = cpus if cpus is not None else available_cpus()
    base, extra = divmod(len(cpus), workers)
    shares, start = [], 0
    for i in range(workers):
        size = base + (i < extra)
        shares.append(cpus[start : start + size])
        start += size
    return shares


def _die_with_parent():
    """In the child: SIGKILL when the parent dies (Linux), so a killed grid leaves no
    orphan workers (their cells resume from backups on the next run)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_workers(argv, workers, log=print):
    """Starts `workers` copies of this command line, pinned to their cores; waits.

    Returns:
      The worker exit codes.
    """
    shares = cpu_shares(workers)
    log(
        f"grid: {workers} worker processes on this machine, cores "
        + "; ".join(",".join(map(str, share)) for share in shares)
        + " (--config.grid.workers_per_machine)"
    )
    procs = []
    for i, share in enumerate(shares):
        threads = str(len(share))
        env = {
            **os.environ,
            WORKER_ENV: f"{i}/{workers}",
            "OMP_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": threads,
        }

        def pin(share=share):
            os.sched_setaffinity(0, share)
            _die_with_parent()

        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "kt_transfer.main", *argv[1:]], env=env, preexec_fn=pin
            )
        )
    try:
        return [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        raise


def worker_prefix():
    """ "[worker i/n] " in a worker, so interleaved lines say whose they are."""
    name = os.environ.get(WORKER_ENV)
    return f"[worker {name}] " if name else ""


def run_grid_on_this_machine(config, dataset, strategy, argv):
    """The grid in this process, or in several pinned worker processes of `argv` (this
    command again) whose end this process waits for before it summarizes.

    Returns:
      The worker processes' exit codes (empty when the grid ran in this process).
    """
    from kt_transfer.runs import grid
    from kt_transfer.training import distribute

    workers = workers_for(
        config.grid, has_gpus=distribute.has_gpus() or config.distribute.strategy == "multi_worker"
    )
    prefix = worker_prefix()
    if workers == 1:
        if prefix:  # one of several: lines prefixed, no interleaved progress bars
            with config.unlocked():
                config.verbose = 0
            print(
                f"{prefix}grid: pinned to cores {','.join(map(str, available_cpus()))}", flush=True
            )
        grid.run_grid(
            config,
            dataset,
            log=lambda line: print(prefix + str(line), flush=True),
            strategy=strategy,
        )
        return []
    started = time.time()
    codes = run_workers(argv, workers)
    # Every cell is finished or recorded as failed by now: summarize, write the report.
    grid.run_grid(config, dataset, strategy=strategy, train_cells=False, since=started)
    return codes
