"""The batched loader: pty-chi's own batches, and bit-identical reconstructions."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fly64_recon.pipelines.ptychi_baseline import engines, task
from fly64_recon.pipelines.ptychi_baseline.loader import BatchedDataset, batched

LSQML = engines.ENGINES["LSQML"]


def synthetic_inputs(side: int = 16, size: int = 32, step: int = 4, seed: int = 0):
    """``side``² jittered positions over a random object, via ``to_ptychi_inputs``."""
    rng = np.random.default_rng(seed)
    extent = (side - 1) * step + size + 4
    obj = rng.uniform(0.5, 1, (extent, extent)) * np.exp(
        1j * rng.uniform(-1, 1, (extent, extent))
    )
    axis = np.arange(size) - size / 2
    probe = 30 * np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (size / 4) ** 2)
    grid = np.arange(side) * step + size // 2 + 2
    ys, xs = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    ys, xs = ys + rng.integers(-1, 2, ys.size), xs + rng.integers(-1, 2, xs.size)
    patches = np.stack(
        [
            obj[y - size // 2 : y + size // 2, x - size // 2 : x + size // 2]
            for y, x in zip(ys, xs, strict=True)
        ]
    )
    amplitudes = np.abs(np.fft.fftshift(np.fft.fft2(probe * patches), axes=(-2, -1)))
    return task.to_ptychi_inputs(
        amplitudes.astype(np.float32), probe, obj, xs, ys, 1.0, "flat"
    )


def lsqml_options(epochs: int, batching_mode: str = "random"):
    """The baseline's LSQML options (conf/base), on the CPU."""
    params = {
        "reconstructor_options": {
            "num_epochs": epochs,
            "batch_size": 48,
            "noise_model": "gaussian",
            "random_seed": 0,
            "batching_mode": batching_mode,
        },
        "object_options": {"optimizable": True},
        "probe_options": {"optimizable": True},
        "probe_position_options": {"optimizable": False},
    }
    return engines.build_options(LSQML, params, "cpu")


def new_task(inputs, options):
    """A built pty-chi task, as ``task.run_engine`` builds it."""
    from ptychi.api.task import PtychographyTask

    return PtychographyTask(options, **task.task_data(inputs))


@pytest.fixture(autouse=True)
def torch_state():
    """A task sets torch's default device and dtype and seeds every generator."""
    with task._isolated_torch_state("cpu", None):
        yield


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs()


def epochs_of_batches(task, epochs: int = 2) -> list:
    """Every ``(indices, patterns)`` batch the task's loader gives, epoch after epoch."""
    return [
        [tuple(batch) for batch in task.reconstructor.dataloader] for _ in range(epochs)
    ]


@pytest.mark.parametrize("mode", ["random", "compact", "uniform"])
def test_the_batches_are_pty_chis_own(inputs, mode):
    options = lsqml_options(2, mode)
    expected = epochs_of_batches(new_task(inputs, options))
    task = batched(new_task(inputs, options))
    assert isinstance(task.reconstructor.dataloader.dataset, BatchedDataset)
    got = epochs_of_batches(task)
    assert len(got) == len(expected) == 2
    for got_epoch, expected_epoch in zip(got, expected, strict=True):
        assert len(got_epoch) == len(expected_epoch) > 1
        for got_batch, expected_batch in zip(got_epoch, expected_epoch, strict=True):
            for got_tensor, expected_tensor in zip(
                got_batch, expected_batch, strict=True
            ):
                assert got_tensor.dtype == expected_tensor.dtype
                assert got_tensor.device == expected_tensor.device
                assert got_tensor.shape == expected_tensor.shape
                assert got_tensor.is_contiguous() == expected_tensor.is_contiguous()
                assert torch.equal(got_tensor, expected_tensor)
    assert [len(e) for e in expected] == [len(task.reconstructor.dataloader)] * 2
    # The two epochs are shuffled differently: the test sees the random stream move on.
    assert not torch.equal(got[0][0][0], got[1][0][0]) or mode == "compact"


def test_batched_twice_is_batched_once(inputs):
    task = batched(new_task(inputs, lsqml_options(1)))
    loader = task.reconstructor.dataloader
    assert batched(task).reconstructor.dataloader is loader


@pytest.fixture(scope="module")
def engine_params() -> dict:
    """conf/base's blocks of every engine."""
    from kedro.config import OmegaConfigLoader

    from fly64_recon.settings import CONFIG_LOADER_ARGS

    conf = Path(__file__).resolve().parents[1] / "conf"
    loader = OmegaConfigLoader(conf_source=str(conf), **CONFIG_LOADER_ARGS)
    return loader["parameters"]["ptychi_baseline"]


def reconstruct(inputs, options, batched_loader: bool):
    """Object, probe and loss of a short run, with or without the batched loader."""
    task = new_task(inputs, options)
    if batched_loader:
        batched(task)
    with task:
        task.run()
        return (
            task.get_data_to_cpu("object", as_numpy=True),
            task.get_data_to_cpu("probe", as_numpy=True),
            task.reconstructor.loss_tracker.table["loss"].to_numpy(np.float64),
        )


@pytest.mark.parametrize("name", list(engines.ENGINES))
def test_every_engines_reconstruction_is_bit_identical_on_the_cpu(
    inputs, engine_params, name
):
    engine = engines.ENGINES[name]
    params = dict(engine_params[engine.key])
    epochs = 1 if name == "PIE" else 3  # PIE: batch 1, 256 updates an epoch
    params["reconstructor_options"] = {
        **params["reconstructor_options"],
        "num_epochs": epochs,
    }
    options = engines.build_options(engine, params, "cpu")
    rescale = not engines.rescales_probe_itself(engine, options)
    start, _ = task.starting_probe(inputs, 1, rescale)

    expected = reconstruct(start, options, batched_loader=False)
    got = reconstruct(start, options, batched_loader=True)

    assert len(expected[2]) == epochs
    assert np.all(np.isfinite(expected[2]))
    for got_array, expected_array in zip(got, expected, strict=True):
        assert np.array_equal(got_array, expected_array)
