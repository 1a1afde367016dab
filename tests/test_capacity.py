"""How many jobs share a GPU by default, and which jobs start first."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline

from fly64_recon.datasets import NPZDataset, NPZSourceDataset
from fly64_recon.runner import PoolRunner, capacity, pool
from fly64_recon.runner.groups import node_groups

FULL_SCALE = capacity.JobShape(patterns=5152, size=128, object_pixels=464 * 464)


def test_the_estimate_adds_the_context_the_batch_the_object_and_the_patterns():
    host = capacity.EngineMemory(batch_size=96, probe_modes=1, patterns_on_gpu=False)
    on_gpu = capacity.EngineMemory(96, 1, patterns_on_gpu=True)
    two_modes = capacity.EngineMemory(96, 2, patterns_on_gpu=False)

    job = capacity.job_mib(FULL_SCALE, host)

    # 500 context + 30 x 12 MiB batch waves + 12 x 1.64 MiB object + 50 + 32
    assert job == pytest.approx(500 + 360 + 19.7 + 50.3 + 32, abs=0.5)
    # the patterns on the GPU: 5152 x 128^2 float32
    assert capacity.job_mib(FULL_SCALE, on_gpu) - job == pytest.approx(322, abs=0.5)
    assert capacity.job_mib(FULL_SCALE, two_modes) - job == pytest.approx(360)
    # no batch size (DM, RAAR): every position at once
    assert capacity.job_mib(
        FULL_SCALE, capacity.EngineMemory(0, 1, False)
    ) > capacity.job_mib(FULL_SCALE, host)


def test_the_engines_memory_parameters_are_read_without_pty_chi():
    params = {
        "engine": "EPIE",
        "probe_modes": 3,
        "epie": {
            "reconstructor_options": {"batch_size": 64},
            "data_options": {"save_data_on_device": True},
        },
        "lsqml": {"reconstructor_options": {"batch_size": 96}},
    }
    assert capacity.EngineMemory.from_params(params) == capacity.EngineMemory(
        64, 3, True
    )
    assert capacity.EngineMemory.from_params({"engine": "DM", "dm": {}}) == (
        capacity.EngineMemory(0, 1, False)
    )


@pytest.mark.parametrize(
    ("free", "per_job", "cores", "expected"),
    [
        ([140_000.0], 1_000.0, 16, 8),  # an H200: the cap
        ([140_000.0], 1_000.0, 3, 3),  # few cores: one each
        ([140_000.0, 4_000.0], 1_000.0, 16, 3),  # the fullest GPU decides
        ([500.0], 1_000.0, 16, 1),  # not even one fits: one all the same
        ([], 1_000.0, 6, 6),  # free memory unknown: the cores and the cap
    ],
)
def test_workers_per_gpu_is_what_memory_cores_and_the_cap_allow(
    free, per_job, cores, expected
):
    assert capacity.workers_per_gpu(free, per_job, cores) == expected


def test_a_jobs_shape_comes_from_its_input_files_headers(tmp_path):
    path = tmp_path / "dose_1000" / "patched_test.npz"
    NPZDataset(filepath=str(path)).save(
        {
            "diffraction": np.zeros((7, 16, 16), np.float32),
            "objectGuess": np.ones((40, 50), np.complex64),
            "probeGuess": np.ones((16, 16), np.complex64),
        }
    )
    pipeline = Pipeline(
        [
            Node(len, "a.input", "a.out", name="count", namespace="a"),
            Node(len, "b.input", "b.out", name="count", namespace="b"),
            Node(len, "c.input", "c.out", name="count", namespace="c"),
        ]
    )
    catalog = DataCatalog(
        {
            "a.input": NPZSourceDataset(filepath=str(path)),
            "b.input": NPZSourceDataset(filepath=str(tmp_path / "missing.npz")),
            "c.input": MemoryDataset([1, 2]),
        }
    )

    shapes = capacity.group_shapes(node_groups(pipeline), catalog)

    assert {group.name: shape for group, shape in shapes.items()} == {
        "a": capacity.JobShape(7, 16, 2000)
    }


def test_auto_on_a_gpu_machine_sizes_the_slots_from_the_largest_job(
    monkeypatch, caplog
):
    monkeypatch.setattr(pool, "visible_gpus", lambda: ["0"])
    monkeypatch.setattr(pool, "available_cores", lambda: 16)
    monkeypatch.setattr(pool, "free_gpu_memory_mib", lambda gpus: {"0": 3000.0})
    monkeypatch.setattr(
        capacity,
        "group_shapes",
        lambda groups, catalog: dict.fromkeys(groups, FULL_SCALE),
    )
    pipeline = Pipeline([Node(len, "a.input", "a.out", name="n", namespace="a")])
    batch = {"lsqml": {"reconstructor_options": {"batch_size": 96}}}
    catalog = DataCatalog({"params:ptychi_baseline": MemoryDataset(batch)})
    caplog.set_level("INFO", logger=pool.__name__)

    per_gpu = PoolRunner()._per_gpu(node_groups(pipeline), catalog)

    assert per_gpu == 2  # 0.9 x 3000 MiB free / 962 MiB a job
    assert "workers_per_gpu auto: 2 (largest job ~962 MiB" in caplog.text
    assert PoolRunner(workers_per_gpu=3)._per_gpu([], catalog) == 3
