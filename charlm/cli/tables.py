"""Tables that several commands share: a metrics table, a label/value report, a compact listing."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from rich import box
from rich.cells import cell_len
from rich.table import Table

# Cells between two columns of a compact table (its padding, collapsed), and at its two edges.
COLUMN_GAP = 2
EDGES = 2


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
                  text_columns: int = 1, priorities: Optional[Sequence[int]] = None,
                  width: Optional[int] = None) -> Table:
    """A wide listing (`charlm runs`) without vertical rules, fitted to ``width`` columns.

    The first ``text_columns`` are left-aligned. No cell is ever cut: when the columns do not
    fit, whole columns are left out, the lowest priority (the largest number in ``priorities``)
    first, and the caption names them. The first column is always kept.
    """
    cells = [[str(v) for v in row] for row in rows]
    keep = list(range(len(columns)))
    if width is not None and priorities is not None:
        natural = [max([cell_len(columns[i])] + [cell_len(r[i]) for r in cells]) for i in keep]
        by_priority = sorted(keep[1:], key=lambda i: -priorities[i])
        while len(keep) > 1 and sum(natural[i] for i in keep) + COLUMN_GAP * (len(keep) - 1) + EDGES > width:
            keep.remove(by_priority.pop(0))
    dropped = [columns[i] for i in range(len(columns)) if i not in keep]
    caption = f"left out for width: {', '.join(dropped)} (wider terminal, or --json -)" if dropped else None
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, title_justify="left",
                  collapse_padding=True, pad_edge=False, caption=caption, caption_justify="left")
    for i in keep:
        table.add_column(columns[i], justify="left" if i < text_columns else "right", no_wrap=True,
                         overflow="fold")
    for row in cells:
        table.add_row(*[row[i] for i in keep])
    return table
