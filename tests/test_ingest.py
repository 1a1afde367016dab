"""Measured data in: a CXI file (written here by its layout, read by the project with
h5py and by ptychodus's own reader) becomes a DATA-001 study tree that the baseline
pipeline reconstructs."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import (
    make_tiny_project,
    run_kedro,
    simulate_phase_c,
    tiny_simulate_params,
)

from fly64_recon.contract import read_metadata, validate
from fly64_recon.datasets import NPZDataset, ScanFileDataset, ScanFileError
from fly64_recon.datasets.scan_file import PTYCHODUS_INSTALL
from fly64_recon.pipelines.ingest import nodes
from fly64_recon.science import beam
from fly64_recon.science.geometry import JOULES_PER_EV, Geometry
from fly64_recon.study import Job, StudyFiles

GEOMETRY = Geometry(
    photon_energy_eV=6200.0, detector_distance_m=1.5, detector_pixel_size_m=55e-6
)
NOMINAL = {"photon_energy_eV": 8000.0, "detector_distance_m": 2.0}
NOMINAL["detector_pixel_size_m"] = 75e-6
SIMULATE = tiny_simulate_params()
BAD = (0, 0), (3, 5)  # two dead detector pixels


@pytest.fixture(scope="module")
def scan() -> dict[str, np.ndarray]:
    """A simulated scan as a detector would give it: counts, positions in metres."""
    phase_c = simulate_phase_c(SIMULATE, 1e4)
    parts = [phase_c[split] for split in ("train", "test")]
    scale = read_metadata(parts[0])["intensity_scale"]
    counts = np.concatenate([(p["diffraction"] * scale) ** 2 for p in parts])
    pixel = GEOMETRY.object_pixel_m(counts.shape[-1])
    x = np.concatenate([p["xcoords"] for p in parts]) * pixel
    y = np.concatenate([p["ycoords"] for p in parts]) * pixel
    return {"counts": np.rint(counts).astype(np.uint32), "x_m": x, "y_m": y}


def write_cxi(path: Path, scan: dict[str, np.ndarray], **leave_out: bool) -> Path:
    """The CXI 1.6 layout ptychodus reads: counts, translation (x, y, z), geometry."""
    with h5py.File(path, "w") as cxi:
        cxi["cxi_version"] = 160
        entry = cxi.create_group("entry_1")
        detector = entry.create_group("instrument_1/detector_1")
        if not leave_out.get("patterns"):
            detector["data"] = scan["counts"]
            entry.create_group("data_1")["data"] = h5py.SoftLink(
                "/entry_1/instrument_1/detector_1/data"
            )
        detector["distance"] = GEOMETRY.detector_distance_m
        detector["x_pixel_size"] = GEOMETRY.detector_pixel_size_m
        detector["y_pixel_size"] = GEOMETRY.detector_pixel_size_m
        mask = np.zeros(scan["counts"].shape[1:], dtype=np.uint32)
        for pixel in BAD:
            mask[pixel] = 1
        detector["mask"] = mask
        energy = GEOMETRY.photon_energy_eV * JOULES_PER_EV
        entry.create_group("instrument_1/source_1")["energy"] = energy
        translation = np.stack(
            [scan["x_m"], scan["y_m"], np.zeros_like(scan["x_m"])], axis=1
        )
        entry.create_group("sample_1/geometry_1")["translation"] = translation
    return path


def ingest(scan_file, ingest_params=None) -> StudyFiles:
    """The pipeline's nodes in order, as Kedro runs them."""
    phase_c = nodes.measured_phase_c(
        scan_file,
        ingest_params or {"dose": None, "probe_diameter_m": None},
        NOMINAL,
        SIMULATE,
    )
    views = {
        view: nodes.measured_view(phase_c, SIMULATE, view=view, overlap=overlap)
        for view, overlap in (("dense", 0.72), ("sparse", 0.6))
    }
    return nodes.study_tree(phase_c, **views)


def test_a_cxi_scan_becomes_a_valid_study_in_object_pixels(tmp_path, scan):
    measured = ScanFileDataset(str(write_cxi(tmp_path / "s.cxi", scan)), "cxi").load()

    study = ingest(measured)
    tree = study.files

    total = scan["counts"].sum(axis=(1, 2)).mean()
    dose = float(f"{total:.2g}")
    assert set(tree) == {
        Job(dose, view, split)
        for view in ("baseline", "dense", "sparse")
        for split in ("train", "test")
    }
    train, test = (
        tree[Job(dose, "baseline", "train")],
        tree[Job(dose, "baseline", "test")],
    )
    assert study.n_patterns == len(train["xcoords"]) + len(test["xcoords"]) == 144
    assert study.source == str(tmp_path / "s.cxi")
    for job, arrays in tree.items():
        validate(arrays, job.input_relpath)  # raises on a broken contract
    metadata = read_metadata(train)
    assert metadata["ground_truth"] is False and metadata["intensity_scale"] == 1.0
    assert metadata["photon_energy_eV"] == pytest.approx(6200.0)
    assert metadata["geometry_from_parameters"] == []
    assert metadata["bad_pixels"] == len(BAD)
    centre = (scan["x_m"].min() + scan["x_m"].max()) / 2
    assert metadata["object_centre_x_m"] == pytest.approx(centre)
    # Amplitudes are sqrt(counts), the dead pixels zero; positions keep their spacing.
    rows = train["scan_index"]
    expected = np.sqrt(scan["counts"][rows].astype(np.float32))
    for pixel in BAD:
        expected[(slice(None), *pixel)] = 0
    np.testing.assert_allclose(train["diffraction"], expected, rtol=1e-6)
    assert train["bad_pixels"].sum() == len(BAD)
    pixel = GEOMETRY.object_pixel_m(scan["counts"].shape[-1])
    np.testing.assert_allclose(
        np.diff(train["xcoords"]), np.diff(scan["x_m"][rows]) / pixel, atol=1e-9
    )
    assert np.all(train["ycoords"] < test["ycoords"].min())  # split by y
    assert np.ptp(np.abs(train["objectGuess"])) == 0  # flat: no ground truth
    dense = tree[Job(dose, "dense", "train")]
    assert 0 < len(dense["xcoords"]) < len(train["xcoords"])
    assert set(dense["scan_index"]) <= set(train["scan_index"])


@pytest.mark.parametrize("diameter_px", [None, 20.0])
def test_a_probe_guess_has_the_patterns_power_at_its_centre(
    tmp_path, scan, diameter_px
):
    measured = ScanFileDataset(str(write_cxi(tmp_path / "s.cxi", scan)), "cxi").load()
    counts, _ = nodes.photon_counts(measured)

    probe, origin = nodes.probe_guess(measured, counts, diameter_px)

    power = (np.abs(probe) ** 2).sum()
    assert power == pytest.approx(counts.sum(axis=(1, 2)).mean(), rel=1e-4)
    centre = np.unravel_index(np.argmax(np.abs(probe)), probe.shape)
    if diameter_px:
        assert origin == "flat disc, 20 px across"
        assert beam.probe_diameter(probe) == pytest.approx(0.87 * 20, rel=0.1)
    else:
        assert np.allclose(centre, np.array(probe.shape) // 2, atol=2)


def test_the_beam_diameter_makes_a_measured_scan_overlap(tmp_path, scan):
    measured = ScanFileDataset(str(write_cxi(tmp_path / "s.cxi", scan)), "cxi").load()
    beam_m = 20 * GEOMETRY.object_pixel_m(scan["counts"].shape[-1])

    guessed, given = (
        read_metadata(
            nodes.measured_phase_c(
                measured, {"dose": None, "probe_diameter_m": d}, NOMINAL, SIMULATE
            )["train"]
        )
        for d in (None, beam_m)
    )

    assert guessed["measured_overlap"] < 0.05 < given["measured_overlap"]


def test_ptychodus_reads_the_same_scan_by_its_reader_name(tmp_path, scan):
    pytest.importorskip("ptychodus")
    path = str(write_cxi(tmp_path / "s.cxi", scan))

    ours = ScanFileDataset(path, "cxi").load()
    theirs = ScanFileDataset(path, "CXI").load()

    np.testing.assert_array_equal(theirs.counts, ours.counts)
    np.testing.assert_allclose(theirs.positions_m, ours.positions_m)
    assert theirs.geometry == pytest.approx(ours.geometry)
    np.testing.assert_array_equal(theirs.bad_pixels, ours.bad_pixels)


def test_a_ptychodus_reader_without_ptychodus_names_the_install(
    tmp_path, scan, monkeypatch
):
    real_import = builtins.__import__

    def no_ptychodus(name, *args, **kwargs):
        if name.startswith("ptychodus"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ptychodus)
    path = write_cxi(tmp_path / "s.cxi", scan)

    with pytest.raises(ScanFileError, match="APS_Velociprobe") as error:
        ScanFileDataset(str(path), "APS_Velociprobe").load()
    assert PTYCHODUS_INSTALL in str(error.value)


def test_an_unknown_reader_is_named_with_the_ones_there_are(tmp_path, scan):
    pytest.importorskip("ptychodus")
    path = write_cxi(tmp_path / "s.cxi", scan)

    with pytest.raises(ScanFileError, match='No plugin matches "Beamline_X"'):
        ScanFileDataset(str(path), "Beamline_X").load()


@pytest.mark.parametrize(
    ("spoil", "fragment"),
    [
        ("no patterns", "none of entry_1/data_1/data, entry_1/instrument_1"),
        ("not HDF5", "not a readable HDF5 (CXI) file"),
        ("no file", "ingest.source does not exist"),
        ("unset", "ingest.source is not set"),
    ],
)
def test_a_file_that_is_no_scan_is_named_with_what_is_wrong(
    tmp_path, scan, spoil, fragment
):
    path = tmp_path / "s.cxi"
    if spoil == "no patterns":
        write_cxi(path, scan, patterns=True)
    elif spoil == "not HDF5":
        path.write_text("counts,x,y\n")

    source = None if spoil == "unset" else str(path)
    with pytest.raises(ScanFileError, match=re.escape(fragment)) as error:
        ScanFileDataset(source, "cxi").load()
    if source:
        assert str(error.value).startswith(str(path))


def test_patterns_and_positions_that_do_not_pair_are_refused(tmp_path, scan):
    short = {**scan, "x_m": scan["x_m"][:-1], "y_m": scan["y_m"][:-1]}
    measured = ScanFileDataset(str(write_cxi(tmp_path / "s.cxi", short)), "cxi")

    with pytest.raises(nodes.IngestError, match="144 patterns but 143 positions"):
        ingest(measured.load())


@pytest.mark.e2e
def test_kedro_ingests_a_cxi_scan_and_reconstructs_it(tmp_path, scan):
    """``kedro run --pipeline ingest``, then the baseline on the tree it wrote."""
    (tmp_path / "project").mkdir()
    project = make_tiny_project(tmp_path / "project", (1000.0,))
    source = write_cxi(tmp_path / "scan.cxi", scan)
    roots = f"phase_c_root={tmp_path}/c,phase_d_root={tmp_path}/d"
    ingested = run_kedro(
        project,
        "run",
        "--env",
        "tiny",
        "--pipeline",
        "ingest",
        "--params",
        f"ingest.source={source},{roots}",
    )
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    assert f"Ingested {source}: 144 patterns, dose 10000; 6 files in" in ingested.stdout
    assert (
        'Next: kedro run --pipeline ptychi_baseline --params "study.doses=[10000.0]'
        in (ingested.stdout)
    )
    (baseline,) = (tmp_path / "c").glob("dose_*/patched_train.npz")
    dose = read_metadata(NPZDataset(filepath=str(baseline)).load())["dose"]

    run = run_kedro(
        project,
        "run",
        "--env",
        "tiny",
        "--pipeline",
        "ptychi_baseline",
        "--params",
        f"study.doses=[{dose}],{roots},artifact_root={tmp_path}/out",
        timeout=900,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    manifest = json.loads(
        (tmp_path / "out" / "reconstruction_manifest.json").read_text()
    )
    statuses = {job["namespace"]: job["status"] for job in manifest["jobs"]}
    assert len(statuses) == 6 and set(statuses.values()) == {"succeeded"}
