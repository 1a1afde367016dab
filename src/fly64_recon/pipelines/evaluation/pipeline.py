"""evaluate -> report_metrics per job namespace; the study summary fans in from disk."""

from kedro.pipeline import Node, Pipeline

from fly64_recon.pipelines import bind
from fly64_recon.pipelines.evaluation.figures import (
    convergence_figure,
    metrics_vs_dose_figure,
    phase_grid_figure,
)
from fly64_recon.pipelines.evaluation.nodes import (
    aligned_phases,
    collect_metrics,
    evaluate,
    metrics_table,
    report_metrics,
)
from fly64_recon.pipelines.evaluation.report import summary_report
from fly64_recon.study import Job, StudyDesign


def create_pipeline(*, design: StudyDesign) -> Pipeline:
    """Every job's evaluation in its own namespace, then the study summary."""
    jobs = design.jobs()
    evaluations = sum((job_pipeline(job) for job in jobs), Pipeline([]))
    return evaluations + summary_pipeline(jobs)


def job_pipeline(job: Job) -> Pipeline:
    """One job's evaluation, in the job's namespace ``dose_1e4.dense.test``."""
    return Pipeline(
        [
            Node(
                bind(evaluate, job=job),
                ["job_artifacts", "ground_truth_npz", "params:scoring"],
                "metrics",
                name="evaluate",
            ),
            Node(
                report_metrics,
                ["metrics", "manifest_entry"],
                "manifest_metrics",
                name="report_metrics",
            ),
        ],
        namespace=job.namespace,
        inputs={"ground_truth_npz": f"{job.input_dataset}@source"},
        parameters={"params:scoring"},
        tags=["evaluation", job.view, job.split],
    )


def summary_pipeline(jobs: list[Job]) -> Pipeline:
    """Every job's ``metrics.json`` (and reconstruction) in, tables and figures out."""
    metrics = [f"{job.namespace}.metrics" for job in jobs]
    artifacts = [f"{job.namespace}.job_artifacts" for job in jobs]
    return Pipeline(
        [
            Node(
                bind(collect_metrics, jobs=jobs),
                metrics,
                "all_metrics",
                name="collect_metrics",
            ),
            Node(metrics_table, "all_metrics", "metrics_table", name="tabulate"),
            Node(summary_report, "all_metrics", "report", name="write_report"),
            Node(
                bind(aligned_phases, jobs=jobs),
                ["all_metrics", "params:evaluation", *artifacts],
                "grid_phases",
                name="align_phases",
            ),
            Node(
                phase_grid_figure, "grid_phases", "phase_grid", name="plot_phase_grid"
            ),
            Node(
                metrics_vs_dose_figure,
                "metrics_table",
                "metrics_vs_dose",
                name="plot_metrics_vs_dose",
            ),
            Node(
                convergence_figure,
                "all_metrics",
                "convergence",
                name="plot_convergence",
            ),
        ],
        namespace="study_summary",
        inputs={*metrics, *artifacts},
        parameters={"params:evaluation"},
        tags=["study_summary"],
    )
