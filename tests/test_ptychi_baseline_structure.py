"""The study's structure: one job pipeline per namespace, selectable as users type it."""

import warnings

import pytest
from click.testing import CliRunner

from fly64_recon import cli
from fly64_recon.pipelines.ptychi_baseline import create_pipeline
from fly64_recon.study import StudyDesign

DESIGN = StudyDesign.from_params({"doses": [1000.0, 10000.0, 100000.0]})


@pytest.fixture(scope="module")
def pipeline():
    return create_pipeline(design=DESIGN)


def jobs_of(pipeline):
    return {node.namespace for node in pipeline.nodes}


def test_every_job_is_validate_reconstruct_record(pipeline):
    assert len(jobs_of(pipeline)) == 18
    node = {n.name: n for n in pipeline.nodes}
    assert node["dose_1e4.dense.test.validate"].inputs == [
        "phase_d__dose_10000__dense__dense_test@source",
        "params:ptychi_baseline",
    ]
    assert node["dose_1e4.baseline.test.validate"].inputs[0] == (
        "phase_c__dose_10000__patched_test@source"
    )
    assert node["dose_1e4.dense.test.reconstruct"].outputs == [
        "dose_1e4.dense.test.job_artifacts"
    ]
    assert node["dose_1e4.dense.test.record"].outputs == [
        "dose_1e4.dense.test.reconstruction_plot",
        "dose_1e4.dense.test.manifest_entry",
    ]


def test_one_dose_is_exactly_its_six_jobs(pipeline):
    selected = pipeline.only_nodes_with_namespaces(["dose_1e4"])
    assert jobs_of(selected) == {
        f"dose_1e4.{view}.{split}"
        for view in ("baseline", "dense", "sparse")
        for split in ("train", "test")
    }
    assert len(selected.nodes) == 18


def test_a_view_of_a_dose_is_its_two_jobs(pipeline):
    selected = pipeline.only_nodes_with_namespaces(["dose_1e4.dense"])
    assert jobs_of(selected) == {"dose_1e4.dense.train", "dose_1e4.dense.test"}


def test_the_test_split_of_every_dose_by_tag(pipeline):
    selected = pipeline.only_nodes_with_tags("test")
    assert jobs_of(selected) == {
        j.namespace for j in DESIGN.jobs() if j.split == "test"
    }


def test_validation_runs_before_any_reconstruction(pipeline):
    order = [node.name.rsplit(".", 1)[-1] for node in pipeline.nodes]
    assert order.index("reconstruct") > max(
        i for i, name in enumerate(order) if name == "validate"
    )


def test_namespace_alias_reaches_kedro_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli.kedro_run, "callback", lambda **kw: seen.update(kw))

    result = CliRunner().invoke(
        cli.cli,
        ["run", "--namespace", "dose_1e4", "--pipeline", "ptychi_baseline"],
    )

    assert result.exit_code == 0, result.output
    assert seen["namespaces"] == ["dose_1e4"]
    assert "runner" in seen and "params" in seen


def test_pipeline_reaches_kedro_as_pipelines_without_a_deprecation(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli.kedro_run, "callback", lambda **kw: seen.update(kw))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = CliRunner().invoke(
            cli.cli, ["run", "--pipeline", "ptychi_baseline", "--pipelines", "simulate"]
        )

    assert result.exit_code == 0, result.output
    assert seen["pipelines"] == ["simulate", "ptychi_baseline"]
    assert seen.get("pipeline") is None


def test_namespace_alias_adds_to_namespaces(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli.kedro_run, "callback", lambda **kw: seen.update(kw))

    CliRunner().invoke(
        cli.cli, ["run", "--namespaces", "dose_1e3", "--namespace", "dose_1e5.dense"]
    )

    assert seen["namespaces"] == ["dose_1e3", "dose_1e5.dense"]
