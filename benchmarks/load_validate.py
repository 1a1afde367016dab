"""Loading and validating a full-scale DATA-001 file: MB/s, and validation's share.

Usage (from the project root)::

    python benchmarks/load_validate.py [--repeats 5] [--dose 1e4]
        [--workdir /tmp/fly64_bench]

The file is the full-scale scan of conf/full (10304 positions, 128 x 128 patterns,
464 x 464 object), simulated once with the simulate nodes (both splits joined into one
file, metadata kept, so the DATA-001 totals check runs) and written twice with the
project's writer: deflate-compressed and stored. Then, interleaved over repeats (warm
page cache: the files were just written):

* ``np.load`` of every array (reference),
* ``NPZDataset.load`` (what the simulate -> evaluation pipelines read),
* ``NPZSource.load`` (what a job's ``validate`` node reads: bytes, parse, sha256),
  and its parts,
* ``contract.validate`` of the loaded arrays.

MB/s is array megabytes (10^6 bytes, uncompressed) per second. A separate, untimed
pass with tracemalloc gives each step's peak allocation.
"""

from __future__ import annotations

import argparse
import hashlib
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_WORKDIR,
    PROJECT,
    machine,
    median,
    peak_rss_mib,
    print_table,
)

from fly64_recon.contract import validate
from fly64_recon.datasets import NPZDataset, NPZSource, npz_bytes, parse_npz

MB = 1e6
JOINED = ("diffraction", "xcoords", "ycoords", "scan_index")


def full_scale_arrays(dose: float) -> dict[str, np.ndarray]:
    """One full-scale file: conf/full's scan at ``dose``, both splits joined."""
    import json  # noqa: PLC0415

    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from fly64_recon.pipelines.simulate import nodes  # noqa: PLC0415
    from fly64_recon.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415

    loader = OmegaConfigLoader(
        conf_source=str(PROJECT / "conf"), env="full", **CONFIG_LOADER_ARGS
    )
    params = loader["parameters"]["simulate"]
    probe, obj = nodes.make_probe(params), nodes.make_object(params)
    scan = nodes.make_scan(params)
    files = nodes.simulate_dose(
        probe, obj, scan, params, dose=dose, splits=("train", "test")
    )
    train, test = files["train"], files["test"]
    arrays = {k: np.concatenate([train[k], test[k]]) for k in JOINED}
    metadata = {**json.loads(str(train["_metadata"])), "split": "all"}
    metadata["n_positions"] = len(arrays["xcoords"])
    return {
        **train,
        **arrays,
        "_metadata": np.array(json.dumps(metadata)),
    }


def ensure_files(folder: Path, dose: float) -> dict[str, Path]:
    """The compressed and stored copies of the full-scale file (made once)."""
    paths = {
        "compressed": folder / f"full_dose_{dose:g}_compressed.npz",
        "stored": folder / f"full_dose_{dose:g}_stored.npz",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    arrays = full_scale_arrays(dose)
    print(f"simulated the full-scale file in {time.perf_counter() - started:.1f} s")
    for kind, path in paths.items():
        path.write_bytes(npz_bytes(arrays, compress=kind == "compressed"))
    return paths


def np_load(path: Path) -> dict[str, np.ndarray]:
    """Reference: numpy's own reader, every array."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def operations(path: Path) -> dict[str, Callable[[], Any]]:
    """The timed steps on one file; ``validate`` uses arrays loaded beforehand."""
    source = NPZSource(str(path))
    arrays = parse_npz(source.read_bytes(), str(path))
    data = source.read_bytes()
    return {
        "np.load (reference)": lambda: np_load(path),
        "NPZDataset.load": NPZDataset(filepath=str(path)).load,
        "NPZSource.load (validate node)": source.load,
        "  read bytes": source.read_bytes,
        "  parse_npz": lambda: parse_npz(data, str(path)),
        "  sha256": lambda: hashlib.sha256(data).hexdigest(),
        "contract.validate": lambda: validate(arrays, str(path)),
    }


def timed(operation: Callable[[], Any]) -> float:
    """Seconds one call takes; its result is dropped before the next call."""
    started = time.perf_counter()
    operation()
    return time.perf_counter() - started


def peak_allocation_mib(operation: Callable[[], Any]) -> float:
    """Peak memory one call allocates (tracemalloc, numpy buffers included)."""
    tracemalloc.start()
    operation()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def measure(paths: dict[str, Path], repeats: int) -> dict[tuple[str, str], dict]:
    """Time every step of both files, interleaved; then one tracemalloc pass."""
    ops = {kind: operations(path) for kind, path in paths.items()}
    seconds: dict[tuple[str, str], list[float]] = {
        (kind, name): [] for kind, named in ops.items() for name in named
    }
    for _ in range(repeats):
        for (kind, name), samples in seconds.items():
            samples.append(timed(ops[kind][name]))
    return {
        key: {"s": median(samples), "peak": peak_allocation_mib(ops[key[0]][key[1]])}
        for key, samples in seconds.items()
    }


def report(paths: dict[str, Path], results: dict, repeats: int) -> None:
    """MB/s per step and validation as a fraction of loading."""
    arrays = np_load(paths["stored"])
    array_mb = sum(a.nbytes for a in arrays.values()) / MB
    shape = arrays["diffraction"].shape
    rows = []
    for (kind, name), r in results.items():
        file_mb = paths[kind].stat().st_size / MB
        rows.append(
            [kind, f"{file_mb:.0f}", name, r["s"], f"{array_mb / r['s']:.0f}"]
            + [f"{r['peak']:.0f}"]
        )
    print_table(
        f"Full-scale file {shape} {arrays['diffraction'].dtype} + object "
        f"{arrays['objectGuess'].shape}: {array_mb:.0f} MB of arrays; {repeats} "
        "repeats, medians, warm page cache",
        ["file", "file MB", "step", "seconds", "array MB/s", "peak alloc MiB"],
        rows,
    )
    fractions = [
        [
            kind,
            results[(kind, "contract.validate")]["s"]
            / results[(kind, "NPZSource.load (validate node)")]["s"],
            results[(kind, "contract.validate")]["s"]
            / results[(kind, "NPZDataset.load")]["s"],
        ]
        for kind in paths
    ]
    print_table(
        "Validation time / load time (target <= 0.10)",
        ["file", "validate / NPZSource.load", "validate / NPZDataset.load"],
        fractions,
    )
    print(f"\npeak RSS of this process: {peak_rss_mib():.0f} MiB")


def main() -> None:
    """Make the files once, then measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dose", type=float, default=1e4)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    print(machine())
    paths = ensure_files(args.workdir / "full_scale", args.dose)
    report(paths, measure(paths, args.repeats), args.repeats)


if __name__ == "__main__":
    main()
