"""The simulate pipeline: shared ground truth, then Phase C and D files per dose."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from fly64_recon.pipelines import bind
from fly64_recon.pipelines.simulate import nodes
from fly64_recon.science import views
from fly64_recon.study import Job, StudyDesign, dose_namespace


def create_pipeline(*, design: StudyDesign) -> Pipeline:
    """Probe, object and scan once; per dose its Phase C splits and Phase D views."""
    ground_truth = Pipeline(
        [
            Node(nodes.make_probe, "params:simulate", "probe", name="make_probe"),
            Node(nodes.make_object, "params:simulate", "object", name="make_object"),
            Node(nodes.make_scan, "params:simulate", "scan", name="make_scan"),
        ],
        namespace="simulate",
        parameters={"params:simulate"},
    )
    return ground_truth + sum(
        (_dose_pipeline(design, dose) for dose in design.doses), Pipeline([])
    )


def _dose_pipeline(design: StudyDesign, dose: float) -> Pipeline:
    """One dose: Poisson patterns split by y, then every Phase D view of each split."""
    simulate = Node(
        bind(nodes.simulate_dose, dose=dose, splits=design.splits),
        ["probe", "object", "scan", "params:simulate"],
        {split: f"baseline_{split}" for split in design.splits},
        name="simulate_dose",
    )
    selections = [
        Node(
            bind(views.select_view, view=view, overlap=design.overlap_of(view)),
            [f"baseline_{split}", "params:simulate"],
            f"{view}_{split}",
            name=f"select_{view}_{split}",
        )
        for view in design.phase_d_views
        for split in design.splits
    ]
    return Pipeline(
        [simulate, *selections],
        namespace=f"simulate.{dose_namespace(dose)}",
        inputs={name: f"simulate.{name}" for name in ("probe", "object", "scan")},
        outputs={
            f"{view}_{split}": f"{Job(dose, view, split).input_dataset}@arrays"
            for view in ("baseline", *design.phase_d_views)
            for split in design.splits
        },
        parameters={"params:simulate"},
    )
