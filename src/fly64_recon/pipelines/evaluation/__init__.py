"""Evaluation: each job's metrics against its ground truth, and the study summary."""

from fly64_recon.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
