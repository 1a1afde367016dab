"""pty-chi options from parameters, DATA-001 -> pty-chi conversion, and a real LSQML run."""

import os

import numpy as np
import pytest
import torch

from fly64_recon.pipelines.ptychi_baseline import lsqml


def test_options_are_pty_chis_own_with_our_values():
    from ptychi.api import Devices, LSQMLOptions, NoiseModels

    options = lsqml.build_options(
        {
            "reconstructor_options": {
                "num_epochs": 7,
                "batch_size": 96,
                "noise_model": "gaussian",
            },
            "probe_options": {"optimizable": True},
            "probe_position_options": {"optimizable": False},
            "object_options": {"optimization_plan": {"start": 2}},
        },
        "cpu",
    )
    assert isinstance(options, LSQMLOptions)
    assert options.reconstructor_options.num_epochs == 7
    assert options.reconstructor_options.batch_size == 96
    assert options.reconstructor_options.noise_model == NoiseModels.GAUSSIAN
    assert options.reconstructor_options.default_device == Devices.CPU
    assert options.object_options.optimization_plan.start == 2
    assert options.probe_position_options.optimizable is False
    assert options.data_options.fft_shift is False  # to_ptychi_inputs shifts


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"reconstructer_options": {}}, "unknown section 'reconstructer_options'"),
        ({"reconstructor_options": {"num_epoch": 3}}, "unknown option 'num_epoch'"),
        ({"reconstructor_options": {"noise_model": "cauchy"}}, "refuses 'cauchy'"),
        ({"reconstructor_options": {"batch_size": "many"}}, "refuses 'many'"),
    ],
)
def test_option_mistakes_are_named(params, message):
    with pytest.raises(lsqml.OptionsError, match=message):
        lsqml.build_options(params, "cpu")


def test_auto_device_is_cpu_without_cuda_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lsqml._warn_cpu_fallback.cache_clear()

    assert lsqml.resolve_device("auto") == "cpu"
    assert lsqml.resolve_device("auto") == "cpu"

    warnings = [r for r in caplog.records if "no CUDA device" in r.getMessage()]
    assert len(warnings) == 1
    with pytest.raises(RuntimeError, match="no CUDA device"):
        lsqml.resolve_device("cuda:1")
    with pytest.raises(lsqml.OptionsError, match="auto, cpu, cuda or cuda:N"):
        lsqml.resolve_device("tpu")


def test_conversion_to_pty_chi_conventions():
    amplitude = np.full((2, 4, 4), 3.0, dtype=np.float32)
    obj = np.full((20, 30), 0.5 + 0.5j, dtype=np.complex64)
    probe = np.ones((4, 4), dtype=np.complex64)
    x, y = np.array([15.0, 10.5]), np.array([10.0, 12.0])

    flat = lsqml.to_ptychi_inputs(amplitude, probe, obj, x, y, 2.0, "flat")

    np.testing.assert_allclose(flat.intensities, 36.0)
    assert flat.intensities.dtype == np.float32
    assert flat.probe_init.shape == (1, 1, 4, 4)
    assert flat.object_init.shape == (1, 20, 30)
    np.testing.assert_array_equal(flat.object_init, 1.0)
    np.testing.assert_allclose(flat.position_x_px, [0.0, -4.5])
    np.testing.assert_allclose(flat.position_y_px, [0.0, 2.0])
    back = lsqml.from_ptychi_positions(flat.position_x_px, flat.position_y_px, (20, 30))
    np.testing.assert_allclose(back, (x, y))

    truth = lsqml.to_ptychi_inputs(amplitude, probe, obj, x, y, 2.0, "ground_truth")
    np.testing.assert_array_equal(truth.object_init[0], obj)


def test_conversion_moves_the_dc_term_to_the_corner():
    amplitude = np.zeros((1, 4, 4), dtype=np.float32)
    amplitude[0, 2, 2] = 3.0  # DATA-001: the DC term at the centre

    inputs = lsqml.to_ptychi_inputs(
        amplitude,
        np.ones((4, 4), np.complex64),
        np.ones((8, 8), np.complex64),
        np.array([4.0]),
        np.array([4.0]),
        2.0,
        "flat",
    )

    assert inputs.intensities[0, 0, 0] == 36.0
    assert inputs.intensities.sum() == 36.0


def test_patterns_stay_on_the_gpu_unless_the_parameters_say_otherwise():
    assert lsqml.build_options({}, "cuda").data_options.save_data_on_device is True
    assert lsqml.build_options({}, "cpu").data_options.save_data_on_device is False
    kept = {"data_options": {"save_data_on_device": False}}
    assert lsqml.build_options(kept, "cuda").data_options.save_data_on_device is False


def test_unknown_object_init_is_refused():
    with pytest.raises(lsqml.OptionsError, match="flat or ground_truth"):
        lsqml.to_ptychi_inputs(
            np.ones((1, 4, 4), np.float32),
            np.ones((4, 4), np.complex64),
            np.ones((8, 8), np.complex64),
            np.array([4.0]),
            np.array([4.0]),
            1.0,
            "random",
        )


def test_lsqml_reconstructs_a_known_object_on_cpu(known_object_study, monkeypatch):
    """The conventions are right if LSQML from a flat start converges on the truth."""
    # Under a launcher pty-chi would start an NCCL process group; a job must not.
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    study = known_object_study
    inputs = lsqml.to_ptychi_inputs(
        study["diffraction"],
        study["probeGuess"],
        study["objectGuess"],
        study["xcoords"],
        study["ycoords"],
        study["intensity_scale"],
        "flat",
    )
    options = lsqml.build_options(
        {"reconstructor_options": {"num_epochs": 12, "batch_size": 32}}, "cpu"
    )
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    threads = torch.get_num_threads()

    result = lsqml.run_lsqml(inputs, options, "cpu", cpu_threads=1)

    assert (torch.get_default_device(), torch.get_default_dtype()) == (device, dtype)
    assert torch.get_num_threads() == threads
    assert os.environ["WORLD_SIZE"] == "2"
    assert result.object.shape == study["objectGuess"].shape
    assert result.loss.shape == (12,)
    assert result.loss[-1] < 0.1 * result.loss[1]
    region = study["scanned"]
    start_error = phase_error(np.ones_like(study["objectGuess"]), study, region)
    final_error = phase_error(result.object, study, region)
    assert final_error < 0.4 * start_error


def phase_error(obj, study, region):
    """Mean absolute phase difference in the scanned region, global phase removed."""
    a, b = obj[region], study["objectGuess"][region]
    a = a * np.exp(-1j * np.angle(np.vdot(b, a)))
    return float(np.mean(np.abs(np.angle(a * np.conj(b)))))
