"""compare -> plot_comparison per job namespace (the job's pty-chi score read from its
evaluation's metrics.json); the study's comparison fans in from disk."""

from collections.abc import Mapping

from kedro.pipeline import Node, Pipeline

from fly64_recon.pipelines import bind
from fly64_recon.pipelines.comparison.figures import (
    comparison_figure,
    metrics_vs_dose_figure,
)
from fly64_recon.pipelines.comparison.models import check_models
from fly64_recon.pipelines.comparison.nodes import (
    collect_comparisons,
    compare,
    comparison_report,
    comparison_table,
    explain_no_models,
)
from fly64_recon.study import Job, StudyDesign


def create_pipeline(*, design: StudyDesign, models: Mapping[str, str]) -> Pipeline:
    """Each job's comparison in its namespace, then the study's.

    Without models: one node that says how to declare them, so that
    ``kedro run --pipeline comparison`` explains instead of failing.
    """
    names = list(check_models(models))
    if not names:
        return Pipeline(
            [Node(explain_no_models, "params:comparison", None, name="no_models")]
        )
    jobs = design.jobs()
    comparisons = sum((job_pipeline(job, names) for job in jobs), Pipeline([]))
    return comparisons + summary_pipeline(jobs)


def model_dataset(job: Job, model: str) -> str:
    """A model's file for a job: ``comparison__pinn__dose_10000__dense__test``."""
    return f"comparison__{model}__{job.dose_dir}__{job.view}__{job.split}"


def job_pipeline(job: Job, names: list[str]) -> Pipeline:
    """One job's comparison, in the job's namespace ``dose_1e4.dense.test``."""
    models = {f"model__{name}": model_dataset(job, name) for name in names}
    return Pipeline(
        [
            Node(
                bind(compare, job=job, names=names),
                [
                    "job_artifacts",
                    "ground_truth_npz",
                    "params:scoring",
                    "metrics",
                    *models,
                ],
                ["comparison", "comparison_images"],
                name="compare",
            ),
            Node(
                bind(comparison_figure, job=job),
                "comparison_images",
                "comparison_plot",
                name="plot_comparison",
            ),
        ],
        namespace=job.namespace,
        inputs={"ground_truth_npz": f"{job.input_dataset}@source", **models},
        parameters={"params:scoring"},
        tags=["comparison", job.view, job.split],
    )


def summary_pipeline(jobs: list[Job]) -> Pipeline:
    """Every job's ``comparison.json`` in; the table, report and figure out."""
    comparisons = [f"{job.namespace}.comparison" for job in jobs]
    return Pipeline(
        [
            Node(
                bind(collect_comparisons, jobs=jobs),
                comparisons,
                "all_comparisons",
                name="collect_comparisons",
            ),
            Node(comparison_table, "all_comparisons", "metrics_table", name="tabulate"),
            Node(comparison_report, "all_comparisons", "report", name="write_report"),
            Node(
                metrics_vs_dose_figure,
                "metrics_table",
                "metrics_vs_dose",
                name="plot_metrics_vs_dose",
            ),
        ],
        namespace="comparison_summary",
        inputs=set(comparisons),
        tags=["comparison", "comparison_summary"],
    )
