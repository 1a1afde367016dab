"""pty-chi's engines: options from parameters, refusals, probe modes and rescale,
DATA-001 -> pty-chi conversion, and a real LSQML run."""

import logging
import os
import re

import numpy as np
import pytest
import torch
from conftest import baseline_params

from fly64_recon.pipelines.ptychi_baseline import engines, task
from fly64_recon.pipelines.ptychi_baseline.options import BaselineOptions

LSQML = engines.ENGINES["LSQML"]


def test_options_are_pty_chis_own_with_our_values():
    from ptychi.api import Devices, LSQMLOptions, NoiseModels

    options = engines.build_options(
        LSQML,
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
    ("section", "name"),
    [
        ("reconstructor_options", "default_device"),
        ("reconstructor_options", "default_dtype"),
        ("data_options", "fft_shift"),
    ],
)
def test_an_option_the_project_sets_is_refused_not_replaced(section, name):
    with pytest.raises(
        engines.OptionsError,
        match=rf"ptychi_baseline.lsqml.{section}.{name}: the project sets it",
    ):
        engines.build_options(LSQML, {section: {name: "x"}}, "cpu")


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
    with pytest.raises(engines.OptionsError, match=message):
        engines.build_options(LSQML, params, "cpu")


@pytest.mark.parametrize("name", list(engines.ENGINES))
def test_each_engine_is_built_through_its_own_options_class(name):
    import ptychi.api

    engine = engines.ENGINES[name]
    options = engines.build_options(
        engine, {"reconstructor_options": {"num_epochs": 3}}, "cpu"
    )

    assert type(options) is getattr(ptychi.api, engine.options_class)
    assert options.reconstructor_options.get_reconstructor_type().name == name
    assert options.reconstructor_options.get_reconstructor_type().value == engine.key
    assert options.reconstructor_options.num_epochs == 3


def test_an_option_of_another_engine_is_an_error_naming_it_and_the_engine():
    epie = {"reconstructor_options": {"noise_model": "gaussian"}}

    with pytest.raises(engines.OptionsError) as error:
        BaselineOptions.from_params(baseline_params(engine="EPIE", epie=epie))

    message = str(error.value)
    assert "ptychi_baseline.epie.reconstructor_options" in message
    assert "unknown option 'noise_model' for EPIE" in message
    assert "LSQML has it" in message


def test_only_the_chosen_engines_options_are_read():
    wrong_for_lsqml = {"reconstructor_options": {"chunk_length": 4}}  # DM's

    options = BaselineOptions.from_params(
        baseline_params(engine="DM", dm=wrong_for_lsqml)
    )
    with_lsqml = BaselineOptions.from_params(
        baseline_params(lsqml={}, dm=wrong_for_lsqml)
    )
    other_dm = BaselineOptions.from_params(baseline_params(lsqml={}, dm={}))

    assert options.engine_params["reconstructor_options"]["chunk_length"] == 4
    assert with_lsqml.fingerprint("cpu") == other_dm.fingerprint("cpu")  # dm unread
    assert options.fingerprint("cpu") != with_lsqml.fingerprint("cpu")


def test_a_result_made_on_the_cpu_is_not_a_cached_result_on_the_gpu():
    options = BaselineOptions.from_params(baseline_params(lsqml={}))

    assert options.fingerprint("cpu") != options.fingerprint("cuda")
    assert options.fingerprint("cuda") == options.fingerprint("cuda")


@pytest.mark.parametrize("name", ["GROUP_RANK", "ROLE_RANK", "LOCAL_WORLD_SIZE"])
def test_a_torchrun_variable_alone_is_hidden_from_pty_chi_while_a_job_runs(
    monkeypatch, name
):
    from ptychi.parallel import MultiprocessMixin

    monkeypatch.setenv(name, "0")
    assert MultiprocessMixin.detect_launcher(None) == "torchrun"  # pty-chi's reading

    with task._isolated_torch_state("cpu", None):
        assert MultiprocessMixin.detect_launcher(None) is None
    assert os.environ[name] == "0"  # given back


def test_every_launcher_variable_pty_chi_reads_is_covered(monkeypatch):
    """Every variable pty-chi's launcher detection reads, set at once, is hidden."""
    import inspect

    from ptychi.parallel import MultiprocessMixin

    source = inspect.getsource(MultiprocessMixin.detect_launcher)
    read = set(re.findall(r'"([A-Z_]+)" in env', source))
    assert read == set(task.LAUNCHER_ENV)
    for name in read:
        monkeypatch.setenv(name, "0")
    with task._isolated_torch_state("cpu", None):
        assert MultiprocessMixin.detect_launcher(None) is None


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"engine": "RAAR2"}, ["unknown engine 'RAAR2'", "AD_PTYCHO"]),
        ({"probe_modes": 0}, ["probe_modes", ">= 1"]),
        (
            {"engine": "PIE", "pie": {"reconstructor_options": {"batch_size": 8}}},
            ["ptychi_baseline.pie", "batch_size 8 > 1", "EPIE or RPIE"],
        ),
        (
            {"engine": "DM", "dm": {"reconstructor_options": {"batch_size": 8}}},
            ["ptychi_baseline.dm.reconstructor_options.batch_size", "every position"],
        ),
        (
            {
                "engine": "RAAR",
                "raar": {
                    "probe_position_options": {
                        "optimizable": True,
                        "correction_options": {"correction_type": "cross_correlation"},
                    }
                },
            },
            ["correction_type", "RAAR supports gradient", "cross_correlation"],
        ),
        (
            {"engine": "EPIE", "epie": {"object_options": {"optimizer": "lbfgs"}}},
            ["ptychi_baseline.epie", "pty-chi refuses these options for EPIE"],
        ),
    ],
)
def test_what_an_engine_cannot_do_is_refused_naming_parameter_and_engine(
    params, fragments
):
    with pytest.raises(ValueError) as error:
        BaselineOptions.from_params(baseline_params(**params))

    for fragment in fragments:
        assert fragment in str(error.value)


def test_plain_pie_may_optimise_the_probe_one_position_at_a_time():
    pie = {"reconstructor_options": {"batch_size": 1}}
    fixed_probe = {"reconstructor_options": {"batch_size": 8}}
    fixed_probe["probe_options"] = {"optimizable": False}

    BaselineOptions.from_params(baseline_params(engine="PIE", pie=pie))
    BaselineOptions.from_params(baseline_params(engine="PIE", pie=fixed_probe))


def test_probe_modes_are_orthogonal_and_keep_the_probe_and_its_power():
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(16, 16)) + 1j * rng.normal(size=(16, 16))).astype(
        np.complex64
    )

    modes = task.probe_modes(probe, 3)

    assert modes.shape == (1, 3, 16, 16) and modes.dtype == np.complex64
    flat = modes[0].reshape(3, -1)
    gram = flat.conj() @ flat.T
    power = np.real(np.diag(gram))
    np.testing.assert_allclose(power.sum(), np.sum(np.abs(probe) ** 2), rtol=1e-4)
    np.testing.assert_allclose(power / power.sum(), [0.96, 0.02, 0.02], atol=1e-4)
    assert np.max(np.abs(gram - np.diag(np.diag(gram)))) < 1e-4 * power.sum()
    np.testing.assert_allclose(modes[0, 0], probe * np.sqrt(0.96), rtol=1e-4)
    assert task.probe_modes(probe, 1).shape == (1, 1, 16, 16)


def test_the_probe_is_rescaled_to_the_patterns_and_the_factor_told():
    probe = np.full((1, 2, 8, 8), 0.1, dtype=np.complex64)
    patterns = np.full((5, 8, 8), 2.0, dtype=np.float32)  # 128 counts per pattern

    scaled, power = task.rescaled_probe(probe, patterns)

    assert scaled.shape == probe.shape and scaled.dtype == np.complex64
    # pty-chi's far field is an unnormalised FFT: its total intensity is the data's.
    far_field = np.sum(np.abs(np.fft.fft2(scaled)) ** 2)
    assert far_field == pytest.approx(128.0, rel=1e-4)
    ratio = np.sum(np.abs(scaled) ** 2) / np.sum(np.abs(probe) ** 2)
    assert power == pytest.approx(ratio, rel=1e-6)


def test_only_lsqml_with_its_first_epoch_rescale_rescales_the_probe_itself():
    def rescales(name, params):
        engine = engines.ENGINES[name]
        options = engines.build_options(engine, params, "cpu")
        return engines.rescales_probe_itself(engine, options)

    no_rescale = {
        "reconstructor_options": {"rescale_probe_intensity_in_first_epoch": 0}
    }
    assert rescales("LSQML", {})
    assert not rescales("LSQML", no_rescale)
    assert not any(rescales(name, {}) for name in engines.ENGINES if name != "LSQML")


def test_auto_device_is_cpu_without_cuda_with_one_warning(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=engines.__name__)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    task._warn_cpu_fallback.cache_clear()

    assert task.resolve_device("auto") == "cpu"
    assert task.resolve_device("auto") == "cpu"

    warnings = [r for r in caplog.records if "no CUDA device" in r.getMessage()]
    assert len(warnings) == 1
    with pytest.raises(RuntimeError, match="no CUDA device"):
        task.resolve_device("cuda:1")
    with pytest.raises(engines.OptionsError, match="auto, cpu, cuda or cuda:N"):
        task.resolve_device("tpu")


def test_conversion_to_pty_chi_conventions():
    amplitude = np.full((2, 4, 4), 3.0, dtype=np.float32)
    obj = np.full((20, 30), 0.5 + 0.5j, dtype=np.complex64)
    probe = np.ones((4, 4), dtype=np.complex64)
    x, y = np.array([15.0, 10.5]), np.array([10.0, 12.0])

    flat = task.to_ptychi_inputs(amplitude, probe, obj, x, y, 2.0, "flat")

    np.testing.assert_allclose(flat.intensities, 36.0)
    assert flat.intensities.dtype == np.float32
    assert flat.probe_init.shape == (1, 1, 4, 4)
    assert flat.object_init.shape == (1, 20, 30)
    np.testing.assert_array_equal(flat.object_init, 1.0)
    np.testing.assert_allclose(flat.position_x_px, [0.0, -4.5])
    np.testing.assert_allclose(flat.position_y_px, [0.0, 2.0])
    back = task.from_ptychi_positions(flat.position_x_px, flat.position_y_px, (20, 30))
    np.testing.assert_allclose(back, (x, y))

    truth = task.to_ptychi_inputs(amplitude, probe, obj, x, y, 2.0, "ground_truth")
    np.testing.assert_array_equal(truth.object_init[0], obj)


def test_bad_pixels_become_pty_chis_mask_shifted_as_the_patterns():
    bad = np.zeros((4, 4), bool)
    bad[2, 2] = True  # the centre pixel: DATA-001's DC term
    args = (np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.complex64))
    place = (np.ones((8, 8), np.complex64), np.array([4.0]), np.array([4.0]), 1.0)

    inputs = task.to_ptychi_inputs(*args, *place, "flat", bad)

    assert inputs.valid_pixel_mask.dtype == bool
    assert not inputs.valid_pixel_mask[0, 0] and inputs.valid_pixel_mask.sum() == 15
    assert task.to_ptychi_inputs(*args, *place, "flat").valid_pixel_mask is None


def test_conversion_moves_the_dc_term_to_the_corner():
    amplitude = np.zeros((1, 4, 4), dtype=np.float32)
    amplitude[0, 2, 2] = 3.0  # DATA-001: the DC term at the centre

    inputs = task.to_ptychi_inputs(
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


def test_patterns_stay_on_the_host_unless_the_parameters_say_otherwise():
    """pty-chi's default: fewer synchronisations per batch than on the GPU with
    the batched loader (docs/performance.md, issue 20)."""
    assert (
        engines.build_options(LSQML, {}, "cuda").data_options.save_data_on_device
        is False
    )
    kept = {"data_options": {"save_data_on_device": True}}
    assert (
        engines.build_options(LSQML, kept, "cuda").data_options.save_data_on_device
        is True
    )


def test_unknown_object_init_is_refused():
    with pytest.raises(engines.OptionsError, match="flat or ground_truth"):
        task.to_ptychi_inputs(
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
    inputs = known_inputs(study)
    options = engines.build_options(
        LSQML, {"reconstructor_options": {"num_epochs": 12, "batch_size": 32}}, "cpu"
    )
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    threads = torch.get_num_threads()

    result = task.run_engine(inputs, options, "cpu", cpu_threads=1)

    assert (torch.get_default_device(), torch.get_default_dtype()) == (device, dtype)
    assert torch.get_num_threads() == threads
    assert os.environ["WORLD_SIZE"] == "2"
    assert result.object.shape == study["objectGuess"].shape
    assert result.loss.shape == (12,)
    assert result.loss[-1] < 0.1 * result.loss[1]
    assert result.warmup_s is None  # a GPU's one-off set-up only
    assert result.peak_gpu_memory_reserved_mb is None
    region = study["scanned"]
    start_error = phase_error(np.ones_like(study["objectGuess"]), study, region)
    final_error = phase_error(result.object, study, region)
    assert final_error < 0.4 * start_error


def known_inputs(study):
    """The known object's study in pty-chi's conventions, from a flat start."""
    return task.to_ptychi_inputs(
        study["diffraction"],
        study["probeGuess"],
        study["objectGuess"],
        study["xcoords"],
        study["ycoords"],
        study["intensity_scale"],
        "flat",
    )


def phase_error(obj, study, region):
    """Mean absolute phase difference in the scanned region, global phase removed."""
    a, b = obj[region], study["objectGuess"][region]
    a = a * np.exp(-1j * np.angle(np.vdot(b, a)))
    return float(np.mean(np.abs(np.angle(a * np.conj(b)))))


def test_the_warm_up_runs_once_per_shape_in_a_process(known_object_study, monkeypatch):
    monkeypatch.setattr(task, "_WARMED", set())
    study = known_object_study
    inputs = known_inputs(study)
    options = engines.build_options(
        LSQML, {"reconstructor_options": {"num_epochs": 30, "batch_size": 16}}, "cpu"
    )

    first = task.warm_up(inputs, options)
    again = task.warm_up(inputs, options)

    assert first is not None and first > 0
    assert again is None
    assert options.reconstructor_options.num_epochs == 30  # the job's own untouched
    other_batch = engines.build_options(
        LSQML, {"reconstructor_options": {"batch_size": 8}}, "cpu"
    )
    assert task.warm_up(inputs, other_batch) is not None
