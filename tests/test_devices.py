"""The machine's GPUs without torch where there is no driver; which errors lose a GPU."""

import sys

import pytest

from fly64_recon import devices


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(devices, "gpu_driver", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,6")
    assert devices.visible_gpus() == ["3", "6"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.visible_gpus() == []


def test_without_a_gpu_driver_no_gpu_is_counted_and_torch_is_not_asked(monkeypatch):
    monkeypatch.setattr(devices, "GPU_DRIVER_PATHS", ("/nonexistent/nvidia",))
    monkeypatch.setitem(sys.modules, "torch", None)  # importing it would fail
    assert devices.visible_gpus() == []
    assert devices.device_kind("auto") == "cpu"
    assert devices.device_kind("cpu") == "cpu"
    assert devices.device_kind("cuda:1") == "cuda"  # asked for: no fallback


def test_free_memory_is_matched_by_index_or_uuid():
    listing = "0, GPU-aaa, 140000\n1, GPU-bbb, 9000.5\nnot a row\n"

    assert devices._free_by_gpu(listing, ["1", "GPU-aaa", "7"]) == {
        "1": 9000.5,
        "GPU-aaa": 140000.0,
    }


def test_no_nvidia_smi_means_no_free_memory_reading(monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    assert devices.free_gpu_memory_mib(["0"]) == {}


@pytest.mark.parametrize(
    ("error", "sticky"),
    [
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("cuFFT error: CUFFT_INTERNAL_ERROR"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (ValueError("diffraction has NaN"), False),
    ],
)
def test_a_sticky_cuda_error_is_told_from_out_of_memory(error, sticky):
    assert devices.is_sticky_cuda_error(error) is sticky


def test_a_noted_sticky_error_is_what_the_worker_is_told(monkeypatch):
    monkeypatch.setattr(devices, "_LOST", {})
    assert devices.lost_context() is None
    assert devices.note_if_lost(ValueError("bad input")) is False
    assert devices.lost_context() is None

    assert devices.note_if_lost(RuntimeError("CUDA error: misaligned address"))
    assert devices.lost_context() == "RuntimeError: CUDA error: misaligned address"
