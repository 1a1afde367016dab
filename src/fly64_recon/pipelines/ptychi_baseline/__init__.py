"""pty-chi LSQML baseline reconstructions, one namespaced job per dose, view and split."""

from fly64_recon.pipelines.ptychi_baseline.pipeline import create_pipeline

__all__ = ["create_pipeline"]
