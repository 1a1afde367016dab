"""What the project's runners share: one node run without hooks, the node hooks called
for it in the ``kedro run`` process, dataset release, the catalog a task carries, the
machine's cores and GPUs, and glibc's malloc tuning.

Nothing here imports Dask or torch at module level: the default runner must not pay
for either before a job needs it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from kedro.io import CatalogProtocol, DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

logger = logging.getLogger(__name__)

# glibc's mallopt(3) parameters, and the values its dynamic rule would reach.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # what the dynamic rule sets with it


def run_node(
    node: Node, catalog: CatalogProtocol, is_async: bool = False
) -> dict[str, Any]:
    """Kedro's run of one node, without hooks: load its inputs, run it, save its outputs.

    With ``is_async`` the inputs load and the outputs save in threads, as in Kedro.
    """
    with ThreadPoolExecutor() if is_async else nullcontext() as pool:
        each = pool.map if pool else map
        loaded = each(catalog.load, node.inputs)
        outputs = node.run(dict(zip(node.inputs, loaded, strict=True)))
        list(each(catalog.save, outputs, outputs.values()))
    for name in node.confirms:
        catalog.confirm(name)
    return outputs


@dataclass
class NodeHooks:
    """A run's node hooks, called in the ``kedro run`` process for nodes that run in
    another (a worker): with no inputs, which load where the node runs, and
    ``before_node_run`` once per node, when it starts or at the latest when it ends.
    Outputs kept in memory (MemoryDatasets) are saved to the run's catalog here."""

    hooks: Any  # the hook manager's relay, ``hook_manager.hook``
    catalog: CatalogProtocol
    run_id: str | None
    is_async: bool
    runner: str  # the runner's name, for the one warning
    announced: set[str] = field(default_factory=set)

    def before(self, node: Node) -> None:
        """``before_node_run``, unless this node had it already."""
        if node.name in self.announced:
            return
        self.announced.add(node.name)
        responses = self.hooks.before_node_run(
            node=node,
            catalog=self.catalog,
            inputs={},
            is_async=self.is_async,
            run_id=self.run_id,
        )
        if any(responses or []):
            logger.warning(
                "before_node_run hooks returned inputs for %s: the %s loads inputs "
                "where the node runs and cannot replace them",
                node.name,
                self.runner,
            )

    def after(self, node: Node, outputs: dict[str, Any]) -> None:
        """``after_node_run``; the outputs that live in memory saved to the catalog."""
        self.before(node)
        self.hooks.after_node_run(
            node=node,
            catalog=self.catalog,
            inputs={},
            outputs=outputs,
            is_async=self.is_async,
            run_id=self.run_id,
        )
        for name, data in outputs.items():
            if is_memory(self.catalog, name):
                self.catalog.save(name, data)

    def error(self, node: Node, error: BaseException) -> None:
        """``on_node_error``."""
        self.before(node)
        self.hooks.on_node_error(
            error=error,
            node=node,
            catalog=self.catalog,
            inputs={},
            is_async=self.is_async,
            run_id=self.run_id,
        )


def release_datasets(
    node: Node, catalog: CatalogProtocol, load_counts: Counter, pipeline: Pipeline
) -> None:
    """Release what no node still to run will load, as Kedro's runners do."""
    for name in node.inputs:
        load_counts[name] -= 1
        if load_counts[name] < 1 and name not in pipeline.inputs():
            catalog.release(name)
    for name in node.outputs:
        if load_counts[name] < 1 and name not in pipeline.outputs():
            catalog.release(name)


def is_memory(catalog: CatalogProtocol, name: str) -> bool:
    """Whether ``name`` lives in the run's memory (a MemoryDataset) rather than storage."""
    return isinstance(
        catalog.get(name, fallback_to_runtime_pattern=True), MemoryDataset
    )


def memory_handoffs(pipeline: Pipeline, catalog: CatalogProtocol) -> list[str]:
    """The MemoryDatasets that one node of ``pipeline`` saves and another loads."""
    saved = set(chain.from_iterable(node.outputs for node in pipeline.nodes))
    loaded = set(chain.from_iterable(node.inputs for node in pipeline.nodes))
    return sorted(name for name in saved & loaded if is_memory(catalog, name))


def task_catalog(nodes: Iterable[Node], catalog: CatalogProtocol) -> DataCatalog:
    """The datasets some nodes load and save, MemoryDatasets with their data."""
    names = dict.fromkeys(
        chain.from_iterable([*node.inputs, *node.outputs] for node in nodes)
    )
    return DataCatalog(
        datasets={
            name: catalog.get(name, fallback_to_runtime_pattern=True) for name in names
        }
    )


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@functools.cache
def fast_malloc() -> None:
    """Give this process glibc's fast malloc settings back, whatever its environment.

    Dask's Nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_`` set, and setting any
    of glibc's thresholds turns off its dynamic mmap threshold: every torch CPU tensor
    over 128 KiB is then a fresh mmap that the kernel zero-fills, which made an LSQML
    job 3x slower per epoch on a Dask worker (docs/performance.md). Fixing the mmap
    threshold at the dynamic rule's ceiling (and the trim threshold at twice that, as
    the rule would) restores the speed. Once per process; nothing off glibc's Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): the variable means nothing there
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
