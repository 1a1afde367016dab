"""How many jobs one GPU holds at once, and how long each job is, from what its input
file's headers say before any job runs.

A job's GPU memory, LSQML's (MiB; the factors fitted to the peak resident memory of
one job on the CPU against its patterns n, their side N, the batch b and the object
H x W: ``benchmarks/job_memory.py``, 2026-12-04, docs/performance.md)::

    CUDA_CONTEXT_MIB                          the process's CUDA context and kernels
    + n N^2 4 B                               the patterns, when kept on the GPU
    + BATCH_COPIES  b modes N^2 8 B           a batch's waves, FFTs and updates
    + OBJECT_COPIES H W 8 B                   the object, its update and illumination
    + n PATTERN_KIB KiB                       per-position state
    + FIXED_MIB

``workers_per_gpu`` is then as many as the free memory holds (with a margin), at most
one per core the GPUs' share of the machine has (a GPU job keeps a core busy issuing
its kernels), and at most ``MAX_WORKERS_PER_GPU``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kedro.io import CatalogProtocol

from fly64_recon.datasets.npz import NPZSourceDataset
from fly64_recon.runner.groups import NodeGroup

logger = logging.getLogger(__name__)

MAX_WORKERS_PER_GPU = 8
CUDA_CONTEXT_MIB = 500.0
BATCH_COPIES = 30
OBJECT_COPIES = 12
PATTERN_KIB = 10.0
FIXED_MIB = 32.0
FREE_MEMORY_MARGIN = 0.9  # of the free memory, the rest for fragmentation and others
ENGINE_PARAMETERS = "params:ptychi_baseline"


@dataclass(frozen=True)
class JobShape:
    """A job's sizes, from its input file: patterns, their side N, object pixels."""

    patterns: int
    size: int
    object_pixels: int


@dataclass(frozen=True)
class EngineMemory:
    """What of the engine's parameters sets a job's memory."""

    batch_size: int
    probe_modes: int
    patterns_on_gpu: bool

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EngineMemory:
        """From ``ptychi_baseline``'s parameters, without importing pty-chi: the chosen
        engine's batch size (every position at once when it has none) and whether the
        patterns are kept on the GPU (pty-chi's default: no)."""
        engine = params.get("engine", "LSQML").lower()
        options = params.get(engine) or {}
        batch = (options.get("reconstructor_options") or {}).get("batch_size")
        on_gpu = (options.get("data_options") or {}).get("save_data_on_device", False)
        return cls(batch or 0, params.get("probe_modes", 1), bool(on_gpu))


def job_mib(shape: JobShape, engine: EngineMemory) -> float:
    """The estimate above of one job's GPU memory, in MiB."""
    batch = engine.batch_size or shape.patterns
    wave = shape.size**2 * 8 / 2**20
    patterns = (
        shape.patterns * shape.size**2 * 4 / 2**20 if engine.patterns_on_gpu else 0
    )
    return (
        CUDA_CONTEXT_MIB
        + patterns
        + BATCH_COPIES * batch * engine.probe_modes * wave
        + OBJECT_COPIES * shape.object_pixels * 8 / 2**20
        + shape.patterns * PATTERN_KIB / 2**10
        + FIXED_MIB
    )


def workers_per_gpu(
    free_mib: Iterable[float], per_job_mib: float, cores_per_gpu: int
) -> int:
    """Jobs at once on each GPU: what the GPU with the least free memory holds, at
    most a core each, at most ``MAX_WORKERS_PER_GPU``, at least one."""
    fits = [math.floor(FREE_MEMORY_MARGIN * free / per_job_mib) for free in free_mib]
    return max(1, min([MAX_WORKERS_PER_GPU, cores_per_gpu, *fits]))


def group_shapes(
    groups: Iterable[NodeGroup], catalog: CatalogProtocol
) -> dict[NodeGroup, JobShape]:
    """The groups that read a study file, with its shape; a file not (yet) there, or
    unreadable, has none (its job says why when it runs)."""
    shapes = {}
    for group in groups:
        shape = _input_shape(group, catalog)
        if shape is not None:
            shapes[group] = shape
    return shapes


def _input_shape(group: NodeGroup, catalog: CatalogProtocol) -> JobShape | None:
    for name in dict.fromkeys(n for node in group.nodes for n in node.inputs):
        dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        if not isinstance(dataset, NPZSourceDataset):
            continue
        shapes = dataset.load().shapes(("diffraction", "objectGuess"))
        if (
            len(shapes.get("diffraction", ())) == 3
            and len(shapes.get("objectGuess", ())) == 2
        ):
            patterns, size, _ = shapes["diffraction"]
            height, width = shapes["objectGuess"]
            return JobShape(patterns, size, height * width)
    return None


def engine_memory(catalog: CatalogProtocol) -> EngineMemory:
    """The engine's memory parameters of this run (the defaults without any)."""
    params = catalog.load(ENGINE_PARAMETERS) if ENGINE_PARAMETERS in catalog else {}
    return EngineMemory.from_params(params)
