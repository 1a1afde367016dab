"""The worker side of the process pool: set a worker up once, then run node groups.

A worker process has one slot (its name, and its GPU where there are GPUs), limits
its threads to its share of the cores, sends its log records through its own queue
(its channel) to the ``kedro run`` process, and runs each group it is given node by
node with Kedro's ``Node.run`` between the catalog's ``load`` and ``save``. Before each
node it says so on the channel (a ``NodeStarted``), where the driver turns it into
``before_node_run``. After each group it says
whether it can still use its GPU (``devices.lost_context``): if not, the driver
replaces it.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kedro.io import DataCatalog
from kedro.pipeline.node import Node

from fly64_recon import devices
from fly64_recon.display.logs import forward_logs, install_warning_filters
from fly64_recon.record import after_lost_worker, running_on
from fly64_recon.runner.common import fast_malloc, run_node

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Slot:
    """One worker's place: its name (``cpu0``, ``gpu1-2``) and its environment."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker gets when it starts."""

    channel: Any  # its multiprocessing queue: log records and NodeStarted
    logging_config: Mapping[str, Any]
    threads: int
    # The read end of a pipe whose only write end the ``kedro run`` process holds: it
    # reads end-of-file the moment that process is gone, however it ended.
    driver_alive: Any


@dataclass(frozen=True)
class GroupOutcome:
    """A group's run: each finished node's outputs for the driver; the error if any;
    why the worker can no longer use its GPU, if it cannot."""

    worker: str
    finished: list[tuple[str, dict[str, Any]]]
    failed: str | None = None
    error: BaseException | None = None
    traceback: str | None = None
    lost_gpu: str | None = None


@dataclass(frozen=True)
class NodeStarted:
    """A worker's message: it starts a node."""

    worker: str
    node: str


@dataclass(frozen=True)
class LostNode:
    """The node a group was running when its worker died, and how it died."""

    name: str
    reason: str


class _Worker:
    """This process's slot name and channel, set once by :func:`start_worker`."""

    name = "local"
    channel: Any = None


def start_worker(setup: WorkerSetup, slot: Slot) -> None:
    """The worker's initializer: slot, threads, malloc, logging; before any import of
    torch."""
    fast_malloc()
    end_with_the_driver(setup.driver_alive)
    os.environ.update(slot.env)
    limit_threads(setup.threads)
    forward_logs(setup.channel, setup.logging_config)
    install_warning_filters()
    _Worker.name, _Worker.channel = slot.name, setup.channel


def end_with_the_driver(driver_alive: Any) -> None:
    """A watch that kills this worker when the ``kedro run`` process is gone (killed,
    crashed): a worker must not finish a job nobody waits for, then hang. Its writes
    are atomic, so a job it was writing leaves no file a later run takes as complete."""

    def watch() -> None:
        try:
            driver_alive.recv_bytes()
        except (EOFError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def limit_threads(threads: int) -> None:
    """Run this process's numerical libraries with ``threads`` threads."""
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    if "torch" in sys.modules:  # imported before the worker started (a preload)
        sys.modules["torch"].set_num_threads(threads)


def run_group(task: bytes) -> GroupOutcome:
    """Run a pickled group's nodes in order; its outputs named in ``keep`` go back.

    ``task`` is ``(nodes, catalog, is_async, keep, lost)`` pickled by the standard
    pickler: multiprocessing's own drops the attributes of a ``functools.partial``, and
    with them the name that ``pipelines.bind`` gives a node's function. A node that
    raises ends the group: the outcome names it, with the error and its traceback as
    text (the traceback object does not cross processes). ``lost`` (a ``LostNode``)
    marks a group run again after its worker died: that node runs under
    ``record.after_lost_worker``, so a job records its failure instead of running again.
    """
    nodes, catalog, is_async, keep, lost = pickle.loads(task)  # noqa: S301 - driver's
    finished: list[tuple[str, dict[str, Any]]] = []
    for node in nodes:
        _Worker.channel.put(NodeStarted(_Worker.name, node.name))
        died = lost.reason if lost is not None and lost.name == node.name else None
        try:
            with running_on(_Worker.name), after_lost_worker(died):
                outputs = run_node(node, catalog, is_async)
        except Exception as error:  # noqa: BLE001 - the driver raises it, as Kedro would
            devices.note_if_lost(error)
            return GroupOutcome(
                _Worker.name,
                finished,
                node.name,
                error,
                traceback.format_exc(),
                devices.lost_context(),
            )
        finished.append((node.name, {k: v for k, v in outputs.items() if k in keep}))
    return GroupOutcome(_Worker.name, finished, lost_gpu=devices.lost_context())


def group_task(
    nodes: tuple[Node, ...],
    catalog: DataCatalog,
    is_async: bool,
    keep: frozenset[str],
    lost: LostNode | None = None,
) -> bytes:
    """What :func:`run_group` takes, pickled in the driver."""
    return pickle.dumps((nodes, catalog, is_async, keep, lost), pickle.HIGHEST_PROTOCOL)
