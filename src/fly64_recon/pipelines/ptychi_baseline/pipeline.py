"""validate -> reconstruct -> record, written once, instantiated per job namespace."""

from kedro.pipeline import Node, Pipeline

from fly64_recon.pipelines import bind
from fly64_recon.pipelines.ptychi_baseline.nodes import (
    reconstruct,
    record,
    validate_input,
)
from fly64_recon.record import JOB_TAG
from fly64_recon.study import Job, StudyDesign


def create_pipeline(*, design: StudyDesign) -> Pipeline:
    """One job pipeline per job of the study design."""
    return sum((job_pipeline(job) for job in design.jobs()), Pipeline([]))


def job_pipeline(job: Job) -> Pipeline:
    """One job under namespace ``dose_1e4.dense.test``, reading its study file."""
    return Pipeline(
        [
            Node(
                bind(validate_input, job=job),
                ["input_npz", "params:ptychi_baseline"],
                "checked_input",
                name="validate",
            ),
            Node(
                reconstruct,
                ["checked_input", "previous_job_artifacts", "params:geometry"],
                "job_artifacts",
                name="reconstruct",
                tags=JOB_TAG,
            ),
            Node(
                record,
                "job_artifacts",
                ["reconstruction_plot", "manifest_entry"],
                name="record",
            ),
        ],
        namespace=job.namespace,
        inputs={"input_npz": f"{job.input_dataset}@source"},
        parameters={"params:ptychi_baseline", "params:geometry"},
        tags=["ptychi_baseline", job.view, job.split],
    )
