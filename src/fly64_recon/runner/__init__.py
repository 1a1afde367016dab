"""The project's runners.

- :class:`PoolRunner` (``pool.py``), the default of ``kedro run``: independent jobs at
  once in worker processes on this machine; no extra install.
- ``DaskRunner`` (``dask.py``): the jobs on a Dask cluster. It needs the ``dask``
  extra, imported only when the runner is asked for::

      kedro run --runner fly64_recon.runner.DaskRunner
"""

from __future__ import annotations

import importlib
from typing import Any

from fly64_recon.runner.pool import PoolRunner

DASK_EXTRA = 'pip install "fly64_recon[dask]"'

__all__ = ["DASK_EXTRA", "MissingExtraError", "PoolRunner"]


class MissingExtraError(ImportError):
    """An optional part of the project needs a package that is not installed."""


def __getattr__(name: str) -> Any:
    """``DaskRunner`` from ``dask.py``, imported on first use."""
    if name != "DaskRunner":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module("fly64_recon.runner.dask")
    except ModuleNotFoundError as missing:
        if missing.name and missing.name.split(".")[0] in ("dask", "distributed"):
            raise MissingExtraError(
                f"The Dask runner needs Dask, which is not installed: {DASK_EXTRA}"
            ) from None
        raise
    return module.DaskRunner
