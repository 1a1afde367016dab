"""The per-job summary figure: amplitude, phase, probe, loss curve; probe mode powers
when the probe has more than one mode."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator

from fly64_recon.record import JobRecord


def job_figure(record: JobRecord, arrays: dict[str, np.ndarray] | None) -> Figure:
    """The reconstruction at a glance, or a card saying why there is none."""
    title = f"{record.namespace} — {record.engine}, status {record.status}"
    if not record.status.has_reconstruction or arrays is None:
        figure = Figure(figsize=(6, 2))
        figure.text(0.02, 0.6, title, fontsize=11)
        figure.text(0.02, 0.3, str(record.reason), fontsize=8, wrap=True)
        return figure
    obj = arrays["reconstructed_object"]
    modes = arrays["reconstructed_probe"]
    modes = modes.reshape(-1, *modes.shape[-2:])
    probe = modes[0]
    panels = 4 if len(modes) == 1 else 5
    # A fixed layout: "constrained" draws the figure twice (~2x the time of a save).
    figure = Figure(figsize=(3.5 * panels, 3.6))
    figure.subplots_adjust(left=0.01, right=0.98, bottom=0.14, top=0.8, wspace=0.4)
    axes = figure.subplots(1, panels)
    panels = (
        (np.abs(obj), "object amplitude", "gray"),
        (np.angle(obj), "object phase (rad)", "twilight"),
        (np.abs(probe), "probe amplitude (mode 0)", "magma"),
    )
    for ax, (image, label, cmap) in zip(axes, panels, strict=False):
        shown = ax.imshow(image, cmap=cmap)
        ax.set_title(label)
        ax.set_axis_off()
        # Few ticks, no minor ones: tick artists are most of the drawing time.
        colorbar = figure.colorbar(shown, ax=ax, shrink=0.8)
        colorbar.locator = MaxNLocator(4)
        colorbar.minorticks_off()
    loss = arrays["loss"]
    axes[3].semilogy(np.arange(len(loss)), loss, marker=".")
    axes[3].yaxis.set_minor_locator(NullLocator())
    axes[3].yaxis.set_major_formatter(LogFormatter())  # "1e-2": no mathtext to parse
    axes[3].set_xlabel("epoch")
    axes[3].set_ylabel("loss")
    axes[3].set_title(f"final loss {loss[-1]:.4g}")
    if len(modes) > 1:
        mode_powers(axes[4], modes)
    figure.suptitle(title)
    return figure


def mode_powers(ax: Axes, modes: np.ndarray) -> None:
    """Each probe mode's share of the probe's power, as bars."""
    power = np.sum(np.abs(modes) ** 2, axis=(-2, -1))
    share = power / power.sum()
    ax.bar(np.arange(len(share)), share)
    ax.set_xticks(np.arange(len(share)))
    ax.set_xlabel("probe mode")
    ax.set_ylabel("share of power")
    ax.set_title("mode powers: " + ", ".join(f"{v:.3f}" for v in share))
