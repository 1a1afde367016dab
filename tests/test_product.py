"""Every succeeded job writes product.h5, read back by ptychodus's own load_product."""

import json

import h5py
import numpy as np
import pytest
from conftest import (
    base_parameters,
    baseline_params,
    simulate_phase_c,
    tiny_simulate_params,
)

from fly64_recon.datasets import JobFolderDataset, NPZSource, npz_bytes
from fly64_recon.datasets.product import PRODUCT_FILE
from fly64_recon.pipelines.ptychi_baseline import nodes
from fly64_recon.science.geometry import Geometry
from fly64_recon.study import Job

io = pytest.importorskip("ptychodus.api.io")  # pip install --no-deps ptychodus==1.7.0

JOB = Job(10000.0, "baseline", "test")
GEOMETRY = base_parameters()["geometry"]
PARAMS = baseline_params(
    device="cpu", lsqml={"reconstructor_options": {"num_epochs": 3, "batch_size": 16}}
)


@pytest.fixture(scope="module")
def study_file() -> dict:
    params = tiny_simulate_params(patch_size=16, object_size=48, rows=6)
    return simulate_phase_c(params, 10000.0)["test"]


def reconstructed(tmp_path, arrays: dict):
    """The job run by its nodes, its folder saved; the folder and what it made."""
    source = tmp_path / "patched_test.npz"
    source.write_bytes(npz_bytes(arrays))
    folder = JobFolderDataset(path=str(tmp_path / "out"), namespace=JOB.namespace)
    checked = nodes.validate_input(NPZSource(str(source)), PARAMS, JOB)
    made = nodes.reconstruct(checked, folder.load(), GEOMETRY)
    folder.save(made)
    return folder, made


def test_ptychodus_loads_the_product_of_a_job(tmp_path, study_file):
    folder, made = reconstructed(tmp_path, study_file)
    path = tmp_path / "out" / JOB.output_relpath / PRODUCT_FILE

    product = io.load_product(path)

    arrays, record = made.arrays, made.record
    pixel = Geometry(**GEOMETRY).object_pixel_m(16)
    assert record["geometry"]["object_pixel_m"] == pytest.approx(pixel)
    metadata = product.metadata
    assert metadata.name == JOB.namespace
    assert "LSQML" in metadata.comments and record["options_fingerprint"] in (
        metadata.comments
    )
    assert metadata.photon_energy_eV == GEOMETRY["photon_energy_eV"]
    assert metadata.detector_distance_m == GEOMETRY["detector_distance_m"]
    assert metadata.probe_photon_count == pytest.approx(record["photons_per_pattern"])
    obj = product.object_
    np.testing.assert_array_equal(obj.get_array()[0], arrays["reconstructed_object"])
    assert obj.get_pixel_geometry().width_m == pytest.approx(pixel)
    np.testing.assert_array_equal(
        product.probes.get_array(), arrays["reconstructed_probe"]
    )
    positions = product.probe_positions
    np.testing.assert_array_equal(
        positions.get_indexes(), np.arange(len(arrays["xcoords"]))
    )
    geometry = obj.get_geometry()
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_x_px(positions), arrays["xcoords"]
    )
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_y_px(positions), arrays["ycoords"]
    )
    assert [loss.value for loss in product.losses] == pytest.approx(arrays["loss"])
    with h5py.File(path) as h5:  # what older ptychodus reads, and the spelling
        assert h5.attrs["probe_energy_eV"] == GEOMETRY["photon_energy_eV"]
        assert h5.attrs["mass_attenuation_m2_kg"] == 0.0
        assert h5["object_layer_spacing_m"].shape == (0,)

    # A rerun finds the job cached and writes its product again (from the folder).
    path.unlink()
    cached = nodes.reconstruct(
        nodes.validate_input(folder_source(tmp_path), PARAMS, JOB),
        folder.load(),
        GEOMETRY,
    )
    folder.save(cached)
    assert cached.record["status"] == "cached"
    assert io.load_product(path).metadata.name == JOB.namespace


def folder_source(tmp_path) -> NPZSource:
    return NPZSource(str(tmp_path / "patched_test.npz"))


def test_a_files_own_geometry_wins_over_the_nominal(tmp_path, study_file):
    measured = {"photon_energy_eV": 6200.0, "detector_distance_m": 5.0}
    metadata = {**json.loads(str(study_file["_metadata"])), **measured}
    arrays = {**study_file, "_metadata": np.array(json.dumps(metadata))}

    _, made = reconstructed(tmp_path, arrays)

    geometry = made.record["geometry"]
    assert geometry["photon_energy_eV"] == 6200.0
    assert geometry["detector_distance_m"] == 5.0
    assert geometry["detector_pixel_size_m"] == GEOMETRY["detector_pixel_size_m"]
    path = tmp_path / "out" / JOB.output_relpath / PRODUCT_FILE
    assert io.load_product(path).metadata.photon_energy_eV == 6200.0


def test_a_measured_scans_positions_keep_their_place_in_metres(tmp_path, study_file):
    # What ingest records of a scan centred 1 mm right of and 2 mm below the origin.
    centre = {"object_centre_x_m": 1e-3, "object_centre_y_m": -2e-3}
    metadata = {**json.loads(str(study_file["_metadata"])), **centre}
    arrays = {**study_file, "_metadata": np.array(json.dumps(metadata))}

    _, made = reconstructed(tmp_path, arrays)

    product = io.load_product(tmp_path / "out" / JOB.output_relpath / PRODUCT_FILE)
    centre_of = product.object_.get_center()
    assert (centre_of.x_m, centre_of.y_m) == (1e-3, -2e-3)
    positions = product.probe_positions
    assert positions.get_coordinates_x_m().mean() == pytest.approx(1e-3, abs=1e-5)
    geometry = product.object_.get_geometry()
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_x_px(positions), made.arrays["xcoords"]
    )
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_y_px(positions), made.arrays["ycoords"]
    )


def test_a_failed_job_writes_no_product(tmp_path, study_file):
    broken = {**study_file, "diffraction": study_file["diffraction"] * np.nan}

    _, made = reconstructed(tmp_path, broken)

    assert made.record["status"] == "failed"
    assert not (tmp_path / "out" / JOB.output_relpath / PRODUCT_FILE).exists()
