"""A progress bar for a long computation of the core, drawn from its progress callback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..events import ProgressCallback
from .app import get_console


@contextmanager
def progress_bar(label: str, wanted: bool = True) -> Iterator[Optional[ProgressCallback]]:
    """Yield a callback that draws a bar on stderr, or None (no bar) when ``wanted`` is False
    or stdout or stderr is not a terminal: a pipe, a file and `--json -` get only the result.
    The bar is transient: it leaves no trace once the result is printed."""
    out, err = get_console(), get_console(stderr=True)
    if not (wanted and out.is_terminal and err.is_terminal):
        yield None
        return
    columns = (TextColumn(label), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report
