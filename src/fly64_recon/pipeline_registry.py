"""Project pipelines."""

from kedro.pipeline import Pipeline

from fly64_recon.config import pipeline_design
from fly64_recon.pipelines.comparison import pipeline as comparison
from fly64_recon.pipelines.evaluation import pipeline as evaluation
from fly64_recon.pipelines.ingest import pipeline as ingest
from fly64_recon.pipelines.ptychi_baseline import pipeline as ptychi_baseline
from fly64_recon.pipelines.simulate import pipeline as simulate


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; the default runs them all.

    Every pipeline is built from one reading of the active Kedro context's
    configuration (the study design, the models to compare); the pipelines themselves
    read no configuration. With no model to compare, ``comparison`` only says so and
    the default run leaves it out.
    """
    design = pipeline_design()
    pipelines = {
        "simulate": simulate.create_pipeline(design=design.study),
        "ingest": ingest.create_pipeline(design=design.study),
        "ptychi_baseline": ptychi_baseline.create_pipeline(design=design.study),
        "evaluation": evaluation.create_pipeline(design=design.study),
        "comparison": comparison.create_pipeline(
            design=design.study, models=design.models
        ),
    }
    compared = ("comparison",) if design.models else ()
    pipelines["__default__"] = sum(
        (pipelines[name] for name in (*STUDY, *compared)), Pipeline([])
    )
    return pipelines


STUDY = ("simulate", "ptychi_baseline", "evaluation")
