"""The study summary's figures: phase grid, metrics versus dose, convergence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fly64_recon.pipelines.reporting import card
from fly64_recon.science.metrics import HEADLINE
from fly64_recon.study import VIEWS, Job, dose_label

REFERENCE_COLOUR = "0.45"
SPLIT_STYLES = {"test": "-", "train": "--"}


def _views(views: set[str]) -> list[str]:
    return [view for view in VIEWS if view in views]


def phase_grid_figure(phases: Mapping[str, np.ndarray]) -> Figure:
    """Aligned reconstructed phase, doses down, views across, on one colour scale."""
    if not phases:
        return card("phase grid: no evaluated reconstruction of this split")
    jobs = {Job.from_namespace(name): image for name, image in phases.items()}
    doses = sorted({job.dose for job in jobs})
    views = _views({job.view for job in jobs})
    split = next(iter(jobs)).split
    values = np.concatenate([image.ravel() for image in jobs.values()])
    vmin, vmax = np.percentile(values, [0.5, 99.5])
    height, width = next(iter(jobs.values())).shape
    figure = Figure(
        figsize=(3.2 * len(views) + 1, 3.2 * len(doses) * height / width + 0.8),
        layout="constrained",
    )
    axes = figure.subplots(len(doses), len(views), squeeze=False)
    shown = None
    for row, dose in enumerate(doses):
        for col, view in enumerate(views):
            ax = axes[row, col]
            ax.set_axis_off()
            image = jobs.get(Job(dose, view, split))
            ax.set_title(f"dose {dose_label(dose)}, {view}", fontsize=9)
            if image is not None:
                shown = ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax)
    figure.colorbar(shown, ax=axes, shrink=0.6, label="phase (rad)")
    figure.suptitle(f"Reconstructed phase, {split} split (aligned to the ground truth)")
    return figure


def metrics_vs_dose_figure(table: pd.DataFrame) -> Figure:
    """Amplitude and phase metrics against dose, one line per view and split; the MAE
    panels show the null reference (dash-dot) and the phase noise floor (dotted)."""
    if table.empty:
        return card("metrics versus dose: no job was measured against a ground truth")
    figure = Figure(figsize=(4 * len(HEADLINE), 6.5), layout="constrained")
    axes = figure.subplots(2, len(HEADLINE), squeeze=False)
    colours = {view: f"C{i}" for i, view in enumerate(VIEWS)}
    for row, part in enumerate(("amplitude", "phase")):
        for col, metric in enumerate(HEADLINE):
            ax = axes[row, col]
            rows = table[table["metric"] == metric.name].sort_values("dose")
            for (view, split), group in rows.groupby(["view", "split"]):
                ax.plot(
                    group["dose"],
                    group[part],
                    SPLIT_STYLES.get(split, ":"),
                    marker="o",
                    color=colours[view],
                    label=f"{view} {split}",
                )
                if metric.name == "mae":
                    _references(ax, group, part, colours[view])
            ax.set_xscale("log")
            ax.set_xlabel("dose (photons per pattern)")
            ax.set_title(metric.heading(part))
    axes[0, 0].legend(fontsize=8)
    figure.suptitle("Reconstruction quality against dose")
    return figure


def _references(ax: Any, group: pd.DataFrame, part: str, colour: str) -> None:
    """A view's null reference and, for the phase, its noise floor, thin and pale."""
    ax.plot(group["dose"], group[f"null_{part}"], "-.", color=colour, alpha=0.5, lw=1)
    if part == "phase":
        ax.plot(group["dose"], group["phase_noise_floor"], ":", color=colour, lw=1)


def convergence_figure(all_metrics: Sequence[dict[str, Any]]) -> Figure:
    """LSQML loss per epoch of every job, one panel per view, one colour per dose."""
    fitted = [job for job in all_metrics if "data_fit" in job]
    if not fitted:
        return card("convergence: no job has a loss curve")
    views = _views({job["view"] for job in fitted})
    doses = sorted({job["dose"] for job in fitted})
    colours = {dose: f"C{i}" for i, dose in enumerate(doses)}
    figure = Figure(figsize=(4.5 * len(views), 3.8), layout="constrained")
    axes = figure.subplots(1, len(views), squeeze=False)[0]
    for ax, view in zip(axes, views, strict=True):
        for job in fitted:
            if job["view"] != view:
                continue
            loss = job["data_fit"]["loss"]
            ax.semilogy(
                np.arange(len(loss)),
                loss,
                SPLIT_STYLES.get(job["split"], ":"),
                color=colours[job["dose"]],
                label=f"dose {dose_label(job['dose'])} {job['split']}",
            )
        ax.set_title(view)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    figure.suptitle("LSQML convergence")
    return figure
