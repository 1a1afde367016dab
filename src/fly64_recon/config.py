"""The study design (and the models to compare), read from the active Kedro context.

The pipelines are instantiated per dose, view and split, so the registry needs the
``study`` parameters. Kedro calls ``register_pipelines()`` without arguments, and not
always at the same moment (kedro-org/kedro#3093), but ``kedro run``, ``kedro viz``,
``kedro ipython`` and ``kedro catalog`` all create their ``KedroContext`` before they
first read the pipelines. So the project's context class (``settings.CONTEXT_CLASS``,
Kedro's own setting for it) hands its config loader to this module when it is created,
and the registry reads the design from it: with the same ``--env``, ``--conf-source``
and runtime ``--params`` as the catalog and the run. A hook could not do this:
``kedro viz`` runs without the project's hooks. A command that reads the pipelines with
no context yet (``kedro registry list``) gets the one ``kedro run`` would create.

Kedro reads the pipelines once per process (``bootstrap_project`` and ``%reload_kedro``
start over), as it always has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kedro.config import AbstractConfigLoader
from kedro.framework.context import KedroContext

from fly64_recon.study import StudyDesign

_active: dict[str, AbstractConfigLoader] = {}


class StudyContext(KedroContext):
    """Kedro's context; the pipelines are built from its configuration's study design."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _active["config_loader"] = self.config_loader


@dataclass(frozen=True)
class PipelineDesign:
    """What the pipelines are built from: the study's jobs and the models to compare."""

    study: StudyDesign
    models: dict[str, str]


def pipeline_design() -> PipelineDesign:
    """The active context's ``study`` and ``comparison.models`` (``--params`` included)."""
    loader = _active.get("config_loader")
    if loader is None:  # a config loader is a mapping: empty until read, so falsy
        loader = _session_config_loader()
    parameters = loader["parameters"]
    comparison = parameters.get("comparison") or {}
    return PipelineDesign(
        StudyDesign.from_params(parameters["study"]),
        dict(comparison.get("models") or {}),
    )


def _session_config_loader() -> AbstractConfigLoader:
    """The config loader of the context a plain ``kedro run`` here would create."""
    from kedro.framework.session import KedroSession  # noqa: PLC0415 - a rare fallback

    with KedroSession.create(save_on_close=False) as session:
        return session.load_context().config_loader
