"""Project pipelines."""

from kedro.pipeline import Pipeline

from fly64_recon.config import load_comparison_models, load_study_design
from fly64_recon.pipelines.comparison import pipeline as comparison
from fly64_recon.pipelines.evaluation import pipeline as evaluation
from fly64_recon.pipelines.ptychi_baseline import pipeline as ptychi_baseline
from fly64_recon.pipelines.simulate import pipeline as simulate


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines; the default runs them all.

    Every pipeline is built from one reading of the study design in the active
    environment's configuration; the pipelines themselves read no configuration.
    """
    design = load_study_design()
    pipelines = {
        "simulate": simulate.create_pipeline(design=design),
        "ptychi_baseline": ptychi_baseline.create_pipeline(design=design),
        "evaluation": evaluation.create_pipeline(design=design),
        "comparison": comparison.create_pipeline(
            design=design, models=load_comparison_models()
        ),
    }
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
