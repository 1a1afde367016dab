"""Comparison: other reconstructions of each job scored beside the pty-chi baseline."""

from fly64_recon.pipelines.comparison.pipeline import create_pipeline

__all__ = ["create_pipeline"]
