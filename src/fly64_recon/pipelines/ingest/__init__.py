"""The ingest pipeline: a measured scan (CXI, a beamline's files) in as a study tree."""

from fly64_recon.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
