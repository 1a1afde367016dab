"""The simulate pipeline: writes a synthetic Phase C/D study (the embedded default)."""

from fly64_recon.pipelines.simulate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
