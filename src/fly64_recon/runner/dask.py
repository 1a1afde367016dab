"""Run the study on a Dask cluster: one node per task, one task per worker process.

Kedro's documented Dask recipe (``DaskRunner``), brought up to Kedro 1.x's
``AbstractRunner``::

    kedro run --env dask --runner fly64_recon.runner.DaskRunner \\
        --runner-params address=tcp://scheduler:8786

The scheduler's address comes from ``--runner-params``, else from Dask's
``scheduler-address`` setting (e.g. ``DASK_SCHEDULER_ADDRESS``); without one the
runner starts a local cluster: one worker process per visible GPU (``workers_per_gpu``
to share one), each seeing only its own (``CUDA_VISIBLE_DEVICES``), or ``n_workers``
CPU workers. Every worker runs one task at a time, because pty-chi changes
process-wide torch state.

Unlike the recipe, a node is submitted once the nodes it depends on have finished
rather than chained to their futures: for as long as a client holds the future of a
finished task whose result was on a worker that died, Dask computes it again, so chained
futures would rerun finished jobs after a lost worker.

Where things run:

- A worker loads a node's inputs, runs it and saves its outputs through the catalog;
  persisted datasets need storage every worker sees (``conf/dask`` persists the data
  that crosses node boundaries on it).
- The driver (the ``kedro run`` process) calls the project's node hooks when a worker
  reports that a node started and when it finished. The task sends the node's outputs
  back, so ``after_node_run`` sees them as under the SequentialRunner (``inputs`` stay
  on the worker and reach the hooks empty). MemoryDatasets live in the driver, as in a
  sequential run, and travel to the worker inside the task of the node that loads them.
- Dataset hooks do not run: their state would be spread over the workers.
- A job records the worker it ran on (``record.running_on``).

A worker that dies mid-task is replaced and its task runs again elsewhere, up to Dask's
``distributed.scheduler.allowed-failures`` times. A node that raises is retried
``retries`` times (default 0: an error stops the run, as in a sequential run).

Only Kedro's public API is used: a node runs by ``Node.run`` between the catalog's
``load`` and ``save``, and the session's hook manager is called as pluggy's. The one
exception is the way Kedro's runners are written: ``AbstractRunner.run`` calls the
abstract ``_run`` (and ``_get_executor``), which a runner must override, as Kedro's
own Dask recipe does (tests/test_dask_runner.py checks they are still those two).
"""

from __future__ import annotations

import logging
import queue
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import chain
from typing import Any

import dask
from distributed import Client, Future, Nanny, Scheduler, SpecCluster, get_worker, wait
from distributed.system import MEMORY_LIMIT
from kedro.framework.project import LOGGING, configure_logging
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner
from pluggy import PluginManager

from fly64_recon.devices import visible_gpus
from fly64_recon.record import running_on
from fly64_recon.runner.common import (
    NodeHooks,
    fast_malloc,
    memory_handoffs,
    release_datasets,
    run_node,
    task_catalog,
)

logger = logging.getLogger(__name__)

START_TOPIC = "fly64_recon.node-started"
LOCAL_WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
DEFAULT_CPU_WORKERS = 2
WORKER_WAIT_S = 120
POLL_S = 0.5


@dataclass(frozen=True)
class NodeResult:
    """What a task sends back to the driver: the node's outputs and where it ran."""

    outputs: dict[str, Any]
    worker: str


def run_node_task(
    node: Node, catalog: CatalogProtocol, is_async: bool, logging_config: dict[str, Any]
) -> NodeResult:
    """Run one node in a Dask worker, logging as the driver does; jobs record the worker."""
    fast_malloc()
    configure_logging(logging_config)
    worker = get_worker()
    name = str(worker.name)
    # The scheduler stamps the worker's address as "worker"; the name is ours.
    worker.log_event(START_TOPIC, {"node": node.name, "name": name})
    with running_on(name):
        outputs = run_node(node, catalog, is_async)
    return NodeResult(outputs, name)


class DaskRunner(AbstractRunner):
    """Submit each node to a Dask cluster once the nodes it depends on have finished."""

    def __init__(
        self,
        address: str | None = None,
        n_workers: int | None = None,
        workers_per_gpu: int = 1,
        retries: int = 0,
        is_async: bool = False,
    ) -> None:
        """Connect to ``address`` at run time, or start local workers.

        ``n_workers`` caps the local GPUs used (or sets the CPU workers);
        ``workers_per_gpu`` > 1 shares each GPU between jobs, so one job's reading,
        validating and plotting overlaps another's reconstruction.
        """
        super().__init__(is_async=is_async)
        if not isinstance(workers_per_gpu, int) or workers_per_gpu < 1:
            raise ValueError(
                f"workers_per_gpu must be at least 1, not {workers_per_gpu!r} "
                "(a whole number of workers sharing each GPU)"
            )
        self._address = address
        self._n_workers = n_workers
        self._workers_per_gpu = workers_per_gpu
        self._retries = retries
        self._async_io = is_async

    # AbstractRunner's abstract methods: the way a Kedro runner is written (see above).
    def _get_executor(self, max_workers: int) -> None:
        return None

    def _run(
        self,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager | None = None,
        run_id: str | None = None,
    ) -> None:
        with self._client() as client:
            _DriverLoop(self, client, pipeline, catalog, hook_manager, run_id).run()

    @contextmanager
    def _client(self) -> Iterator[Client]:
        address = self._address or dask.config.get("scheduler-address", None)
        if address:
            with Client(address) as client:
                yield self._ready(client)
            return
        cluster = local_cluster(self._n_workers, self._workers_per_gpu)
        with cluster, Client(cluster) as client:
            yield self._ready(client)

    def _ready(self, client: Client) -> Client:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        logger.info(
            "Dask scheduler %s with %d worker(s); dashboard %s",
            client.scheduler.address,
            len(client.scheduler_info(n_workers=-1)["workers"]),
            client.dashboard_link,
        )
        return client


class _DriverLoop:
    """One pipeline run: submit ready nodes, call node hooks, collect outputs."""

    def __init__(
        self,
        runner: DaskRunner,
        client: Client,
        pipeline: Pipeline,
        catalog: CatalogProtocol,
        hook_manager: PluginManager,
        run_id: str | None,
    ) -> None:
        self.runner = runner
        self.client = client
        self.pipeline = pipeline
        self.catalog = catalog
        self.hooks = NodeHooks(
            hook_manager.hook, catalog, run_id, runner._async_io, "DaskRunner"
        )
        self.resources = task_resources(client)
        self.levels = {
            node: level
            for level, group in enumerate(pipeline.grouped_nodes)
            for node in group
        }
        self.load_counts = Counter(
            chain.from_iterable(n.inputs for n in pipeline.nodes)
        )
        self.nodes = {node.name: node for node in pipeline.nodes}
        self.todo = set(pipeline.nodes)
        self.done: set[Node] = set()
        self.running: dict[Future, Node] = {}
        self.starts: queue.SimpleQueue[dict[str, str]] = queue.SimpleQueue()
        handoffs = memory_handoffs(pipeline, catalog)
        if handoffs:
            logger.info(
                "These MemoryDatasets pass from node to node through the driver: %s",
                ", ".join(handoffs),
            )

    def run(self) -> None:
        """Until every node has finished; the first node error stops the run."""
        self.client.subscribe_topic(
            START_TOPIC, lambda event: self.starts.put(event[1])
        )
        while self.todo or self.running:
            self._submit_ready()
            with suppress(TimeoutError):
                wait(list(self.running), timeout=POLL_S, return_when="FIRST_COMPLETED")
            self._announce_starts()
            for future in [f for f in self.running if f.done()]:
                self._finish(self.running.pop(future), future)

    def _submit_ready(self) -> None:
        dependencies = self.pipeline.node_dependencies
        ready = {node for node in self.todo if dependencies[node] <= self.done}
        if not ready and not self.running:
            names = sorted(node.name for node in self.todo)
            raise RuntimeError(f"no node can start, though these have not run: {names}")
        for node in ready:
            future = self.client.submit(
                run_node_task,
                node,
                task_catalog([node], self.catalog),
                self.runner._async_io,
                dict(LOGGING),
                key=f"{node.name}-{uuid.uuid4().hex[:8]}",
                resources=self.resources,
                retries=self.runner._retries,
                # Breadth first, as the SequentialRunner's topological order.
                priority=-self.levels[node],
                pure=False,
            )
            self.running[future] = node
        self.todo -= ready

    def _announce_starts(self) -> None:
        while not self.starts.empty():
            event = self.starts.get()
            node = self.nodes[event["node"]]
            if node in self.done:
                continue
            again = "again " if node.name in self.hooks.announced else ""
            logger.info(
                "Started %snode %s on worker %s", again, node.name, event["name"]
            )
            self.hooks.before(node)

    def _finish(self, node: Node, future: Future) -> None:
        try:
            result: NodeResult = future.result()
        except Exception as error:
            self._fail(node, error)
            raise
        finally:
            future.release()
        self.hooks.after(node, result.outputs)
        self.done.add(node)
        logger.info("Completed node: %s (on worker %s)", node.name, result.worker)
        logger.info(
            "Completed %d out of %d tasks", len(self.done), len(self.pipeline.nodes)
        )
        release_datasets(node, self.catalog, self.load_counts, self.pipeline)

    def _fail(self, node: Node, error: BaseException) -> None:
        self.client.cancel(list(self.running))
        self.hooks.error(node, error)
        logger.warning(
            "%d of %d nodes have not run; run the same command again (the "
            "reconstructions already made are cached)",
            len(self.pipeline.nodes) - len(self.done),
            len(self.pipeline.nodes),
        )


def task_resources(client: Client) -> dict[str, float] | None:
    """A ``GPU`` slot per task where every worker has GPUs; else one thread a worker."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if workers and all("GPU" in w.get("resources", {}) for w in workers):
        return {"GPU": 1}
    crowded = [w["name"] for w in workers if w["nthreads"] > 1]
    if crowded:
        raise RuntimeError(
            f"Dask workers {crowded} run several tasks at once, but a pty-chi job "
            "changes process-wide torch state: start workers with --nthreads 1, or "
            "give every worker --resources GPU=1"
        )
    return None


def local_cluster(n_workers: int | None = None, per_gpu: int = 1) -> SpecCluster:
    """A scheduler and the workers of :func:`worker_specs` on this machine.

    Its workers start without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see
    :func:`~fly64_recon.runner.common.fast_malloc`, which every task also calls, for
    workers started by ``dask worker``) and without the statistical profiler, which
    costs a one-thread worker about 6% of its core.
    """
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1"}}
    # A Nanny reads its environment when it is made, and sets it in this process too.
    with dask.config.set(LOCAL_WORKER_CONFIG):
        return SpecCluster(
            workers=worker_specs(n_workers, per_gpu),
            scheduler=scheduler,
            silence_logs=logging.WARNING,
        )


def worker_specs(
    n_workers: int | None = None, per_gpu: int = 1
) -> dict[str, dict[str, Any]]:
    """``per_gpu`` single-threaded workers per visible GPU (at most ``n_workers``
    GPUs), else ``n_workers`` CPU workers."""
    gpus = visible_gpus()[:n_workers]
    if gpus:
        count = len(gpus) * per_gpu
        return {
            f"gpu{gpu}" + (f"-{k}" if per_gpu > 1 else ""): _nanny(
                count, {"CUDA_VISIBLE_DEVICES": gpu}, {"GPU": 1}
            )
            for gpu in gpus
            for k in range(per_gpu)
        }
    count = n_workers or DEFAULT_CPU_WORKERS
    if per_gpu > 1:
        logger.warning(
            "No GPU is visible, so workers_per_gpu=%d does nothing: %d CPU workers "
            "(n_workers sets how many)",
            per_gpu,
            count,
        )
    return {f"cpu{i}": _nanny(count, {}, {}) for i in range(count)}


def _nanny(
    count: int, env: dict[str, str], resources: dict[str, float]
) -> dict[str, Any]:
    options = {
        "nthreads": 1,
        "host": "127.0.0.1",
        "memory_limit": MEMORY_LIMIT // count,
        "env": env,
        "resources": resources,
    }
    return {"cls": Nanny, "options": options}
