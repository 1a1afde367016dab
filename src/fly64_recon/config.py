"""Read the study design from the project's configuration.

Kedro builds pipelines before it reads parameters, but this project's pipelines are
instantiated per dose, view and split, so the registry reads the design itself, with the
same loader, environment (``--env`` / ``KEDRO_ENV``) and runtime-parameter rules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.framework.project import settings
from kedro.utils import find_kedro_project

from fly64_recon.study import StudyDesign


def project_conf_source(start: Path | None = None) -> Path:
    """The ``conf`` folder of the Kedro project that contains ``start`` (default: cwd)."""
    root = find_kedro_project(start or Path.cwd())
    if root is None:
        raise RuntimeError(
            f"{start or Path.cwd()} is not inside a Kedro project (no pyproject.toml "
            "with [tool.kedro])"
        )
    return root / "conf"


def load_parameters(
    conf_source: Path | None = None, env: str | None = None
) -> dict[str, Any]:
    """The parameters of the active environment, read with Kedro's loader and rules."""
    loader = OmegaConfigLoader(
        conf_source=str(conf_source or project_conf_source()),
        env=env or os.environ.get("KEDRO_ENV"),
        base_env="base",
        default_run_env="local",
        merge_strategy=settings.CONFIG_LOADER_ARGS.get("merge_strategy"),
    )
    return loader["parameters"]


def load_study_design(
    conf_source: Path | None = None, env: str | None = None
) -> StudyDesign:
    """The ``study`` parameters of the active environment as a StudyDesign."""
    return StudyDesign.from_params(load_parameters(conf_source, env)["study"])


def load_comparison_models(
    conf_source: Path | None = None, env: str | None = None
) -> dict[str, str]:
    """``comparison.models`` of the active environment: model name -> path pattern."""
    comparison = load_parameters(conf_source, env).get("comparison") or {}
    return dict(comparison.get("models") or {})
