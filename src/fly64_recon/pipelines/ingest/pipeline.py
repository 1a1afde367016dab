"""The ingest pipeline: the scan read, its Phase C splits, its Phase D views, the tree."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from fly64_recon.pipelines import bind
from fly64_recon.pipelines.ingest import nodes
from fly64_recon.study import StudyDesign


def create_pipeline(*, design: StudyDesign) -> Pipeline:
    """``ingest.scan`` (the catalog reads it) to ``ingest.study_tree`` (one NPZ per
    job's input, in the dose folder the scan's photons name)."""
    selections = [
        Node(
            bind(nodes.measured_view, view=view, overlap=design.overlap_of(view)),
            ["phase_c", "params:simulate"],
            view,
            name=f"select_{view}",
        )
        for view in design.phase_d_views
    ]
    return Pipeline(
        [
            Node(
                nodes.measured_phase_c,
                ["scan", "params:ingest", "params:geometry", "params:simulate"],
                "phase_c",
                name="measured_phase_c",
            ),
            *selections,
            Node(
                nodes.study_tree,
                {"phase_c": "phase_c", **{v: v for v in design.phase_d_views}},
                "study_tree",
                name="study_tree",
            ),
        ],
        namespace="ingest",
        parameters={"params:ingest", "params:geometry", "params:simulate"},
    )
