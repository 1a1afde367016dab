"""The project's default runner: independent jobs at once, in a pool of worker processes.

``kedro run`` runs with it unless ``--runner`` says otherwise (``cli.py``)::

    kedro run                                   # every core, or every GPU filled
    kedro run --runner-params max_workers=4     # at most 4 jobs at once
    kedro run --runner-params workers_per_gpu=2 # 2 jobs at once on each GPU
    kedro run --runner SequentialRunner         # one node after the other, in-process

The connected nodes of one namespace run as one task (``groups.py``): a job runs in one
worker from its input file to its manifest entry, so its validated arrays never cross
processes. As many groups run at once as there are worker slots: one per core, or
``workers_per_gpu`` per visible GPU (each worker sees only its GPU; by default as many
as the GPU's free memory holds by the jobs' sizes, one per core at most, at most 8:
``capacity.py``), and never more than the pipeline has groups to run side by side. The
longest jobs (most patterns) start first. Each worker limits its numerical libraries
to its share of the cores (cores / workers; ``ptychi_baseline.cpu_threads`` still
overrides it per job). When only one group at a time can run (a single job, or a single
core), the nodes run in this process, with Kedro's own ``Task``, all hooks, and every
core for the job.

Workers start from a fresh interpreter (multiprocessing's ``forkserver`` where there is
one, else ``spawn``): nothing of this process (its threads, the console's lock, torch or
CUDA state) is inherited. Where things run:

- A worker loads a group's inputs, runs its nodes and saves their outputs through the
  catalog; MemoryDatasets that other groups need come back to this process and travel
  to the tasks that load them, those used only inside the group stay in the worker.
- This process calls the node hooks: ``before_node_run`` when a worker reports that a
  node starts, ``after_node_run`` with the node's outputs when its group has finished
  (outputs that stay in the worker are left out; ``inputs`` are empty). Dataset hooks
  do not run. A job records the worker it ran on (``record.running_on``).
- Worker log records (the jobs' epochs included) come to this process through each
  worker's own queue, read by a thread of its own, and go to its loggers
  (``logs.WorkerRecords``). Not one queue for all: a worker killed while it writes
  leaves its queue's lock held, and only its own queue must wait forever.
- A node that raises stops the run, as in a sequential run: no group starts after it,
  the groups already running finish, then the error is raised.

Faults stay with their job. Each slot is a pool of its own, so a worker that dies
(killed, out of host memory, a crash in native code) takes no other job with it: it is
replaced, and its group runs again on the new worker with the node it was running
marked (``record.after_lost_worker``), where a job records its failure with how the
worker died and the rest of its group (record, evaluation) runs as for any failed job.
A group whose worker dies twice is a node error. A worker whose GPU is lost (a CUDA
error other than out-of-memory poisons the process's CUDA context) is replaced after
its group.

Only Kedro's public API is used, but for overriding ``AbstractRunner``'s abstract
``_run`` and ``_get_executor``, the way every Kedro runner is written.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Any

from kedro.framework.project import LOGGING
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner, Task
from pluggy import PluginManager

from fly64_recon.devices import free_gpu_memory_mib, visible_gpus
from fly64_recon.display.logs import WorkerRecords, stderr_logged
from fly64_recon.runner import capacity
from fly64_recon.runner.common import (
    NodeHooks,
    available_cores,
    is_memory,
    release_datasets,
    task_catalog,
)
from fly64_recon.runner.groups import (
    NodeGroup,
    group_dependencies,
    node_groups,
    widest_level,
)
from fly64_recon.runner.worker import (
    GroupOutcome,
    LostNode,
    NodeStarted,
    Slot,
    WorkerSetup,
    group_task,
    run_group,
    start_worker,
)
from fly64_recon.study import Job, StudyDesignError

logger = logging.getLogger(__name__)

POLL_S = 0.2
WORKER_MODULE = "fly64_recon.runner.worker"


class WorkerTraceback(Exception):
    """The traceback of an error raised in a worker process, as text."""


class WorkerLostError(RuntimeError):
    """A worker process died twice while running the same group."""


AUTO = "auto"


class PoolRunner(AbstractRunner):
    """Run the pipeline's independent node groups at once in worker processes."""

    def __init__(
        self,
        max_workers: int | None = None,
        workers_per_gpu: int | str = AUTO,
        is_async: bool = False,
    ) -> None:
        """``max_workers`` caps the jobs at once (default: the slots of the machine);
        ``workers_per_gpu`` shares each visible GPU between that many jobs (``auto``:
        as many as its free memory holds, ``capacity.py``)."""
        super().__init__(is_async=is_async)
        self._async_io = is_async
        for name, value in (
            ("max_workers", max_workers),
            ("workers_per_gpu", None if workers_per_gpu == AUTO else workers_per_gpu),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{name} must be a whole number of at least 1"
                    f"{' or auto' if name == 'workers_per_gpu' else ''}, not {value!r}"
                )
        self._max_workers = max_workers
        self._workers_per_gpu = workers_per_gpu

    # AbstractRunner's abstract methods: the way a Kedro runner is written.
    def _get_executor(self, max_workers: int) -> None:
        return None

    def _run(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager | None = None,
        run_id: str | None = None,
    ) -> None:
        groups = node_groups(pipeline)
        dependencies = group_dependencies(pipeline, groups)
        slots = worker_slots(self._per_gpu(groups, catalog))
        cap = min(self._max_workers or len(slots), len(slots))
        workers = min(cap, widest_level(dependencies)) if groups else 1
        if workers <= 1:
            logger.info("One group at a time: running in this process")
            self._run_here(pipeline, catalog, hook_manager, run_id)
            return
        threads = thread_budget(workers)
        logger.info(
            "%d node groups on %d worker processes, %d thread(s) each",
            len(groups),
            workers,
            threads,
        )
        setup = _Setup(slots[:workers], threads)
        with _Workers(setup) as pool:
            _DriverLoop(
                self, pool, setup, pipeline, catalog, hook_manager, run_id, dependencies
            ).run()

    def _per_gpu(self, groups: list[NodeGroup], catalog: CatalogProtocol) -> int:
        """``workers_per_gpu``, or on a GPU machine what ``auto`` makes of it."""
        if self._workers_per_gpu != AUTO:
            return int(self._workers_per_gpu)
        gpus = visible_gpus()
        if not gpus:
            return 1
        shapes = capacity.group_shapes(groups, catalog).values()
        engine = capacity.engine_memory(catalog)
        per_job = max(
            (capacity.job_mib(shape, engine) for shape in shapes),
            default=capacity.CUDA_CONTEXT_MIB,
        )
        free = free_gpu_memory_mib(gpus)
        chosen = capacity.workers_per_gpu(
            free.values(), per_job, available_cores() // len(gpus)
        )
        logger.info(
            "workers_per_gpu auto: %d (largest job ~%.0f MiB on the GPU, free %s MiB, "
            "%d cores for %d GPU(s))",
            chosen,
            per_job,
            ", ".join(f"{mib:.0f}" for mib in free.values()) or "unknown",
            available_cores(),
            len(gpus),
        )
        return chosen

    def _run_here(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager,
        run_id: str | None,
    ) -> None:
        """The SequentialRunner's loop: every node in this process, with every hook;
        what the nodes write to stderr (pty-chi's progress bars) goes to the log."""
        load_counts = Counter(chain.from_iterable(n.inputs for n in pipeline.nodes))
        for node in pipeline.nodes:
            with stderr_logged():
                Task(
                    node=node,
                    catalog=catalog,
                    hook_manager=hook_manager,
                    is_async=self._async_io,
                    run_id=run_id,
                ).execute()
            release_datasets(node, catalog, load_counts, pipeline)


def worker_slots(per_gpu: int = 1) -> list[Slot]:
    """``per_gpu`` slots per visible GPU (each sees only its GPU), else one per core.

    GPU slots take turns over the GPUs, so that fewer jobs than slots still spread over
    every GPU.
    """
    gpus = visible_gpus()
    if gpus:
        return [
            Slot(
                f"gpu{gpu}" + (f"-{k}" if per_gpu > 1 else ""),
                {"CUDA_VISIBLE_DEVICES": gpu},
            )
            for k in range(per_gpu)
            for gpu in gpus
        ]
    return [Slot(f"cpu{i}") for i in range(available_cores())]


def thread_budget(workers: int) -> int:
    """Threads per worker: its share of the cores, at most ``OMP_NUM_THREADS`` if set."""
    share = max(1, available_cores() // workers)
    try:
        return max(1, min(share, int(os.environ["OMP_NUM_THREADS"])))
    except (KeyError, ValueError):
        return share


def start_method() -> str:
    """``forkserver`` where there is one (POSIX), else ``spawn``: never a plain fork."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of the workers.

    The fork server imports the worker's module once (every worker is forked from it
    with Kedro and the project loaded, not torch), and not ``__main__``: a script that
    starts ``kedro run`` without an ``if __name__ == "__main__"`` guard must not run
    again in it.
    """
    context = multiprocessing.get_context(start_method())
    if start_method() == "forkserver":
        context.set_forkserver_preload([WORKER_MODULE])
    return context


class _Setup:
    """The run's worker slots and threads."""

    def __init__(self, slots: list[Slot], threads: int) -> None:
        self.context = worker_context()
        self.slots = slots
        self.threads = threads
        # Nothing is ever written: the workers read end-of-file when this process ends.
        self.driver_alive, self._alive = self.context.Pipe(duplex=False)


class _Channel:
    """One worker's queue, read by a thread of this process: its log records go to
    their loggers, its ``NodeStarted`` to ``starts`` for the driver."""

    def __init__(
        self,
        context: multiprocessing.context.BaseContext,
        starts: queue.Queue,
        records: WorkerRecords,
    ) -> None:
        self.queue = context.Queue()
        self._thread = threading.Thread(
            target=self._read, args=(starts, records), daemon=True
        )
        self._thread.start()

    def _read(self, starts: queue.Queue, records: WorkerRecords) -> None:
        while (item := self.queue.get()) is not None:
            if isinstance(item, NodeStarted):
                starts.put(item)
            else:
                records.handle(item)

    def close(self) -> None:
        """Read what the (exited) worker left, then stop."""
        self.queue.put(None)
        self._thread.join()


class _Workers:
    """One single-process pool per slot: a worker that dies or loses its GPU is
    replaced alone, and the jobs on the other slots go on."""

    def __init__(self, setup: _Setup) -> None:
        self._setup = setup
        self.starts: queue.Queue[NodeStarted] = queue.Queue()
        self._records = WorkerRecords()
        self._channels: dict[str, _Channel] = {}
        self._pools = {slot.name: self._start(slot) for slot in setup.slots}

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for name, pool in self._pools.items():
            pool.shutdown(wait=True, cancel_futures=True)
            self._channels[name].close()

    def _start(self, slot: Slot) -> ProcessPoolExecutor:
        channel = _Channel(self._setup.context, self.starts, self._records)
        self._channels[slot.name] = channel
        worker = WorkerSetup(
            channel.queue,
            dict(LOGGING),
            self._setup.threads,
            self._setup.driver_alive,
        )
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._setup.context,
            initializer=start_worker,
            initargs=(worker, slot),
        )

    def submit(self, slot: Slot, task: bytes) -> Future:
        """Run a group's task on the slot's worker (a new one if it had died idle)."""
        try:
            return self._pools[slot.name].submit(run_group, task)
        except BrokenProcessPool:
            self.replace(slot, died=True)
            return self._pools[slot.name].submit(run_group, task)

    def replace(self, slot: Slot, died: bool) -> None:
        """A fresh worker process, and channel, for the slot once the old one has gone
        (it is idle or dead). A dead worker's channel is left to its thread (a daemon):
        the worker may have died holding its queue's lock."""
        self._pools[slot.name].shutdown(wait=True, cancel_futures=True)
        if not died:
            self._channels[slot.name].close()
        self._pools[slot.name] = self._start(slot)

    def how_it_ended(self, slot: Slot) -> str:
        """How the slot's dead worker ended, in words (its exit code, if known)."""
        # concurrent.futures keeps its processes in a private attribute; without it the
        # message only loses the exit code.
        processes = getattr(self._pools[slot.name], "_processes", None) or {}
        codes = [p.exitcode for p in processes.values() if p.exitcode is not None]
        if not codes:
            return "ended abruptly"
        return describe_exit(codes[0])


def describe_exit(code: int) -> str:
    """A worker's exit code in words: a signal by name, with its usual cause."""
    if code >= 0:
        return f"exited with code {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
    if name == "SIGKILL":
        return "was killed (SIGKILL: often the kernel's out-of-memory killer)"
    if name == "SIGSEGV":
        return "crashed (SIGSEGV: a fault in native code)"
    return f"was ended by signal {-code} ({name})"


@dataclass
class _Running:
    """A group on a slot."""

    group: NodeGroup
    slot: Slot


class _DriverLoop:
    """One pipeline run: submit ready groups, call node hooks, collect outputs."""

    def __init__(
        self,
        runner: PoolRunner,
        pool: _Workers,
        setup: _Setup,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager,
        run_id: str | None,
        dependencies: dict[NodeGroup, set[NodeGroup]],
    ) -> None:
        self.runner = runner
        self.pool = pool
        self.setup = setup
        self.pipeline = pipeline
        self.catalog = catalog
        self.hooks = NodeHooks(
            hook_manager.hook, catalog, run_id, runner._async_io, "PoolRunner"
        )
        self.dependencies = dependencies
        self.nodes = {node.name: node for node in pipeline.nodes}
        self.load_counts = Counter(
            chain.from_iterable(n.inputs for n in pipeline.nodes)
        )
        self.todo = list(dependencies)  # in the pipeline's topological order
        self.done: set[NodeGroup] = set()
        self.running: dict[Future, _Running] = {}
        self.error: BaseException | None = None
        self.patterns: dict[NodeGroup, int] = {}  # of a ready group's input file
        self.current: dict[str, str] = {}  # worker name -> the node it last started
        self.lost: dict[NodeGroup, LostNode] = {}  # groups to run again, once

    def run(self) -> None:
        """Until every group has finished, or a node error and the running ones."""
        while (self.todo and self.error is None) or self.running:
            if self.error is None:
                self._submit_ready()
            finished, _ = wait(
                list(self.running), timeout=POLL_S, return_when=FIRST_COMPLETED
            )
            self._announce_starts()
            for future in finished:
                self._collect(self.running.pop(future), future)
        if self.error is not None:
            raise self.error

    def _submit_ready(self) -> None:
        busy = {running.slot.name for running in self.running.values()}
        free = [slot for slot in self.setup.slots if slot.name not in busy]
        ready = self._longest_first(
            [g for g in self.todo if self.dependencies[g] <= self.done]
        )
        if not ready and not self.running:
            names = [group.name for group in self.todo]
            raise RuntimeError(
                f"no node group can start, though these have not run: {names}"
            )
        for group, slot in zip(ready, free, strict=False):
            self.todo.remove(group)
            task = group_task(
                group.nodes,
                task_catalog(group.nodes, self.catalog),
                self.runner._async_io,
                self._returned(group),
                self.lost.get(group),
            )
            self.running[self.pool.submit(slot, task)] = _Running(group, slot)

    def _longest_first(self, ready: list[NodeGroup]) -> list[NodeGroup]:
        """The ready groups, those with the most patterns to reconstruct first, then
        the higher dose (the object rule runs it longer: docs/metrics.md), then the
        order of the pipeline; a group's input is read once, when it is ready (a study
        simulated in the same run is then on disk)."""
        unknown = [group for group in ready if group not in self.patterns]
        for group, shape in capacity.group_shapes(unknown, self.catalog).items():
            self.patterns[group] = shape.patterns
        for group in unknown:
            self.patterns.setdefault(group, 0)
        return start_order(ready, self.patterns)

    def _returned(self, group: NodeGroup) -> frozenset[str]:
        """The outputs that come back: all but MemoryDatasets used only in the group."""
        inside = set(group.nodes)
        outputs = set(chain.from_iterable(node.outputs for node in group.nodes))
        return frozenset(
            name
            for name in outputs
            if not is_memory(self.catalog, name)
            or name in self.pipeline.outputs()
            or any(
                name in node.inputs
                for node in self.pipeline.nodes
                if node not in inside
            )
        )

    def _announce_starts(self) -> None:
        while True:
            try:
                started = self.pool.starts.get_nowait()
            except queue.Empty:
                return
            self.current[started.worker] = started.node
            self.hooks.before(self.nodes[started.node])

    def _collect(self, running: _Running, future: Future) -> None:
        try:
            outcome = future.result()
        except BrokenProcessPool:
            self._announce_starts()  # the dead worker's last start may still be queued
            self._worker_died(running)
            return
        if outcome.lost_gpu is not None:
            logger.warning(
                "Worker %s can no longer use its GPU (%s): replaced by a new one",
                running.slot.name,
                outcome.lost_gpu,
            )
            self.pool.replace(running.slot, died=False)
        self._finish(running.group, outcome)

    def _worker_died(self, running: _Running) -> None:
        """Replace the worker; run its group again, once, its job marked as lost."""
        group, slot = running.group, running.slot
        node = self.current.pop(slot.name, None)
        if node not in {n.name for n in group.nodes}:  # died before its first node
            node = group.nodes[0].name
        reason = (
            f"the worker process running it ({slot.name}) "
            f"{self.pool.how_it_ended(slot)} during {node}; it was replaced"
        )
        self.pool.replace(slot, died=True)
        if group in self.lost:
            self._fail(self.nodes[node], WorkerLostError(f"{group.name}: {reason}"))
            return
        logger.warning("%s: %s; running the job's group again", group.name, reason)
        self.lost[group] = LostNode(node, reason)
        self.todo.insert(0, group)

    def _finish(self, group: NodeGroup, outcome: GroupOutcome) -> None:
        for name, outputs in outcome.finished:
            self._node_done(self.nodes[name], outputs, outcome.worker)
        if outcome.failed is not None:
            error = outcome.error
            error.__cause__ = WorkerTraceback(outcome.traceback)
            self._fail(self.nodes[outcome.failed], error, outcome.worker)
            return
        self.done.add(group)

    def _node_done(self, node: Node, outputs: dict[str, Any], worker: str) -> None:
        self.hooks.after(node, outputs)
        logger.info("Completed node: %s (on worker %s)", node.name, worker)
        release_datasets(node, self.catalog, self.load_counts, self.pipeline)

    def _fail(self, node: Node, error: BaseException, worker: str = "") -> None:
        self.hooks.error(node, error)
        if self.error is None:
            self.error = error
            logger.warning(
                "%s failed%s; no other node starts (%d groups have not run): run the "
                "same command again once it is fixed (the reconstructions already made "
                "are cached)",
                node.name,
                f" on worker {worker}" if worker else "",
                len(self.todo),
            )


def start_order(
    ready: list[NodeGroup], patterns: dict[NodeGroup, int]
) -> list[NodeGroup]:
    """Most patterns first; among equals the higher dose, then the pipeline's order."""
    return sorted(ready, key=lambda group: (-patterns[group], -_dose(group)))


def _dose(group: NodeGroup) -> float:
    """The dose of a job's group (``dose_1e5.dense.test``), 0 for any other group."""
    try:
        return Job.from_namespace(group.name).dose
    except StudyDesignError:
        return 0.0
