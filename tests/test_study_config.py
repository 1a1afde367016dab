"""The study design comes from Kedro's configuration, for the pipelines and the catalog.

Whatever chooses the configuration (``--env``, ``--conf-source``, runtime ``--params``)
gives the pipelines and the manifest the same jobs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_project
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from fly64_recon import config, pipeline_registry
from fly64_recon.record import JobRecord, JobStatus
from fly64_recon.study import Job, StudyDesign

DESIGN = {"views": ["dense"], "splits": ["test"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project: base has the default design; ``tiny`` one dose, dense, test."""
    return make_tiny_project(
        tmp_path_factory.mktemp("design"), (1000.0,), design=DESIGN
    )


def jobs_seen(project: Path, artifacts: Path, **session: object) -> tuple[list, list]:
    """The jobs of the ``ptychi_baseline`` pipeline and of the manifest, one session."""
    bootstrap_project(project)
    runtime = {"artifact_root": str(artifacts), **session.pop("runtime_params", {})}
    with KedroSession.create(
        project_path=project, runtime_params=runtime, **session
    ) as created:
        catalog = created.load_context().catalog
        built = sorted({node.namespace for node in pipelines["ptychi_baseline"].nodes})
        record = JobRecord(Job.from_namespace(built[0]), JobStatus.PLANNED)
        catalog.save(f"{built[0]}.manifest_entry", record)
    manifest = json.loads((artifacts / "reconstruction_manifest.json").read_text())
    return built, sorted(job["namespace"] for job in manifest["jobs"])


def test_env_chooses_the_design(project, tmp_path):
    built, listed = jobs_seen(project, tmp_path, env="tiny")

    assert built == listed == ["dose_1e3.dense.test"]  # conf/base has 18 jobs


def test_runtime_params_change_the_design(project, tmp_path):
    params = {"study": {"doses": [100000.0], "splits": ["train", "test"]}}

    built, listed = jobs_seen(project, tmp_path, env="tiny", runtime_params=params)

    assert built == listed == ["dose_1e5.dense.test", "dose_1e5.dense.train"]


def test_conf_source_chooses_the_design(project, tmp_path):
    conf = shutil.copytree(project / "conf", tmp_path / "elsewhere")
    study = {"study": {"doses": [10000.0], **DESIGN}}
    (conf / "tiny" / "globals.yml").write_text(yaml.safe_dump(study))

    built, listed = jobs_seen(project, tmp_path, env="tiny", conf_source=str(conf))

    assert built == listed == ["dose_1e4.dense.test"]


def test_without_a_context_the_registry_reads_what_kedro_run_would(
    project, monkeypatch
):
    monkeypatch.chdir(project)
    monkeypatch.setenv("KEDRO_ENV", "tiny")
    monkeypatch.setattr(config, "_active", {})
    bootstrap_project(project)

    assert [job.namespace for job in config.pipeline_design().study.jobs()] == [
        "dose_1e3.dense.test"
    ]


OVERLAP = {"dense": 0.7, "sparse": 0.2}


def test_the_default_run_compares_only_when_models_are_declared(monkeypatch):
    design = config.PipelineDesign(StudyDesign(doses=(1e3,), overlap=OVERLAP), {})
    monkeypatch.setattr(pipeline_registry, "pipeline_design", lambda: design)
    without = pipeline_registry.register_pipelines()
    design = config.PipelineDesign(
        StudyDesign(doses=(1e3,), overlap=OVERLAP), {"pinn": "p/{dose}.npz"}
    )
    with_models = pipeline_registry.register_pipelines()

    assert "no_models" in {n.name for n in without["comparison"].nodes}
    assert not {n.name for n in without["__default__"].nodes} & {"no_models"}
    compares = {n.name for n in with_models["__default__"].nodes}
    assert "dose_1e3.dense.test.compare" in compares
