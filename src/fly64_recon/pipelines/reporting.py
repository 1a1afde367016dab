"""What the pipelines' reports share: a Markdown table and a card that says why a figure
has nothing to show."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    first_number: int = 3,
    end_number: int | None = None,
) -> list[str]:
    """A Markdown table's lines; the number columns (``first_number`` to
    ``end_number``, by default the last) align right."""
    end = len(header) if end_number is None else end_number
    align = ["---:" if first_number <= i < end else "---" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def card(text: str) -> Figure:
    """A small figure that says why there is nothing to plot."""
    figure = Figure(figsize=(7, 1.5))
    figure.text(0.02, 0.5, text, fontsize=10, wrap=True)
    return figure
