"""What writing a job's ptychodus product (product.h5) costs, beside its NPZ.

For the embedded study's job shape and a full-scale one (random arrays of the job's
shapes: the cost depends on the sizes only), the median over repeats of: building the
product from the job's arrays and record (``job_product``) and making its HDF5 bytes
(``product_bytes``), against making the job's ``ptychi_reconstruction.npz`` bytes
(``npz_bytes``, compressed) that every job already writes. Bytes written beside.

Usage::

    python benchmarks/product_export.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml
from _common import machine, print_table

from fly64_recon.datasets.npz import npz_bytes
from fly64_recon.datasets.product import product_bytes
from fly64_recon.pipelines.ptychi_baseline.product import job_product, scan_geometry
from fly64_recon.record import JobRecord, JobStatus
from fly64_recon.study import Job

# (name, positions, N, object side)
SHAPES = (("embedded job", 512, 64, 512), ("full-scale job", 5152, 128, 464))
# The nominal geometry (conf/base/parameters_geometry.yml), the record's shape of it.
NOMINAL = yaml.safe_load(
    (Path(__file__).parents[1] / "conf/base/parameters_geometry.yml").read_text()
)["geometry"]


def job_arrays(positions: int, size: int, side: int) -> dict[str, np.ndarray]:
    """A job's reconstruction arrays of these shapes (random values)."""
    rng = np.random.default_rng(0)

    def complex_image(*shape: int) -> np.ndarray:
        return (rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)

    return {
        "reconstructed_object": complex_image(side, side),
        "reconstructed_probe": complex_image(1, 1, size, size),
        "xcoords": rng.uniform(size / 2, side - size / 2, positions),
        "ycoords": rng.uniform(size / 2, side - size / 2, positions),
        "pattern_index": np.arange(positions),
        "loss": rng.random(100),
    }


def median_s(action, repeats: int) -> tuple[float, bytes]:
    times, made = [], b""
    for _ in range(repeats):
        started = time.perf_counter()
        made = action()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    rows = []
    for name, positions, size, side in SHAPES:
        record = JobRecord(
            Job(1e4, "baseline", "test"),
            JobStatus.SUCCEEDED,
            engine="LSQML",
            options_fingerprint="x" * 64,
            photons_per_pattern=1e4,
            geometry=scan_geometry({}, NOMINAL, size),
        )
        arrays = job_arrays(positions, size, side)
        product_s, product = median_s(
            lambda arrays=arrays, record=record: product_bytes(
                job_product(record, arrays)
            ),
            args.repeats,
        )
        npz_s, npz = median_s(lambda arrays=arrays: npz_bytes(arrays), args.repeats)
        rows.append(
            [name, product_s, len(product) / 2**20, npz_s, len(npz) / 2**20]
            + [product_s / npz_s]
        )
        print(f"measured {name}", flush=True)
    print_table(
        "A job's ptychodus product beside its NPZ (median seconds, MiB)",
        ["job", "product.h5 s", "product MiB", "NPZ s", "NPZ MiB", "product / NPZ"],
        rows,
    )


if __name__ == "__main__":
    main()
