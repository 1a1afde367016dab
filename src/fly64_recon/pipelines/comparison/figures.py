"""The comparison's figures: one job's reconstructions side by side; metrics vs dose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullLocator

from fly64_recon.pipelines.reporting import card
from fly64_recon.record import BASELINE, ScoreStatus
from fly64_recon.science.metrics import METRICS
from fly64_recon.study import VIEWS, Job, dose_label

PARTS = ("phase", "amplitude")
SPLIT_STYLES = {"test": "-", "train": "--"}
REFERENCE_COLOUR = "0.55"
IMAGE_KEYS = ("truth", "mask")


def comparison_figure(images: Mapping[str, np.ndarray], job: Job) -> Figure:
    """Truth and every reconstruction, phase and amplitude, then error maps on one scale."""
    names = [name for name in images if name not in IMAGE_KEYS]
    if not names:
        return card(f"{job.namespace}: no reconstruction was scored against a truth")
    rows = panel_rows(images, names)
    height, width = images["truth"].shape
    figure = Figure(
        figsize=(2.6 * (len(names) + 1) + 1.2, 2.6 * len(rows) * height / width + 0.9)
    )
    figure.subplots_adjust(
        left=0.05, right=0.9, bottom=0.02, top=0.9, wspace=0.05, hspace=0.15
    )
    axes = figure.subplots(len(rows), len(names) + 1, squeeze=False)
    for row, (label, cmap, (vmin, vmax), panels) in enumerate(rows):
        for col, name in enumerate(["truth", *names]):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("pty-chi" if name == BASELINE else name, fontsize=9)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if name in panels:
                shown = ax.imshow(panels[name], cmap=cmap, vmin=vmin, vmax=vmax)
            else:  # error rows: the truth column shows where errors are measured
                ax.imshow(images["mask"], cmap="gray", vmin=0, vmax=1)
                ax.set_xlabel("scored (lit) pixels", fontsize=7)
        colorbar = figure.colorbar(shown, ax=axes[row, :], shrink=0.85, pad=0.01)
        colorbar.locator = MaxNLocator(4)
    figure.suptitle(f"{job.namespace}: reconstructions aligned to the ground truth")
    return figure


def panel_rows(
    images: Mapping[str, np.ndarray], names: list[str]
) -> list[tuple[str, str, tuple[float, float], dict[str, np.ndarray]]]:
    """Label, colour map, limits and images of each row: phase, amplitude, errors."""
    truth, mask = images["truth"], images["mask"]
    phase = {name: np.angle(images[name]) for name in ["truth", *names]}
    amplitude = {name: np.abs(images[name]) for name in ["truth", *names]}
    phase_error = {
        name: np.where(mask, np.angle(images[name] * np.conj(truth)), np.nan)
        for name in names
    }
    amplitude_error = {
        name: np.where(mask, amplitude[name] - amplitude["truth"], np.nan)
        for name in names
    }
    return [
        ("phase (rad)", "twilight", _range(phase["truth"], mask), phase),
        ("amplitude", "gray", _range(amplitude["truth"], mask), amplitude),
        ("phase error (rad)", "RdBu_r", _symmetric(phase_error), phase_error),
        ("amplitude error", "RdBu_r", _symmetric(amplitude_error), amplitude_error),
    ]


def _symmetric(errors: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """One colour scale for a row of error maps: +-99th percentile of |error|."""
    values = np.concatenate([np.abs(e[np.isfinite(e)]) for e in errors.values()])
    limit = float(np.percentile(values, 99)) if values.size else 0.0
    return -(limit or 1.0), limit or 1.0


def _range(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Display limits of a truth image over its lit pixels."""
    low, high = np.percentile(image[mask], [0.5, 99.5])
    return float(low), float(high)


def metrics_vs_dose_figure(table: pd.DataFrame) -> Figure:
    """Each metric against dose: a column per part and view, a line per model and split.

    The flat-object null reference of the pty-chi baseline's mask is grey dashed; the
    phase noise floor is grey dotted on the phase MAE panels.
    """
    scored = table[table["status"] == ScoreStatus.SCORED.value]
    if scored.empty:
        return card("comparison versus dose: nothing was scored against a ground truth")
    views = [view for view in VIEWS if view in set(scored["view"])]
    columns = [(part, view) for part in PARTS for view in views]
    models = [BASELINE, *sorted(set(scored["model"]) - {BASELINE})]
    colours = {
        name: "k" if name == BASELINE else f"C{i}" for i, name in enumerate(models)
    }
    figure = Figure(figsize=(3.1 * len(columns), 2.3 * len(METRICS) + 0.8))
    figure.subplots_adjust(
        left=0.06, right=0.98, bottom=0.05, top=0.93, wspace=0.35, hspace=0.45
    )
    axes = figure.subplots(len(METRICS), len(columns), squeeze=False)
    for row, metric in enumerate(METRICS):
        for col, (part, view) in enumerate(columns):
            ax = axes[row, col]
            rows = scored[(scored["metric"] == metric.name) & (scored["view"] == view)]
            _dose_panel(ax, rows, part, metric.name, colours)
            ax.set_title(f"{view}: {metric.heading(part)}", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    figure.supxlabel("dose (photons per pattern)", fontsize=9)
    figure.suptitle("Every reconstruction against dose, scored on the same masks")
    return figure


def _dose_panel(
    ax: Any, rows: pd.DataFrame, part: str, metric: str, colours: dict[str, str]
) -> None:
    """One metric of one view: a line per model and split, the baseline's references."""
    for (model, split), group in rows.sort_values("dose").groupby(["model", "split"]):
        dose, style = group["dose"], SPLIT_STYLES.get(split, ":")
        ax.plot(
            dose,
            _finite(group[part]),
            style,
            marker="o",
            color=colours[model],
            label=f"{model} {split}",
        )
        if model != BASELINE:
            continue
        references = [("flat object", "--", group[f"null_{part}"])]
        if (part, metric) == ("phase", "mae"):
            references.append(("noise floor", ":", group["phase_noise_floor"]))
        for name, line, values in references:
            ax.plot(
                dose,
                _finite(values),
                line,
                marker="_",
                color=REFERENCE_COLOUR,
                label=f"{name} {split}",
            )
    doses = sorted(set(rows["dose"]))
    ax.set_xscale("log")
    # Fixed dose ticks, no minor ones, no mathtext: tick labels are most of the drawing.
    ax.xaxis.set_major_locator(FixedLocator(doses))
    ax.xaxis.set_major_formatter(FixedFormatter([dose_label(d) for d in doses]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.tick_params(labelsize=7)


def _finite(values: pd.Series) -> pd.Series:
    """Infinite values (a perfect PSNR) as gaps."""
    return values.replace([np.inf, -np.inf], np.nan)
