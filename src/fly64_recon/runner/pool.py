"""The project's default runner: independent jobs at once, in a pool of worker processes.

``kedro run`` runs with it unless ``--runner`` says otherwise (``cli.py``)::

    kedro run                                   # every core
    kedro run --runner-params max_workers=4     # at most 4 jobs at once
    kedro run --runner SequentialRunner         # one node after the other, in-process

The connected nodes of one namespace run as one task (``groups.py``): a job runs in one
worker from its input file to its manifest entry, so its validated arrays never cross
processes. As many groups run at once as there are worker slots: one per core, or
``workers_per_gpu`` per visible GPU (each worker sees only its GPU), and never more than
the pipeline has groups to run side by side. Each worker limits its numerical libraries
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
- Worker log records (the jobs' epochs included) come to this process through a queue
  and go to its loggers (``logs.records_from``).
- A node that raises stops the run, as in a sequential run: no group starts after it,
  the groups already running finish, then the error is raised.

Only Kedro's public API is used, but for overriding ``AbstractRunner``'s abstract
``_run`` and ``_get_executor``, the way every Kedro runner is written.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from itertools import chain
from typing import Any

from kedro.framework.project import LOGGING
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner, Task
from pluggy import PluginManager

from fly64_recon.devices import visible_gpus
from fly64_recon.logs import records_from, stderr_logged
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
    Slot,
    WorkerSetup,
    group_task,
    run_group,
    start_worker,
)

logger = logging.getLogger(__name__)

POLL_S = 0.2
WORKER_MODULE = "fly64_recon.runner.worker"


class WorkerTraceback(Exception):
    """The traceback of an error raised in a worker process, as text."""


class PoolRunner(AbstractRunner):
    """Run the pipeline's independent node groups at once in worker processes."""

    def __init__(
        self,
        max_workers: int | None = None,
        workers_per_gpu: int = 1,
        is_async: bool = False,
    ) -> None:
        """``max_workers`` caps the jobs at once (default: the slots of the machine);
        ``workers_per_gpu`` > 1 shares each visible GPU between that many jobs."""
        super().__init__(is_async=is_async)
        self._async_io = is_async
        for name, value in (
            ("max_workers", max_workers),
            ("workers_per_gpu", workers_per_gpu),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"{name} must be a whole number of at least 1, not {value!r}"
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
        slots = worker_slots(self._workers_per_gpu)
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
        with setup.pool() as pool, records_from(setup.logs):
            _DriverLoop(
                self, pool, setup, pipeline, catalog, hook_manager, run_id, dependencies
            ).run()

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
    """The pool's processes and queues for one run."""

    def __init__(self, slots: list[Slot], threads: int) -> None:
        self.context = worker_context()
        self.slots = slots
        self.starts = self.context.Queue()
        self.logs = self.context.Queue()
        self.threads = threads

    @contextmanager
    def pool(self) -> Iterator[ProcessPoolExecutor]:
        """The worker processes; they take their slots as they start."""
        slots = self.context.Queue()
        for slot in self.slots:
            slots.put(slot)
        setup = WorkerSetup(slots, self.starts, self.logs, dict(LOGGING), self.threads)
        with ProcessPoolExecutor(
            max_workers=len(self.slots),
            mp_context=self.context,
            initializer=start_worker,
            initargs=(setup,),
        ) as pool:
            yield pool


class _DriverLoop:
    """One pipeline run: submit ready groups, call node hooks, collect outputs."""

    def __init__(
        self,
        runner: PoolRunner,
        pool: ProcessPoolExecutor,
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
        self.running: dict[Future, NodeGroup] = {}
        self.error: BaseException | None = None

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
                self._finish(self.running.pop(future), future.result())
        if self.error is not None:
            raise self.error

    def _submit_ready(self) -> None:
        free = len(self.setup.slots) - len(self.running)
        ready = [g for g in self.todo if self.dependencies[g] <= self.done][:free]
        if not ready and not self.running:
            names = [group.name for group in self.todo]
            raise RuntimeError(
                f"no node group can start, though these have not run: {names}"
            )
        for group in ready:
            self.todo.remove(group)
            task = group_task(
                group.nodes,
                task_catalog(group.nodes, self.catalog),
                self.runner._async_io,
                self._returned(group),
            )
            future = self.pool.submit(run_group, task)
            self.running[future] = group

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
                _worker, name = self.setup.starts.get_nowait()
            except queue.Empty:
                return
            self.hooks.before(self.nodes[name])

    def _finish(self, group: NodeGroup, outcome: GroupOutcome) -> None:
        for name, outputs in outcome.finished:
            self._node_done(self.nodes[name], outputs, outcome.worker)
        if outcome.failed is not None:
            self._fail(self.nodes[outcome.failed], outcome)
            return
        self.done.add(group)

    def _node_done(self, node: Node, outputs: dict[str, Any], worker: str) -> None:
        self.hooks.after(node, outputs)
        logger.info("Completed node: %s (on worker %s)", node.name, worker)
        release_datasets(node, self.catalog, self.load_counts, self.pipeline)

    def _fail(self, node: Node, outcome: GroupOutcome) -> None:
        error = outcome.error
        error.__cause__ = WorkerTraceback(outcome.traceback)
        self.hooks.error(node, error)
        if self.error is None:
            self.error = error
            logger.warning(
                "%s failed on worker %s; no other node starts (%d groups have not "
                "run): run the same command again once it is fixed (the "
                "reconstructions already made are cached)",
                node.name,
                outcome.worker,
                len(self.todo),
            )
