"""Where the grid's work runs: a pool of persistent worker processes on this machine
("local"), or tasks on a Ray cluster ("ray"), chosen by `grid.executor`.

The grid runner (grid.py) decides what trains and when: the cells, their order, which wait
for a base, packs, resume, the summary. An executor only runs the units it is handed (a
cell, or a pack of cells: `train_unit`) and says how each ended. Both keep their worker
processes, and with them TensorFlow and Keras, loaded from one unit to the next, so a unit
pays only its own set-up.

A worker that dies (killed, out of memory, its machine lost) loses only the steps since
its units' last backups: the unit is run again, up to `grid.retries` times, and resumes
from them. Locally this executor starts a fresh worker; on Ray, Ray retries the task on
any node that has room (its `max_retries`).

This module imports neither TensorFlow nor Ray at the top: a local worker process sets its
cores and thread counts before TensorFlow starts, and the local executor needs no Ray.
"""

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import socket

RAY_INSTALL_HINT = 'pip install "kt_transfer[ray]"'
RAY_CONNECT_TIMEOUT_S = 5.0


def train_unit(config, dataset, split, treatments, log_prefix=""):
    """Trains `treatments` of `split` as one pack (experiment.run_pack) in this worker.

    Returns:
      {"metrics": [metrics dict per treatment]}; or {"busy": reason} when another process
      holds a run directory; {"error": reason} when the unit could not run (a base that
      failed, a network that cannot be built); {"disk_full": reason}.
    """
    from kt_transfer import atomic
    from kt_transfer.runs import experiment

    def log(line):
        print(f"{log_prefix}{line}", flush=True)

    try:
        results = experiment.run_pack(
            config, dataset.with_split(split), treatments, log=log, strategy=_strategy(config)
        )
        # As stored (metrics.json): what the runner needs, and nothing Keras holds on to.
        return {"metrics": [experiment.read_metrics(out) or metrics for metrics, out in results]}
    except experiment.RunBusyError as e:
        return {"busy": str(e)}
    except atomic.DiskFullError as e:
        return {"disk_full": str(e)}
    except (RuntimeError, ValueError) as e:
        return {"error": str(e)}
    finally:
        _free_memory()


_STRATEGIES = {}


def _strategy(config):
    """This worker's tf.distribute strategy, made once (a strategy owns its devices)."""
    from kt_transfer.training import distribute

    key = repr(config.distribute)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = distribute.make_strategy(config.distribute)
    return _STRATEGIES[key]


def _free_memory():
    """Drops the unit's graphs and tensors before the next unit builds its own."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def make_executor(config, log=print):
    """The executor `grid.executor` names, ready to take units."""
    if config.grid.executor == "ray":
        return RayExecutor(config.grid, log)
    from kt_transfer.training import distribute

    workers = local_worker_count(config.grid.cpus_per_cell)
    if distribute.has_gpus() or workers == 1:
        # One worker with the whole machine (mirrored over every GPU there is): nothing to
        # pin, TensorFlow sizes its thread pools from the machine.
        return LocalExecutor([None], config.grid.retries, log)
    return LocalExecutor(cpu_shares(workers), config.grid.retries, log)


class WorkerLostError(RuntimeError):
    """The worker process running a unit died, and the unit's retries are used up."""


# --------------------------------------------------------------------------------------
# Local: persistent worker processes, each pinned to its share of the cores.


def available_cpus():
    return sorted(os.sched_getaffinity(0))


def local_worker_count(cpus_per_cell, cpus=None):
    """Worker processes on this machine: one per `cpus_per_cell` cores, at least one.
    A CPU-scale cell is a small network that spreads over many cores poorly, so several
    pinned workers can beat one on a big machine; on the 2-core machine one worker on
    both cores was not slower than two one-core workers (docs/performance.md), hence the
    default of 2."""
    cpus = len(cpus if cpus is not None else available_cpus())
    return max(1, cpus // max(int(cpus_per_cell), 1))


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


def _start_local_worker(cores):
    """In a new worker process, before TensorFlow is imported: its cores and thread pools
    (TensorFlow, oneDNN and tf.data size theirs from these), and death with the grid
    process (Linux), so a killed grid leaves no orphan training on."""
    if cores is not None:
        os.sched_setaffinity(0, cores)
        threads = str(len(cores))
        for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[name] = threads
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalExecutor:
    """A pool of persistent worker processes on this machine, one unit at a time each.

    Each worker is a process pool of one, so a worker that dies breaks only its own pool:
    its unit runs again in a fresh worker (up to `retries` times), the others go on.
    """

    def __init__(self, shares, retries=2, log=print):
        self.shares, self.retries, self.log = list(shares), retries, log
        self._pools = [None] * len(self.shares)
        self._busy = {}  # future -> (worker index, job, args, attempt)
        self._jobs = 0
        self._context = multiprocessing.get_context("spawn")
        cores = "; ".join(",".join(map(str, s)) if s else "all" for s in self.shares)
        self.describe = (
            f"{len(self.shares)} local worker process(es) (cores {cores}; grid.cpus_per_cell)"
        )

    @property
    def capacity(self):
        return len(self.shares)

    def has_room(self):
        return len(self._busy) < len(self.shares)

    def worker_prefix(self, index):
        return f"[worker {index + 1}/{len(self.shares)}] " if len(self.shares) > 1 else ""

    def submit(self, config, dataset, split, treatments):
        """Starts a unit on a free worker. Returns its job number (kept over retries)."""
        index = min(set(range(len(self.shares))) - {i for i, *_ in self._busy.values()})
        self._jobs += 1
        job = self._jobs
        self._start(job, index, (config, dataset, split, tuple(treatments)), attempt=0)
        return job

    def _start(self, job, index, args, attempt):
        if self._pools[index] is None:
            self._pools[index] = concurrent.futures.ProcessPoolExecutor(
                max_workers=1,
                mp_context=self._context,
                initializer=_start_local_worker,
                initargs=(self.shares[index],),
            )
        future = self._pools[index].submit(train_unit, *args, self.worker_prefix(index))
        self._busy[future] = (index, job, args, attempt)

    def wait(self, timeout):
        """[(job, result or exception)] of the units that ended within `timeout` s. A unit
        whose worker died runs again in a fresh worker, under the same job number."""
        done, _ = concurrent.futures.wait(
            list(self._busy), timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        ended = []
        for future in done:
            index, job, args, attempt = self._busy.pop(future)
            try:
                ended.append((job, future.result()))
            except concurrent.futures.process.BrokenProcessPool:
                self._pools[index].shutdown(wait=False, cancel_futures=True)
                self._pools[index] = None
                unit = f"{args[2]}/{'+'.join(t.run_name for t in args[3])}"
                if attempt < self.retries:
                    self.log(
                        f"grid: worker {index + 1} died training {unit}; running it again "
                        f"in a fresh worker (retry {attempt + 1} of {self.retries})"
                    )
                    self._start(job, index, args, attempt + 1)
                else:
                    ended.append((job, WorkerLostError(f"its worker died {attempt + 1} times")))
        return ended

    def close(self):
        for pool in self._pools:
            if pool is not None:
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.kill()  # on an error or Ctrl-C: training resumes from backups
                pool.shutdown(wait=True, cancel_futures=True)
        self._pools = [None] * len(self.shares)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------
# Ray: tasks on a cluster; Ray places them by their resources and retries lost ones.


def _ray_train_unit(config, dataset, split, treatments):
    """train_unit as a Ray task, its lines prefixed by Ray with the task and node."""
    return train_unit(config, dataset, split, treatments)


def ray_address(grid_config):
    """The Ray cluster the grid joins: grid.ray_address, else $RAY_ADDRESS; None starts a
    Ray instance on this machine."""
    return grid_config.ray_address or os.environ.get("RAY_ADDRESS") or None


def check_ray_address(address, timeout_s=RAY_CONNECT_TIMEOUT_S):
    """Raises RuntimeError (one line) when nothing answers at a HOST:PORT Ray address.

    ray.init keeps retrying an address where nobody answers for about 14 minutes before
    it gives up; a TCP connect to the same port answers in at most `timeout_s`, so a typo
    or a head that is down is reported before the grid resolves its data. `auto` (the
    cluster this machine is part of) and a local instance are Ray's own to find."""
    if address is None or address in ("auto", "local"):
        return
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(
            f"the Ray address {address!r} is not HOST:PORT: give e.g. "
            "--config.grid.ray_address=10.0.0.1:6379 (or auto, or ray://HOST:10001)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise RuntimeError(
            f"cannot reach the Ray cluster at {address} ({reason} within {timeout_s:g} s); "
            "start it (ray start --head, docs/distributed.md) or fix "
            "--config.grid.ray_address / $RAY_ADDRESS"
        ) from None


class RayExecutor:
    """Units as Ray tasks. Ray reuses its worker processes from task to task, so
    TensorFlow stays loaded; a task whose worker or node dies is retried by Ray on another
    (max_retries), and resumes from its cells' backups in the shared workdir."""

    def __init__(self, grid_config, log=print):
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                f"grid.executor='ray' needs Ray, which is not installed: {RAY_INSTALL_HINT}, "
                "or use --config.grid.executor=local (this machine only)"
            ) from None
        self._ray, self.log = ray, log
        address = ray_address(grid_config)
        check_ray_address(address)
        try:
            context = ray.init(
                address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING"
            )
        except (ConnectionError, RuntimeError, ValueError) as e:  # no cluster there
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"cannot join the Ray cluster at {address} ({first}); start it (ray start "
                "--head, docs/distributed.md) or fix --config.grid.ray_address / $RAY_ADDRESS"
            ) from None
        self.cpus, self.gpus = grid_config.cpus_per_cell, grid_config.gpus_per_cell
        self._task = ray.remote(
            num_cpus=self.cpus,
            num_gpus=self.gpus,
            max_retries=grid_config.retries,
            retry_exceptions=False,  # an error in a cell is the cell's: not retried
            max_calls=0,  # keep workers (and TensorFlow) from task to task, GPU tasks too
        )(_ray_train_unit)
        self._busy = {}  # ObjectRef -> job number
        self._jobs = 0
        where = f"the cluster at {address}" if address else "a Ray instance on this machine"
        dashboard = getattr(context, "dashboard_url", None)
        self.describe = f"Ray tasks on {where}, {self.cpus} CPU(s) and {self.gpus} GPU(s) each" + (
            f"; Ray's dashboard: http://{dashboard}"
            if dashboard
            else "; no dashboard (pip install 'ray[default]')"
        )

    @property
    def capacity(self):
        """Units the cluster can run at once now (nodes may join or leave)."""
        resources = self._ray.cluster_resources()
        slots = int(resources.get("CPU", 0) // self.cpus) if self.cpus else 1 << 30
        if self.gpus:
            slots = min(slots, int(resources.get("GPU", 0) // self.gpus))
        return max(slots, 1)

    def has_room(self):
        return len(self._busy) < self.capacity

    def submit(self, config, dataset, split, treatments):
        """Submits a unit as a task. Returns its job number."""
        name = f"{split}/{'+'.join(t.run_name for t in treatments)}"
        ref = self._task.options(name=name).remote(config, dataset, split, tuple(treatments))
        self._jobs += 1
        job = self._jobs
        self._busy[ref] = job
        return job

    def wait(self, timeout):
        ready, _ = self._ray.wait(list(self._busy), num_returns=1, timeout=timeout)
        ended = []
        for ref in ready:
            job = self._busy.pop(ref)
            try:
                ended.append((job, self._ray.get(ref)))
            except self._ray.exceptions.RayError as e:  # retries used up, node lost, ...
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                ended.append((job, WorkerLostError(f"{type(e).__name__}: {reason}")))
        return ended

    def close(self):
        for ref in self._busy:
            self._ray.cancel(ref, force=True)
        self._busy.clear()
        self._ray.shutdown()  # a local instance stops; from a cluster, this driver leaves

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
