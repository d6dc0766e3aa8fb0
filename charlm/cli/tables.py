"""Tables that several commands share: a metrics table, a label/value report, a compact listing."""

from __future__ import annotations

from typing import Any, Sequence

from rich import box
from rich.table import Table


def metrics_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, header_style="bold")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


def kv_table(title: str, rows: Sequence[Sequence[Any]], show_lines: bool = False) -> Table:
    """Two left-aligned columns (label, value) for `info`-style reports; long values fold."""
    table = Table(title=title, show_header=False, show_lines=show_lines, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(str(label), str(value))
    return table


def compact_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  text_columns: int = 1, flexible: int = -1) -> Table:
    """A wide listing (`charlm runs`) without vertical rules, so it fits 80 columns.

    The first ``text_columns`` are left-aligned; column ``flexible`` (a file name) is cut to 14
    characters with an ellipsis, so the numbers keep their room.
    """
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, title_justify="left",
                  collapse_padding=True, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < text_columns else "right", no_wrap=True,
                         overflow="ellipsis", max_width=14 if i == flexible else None)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table
