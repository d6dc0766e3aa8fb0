"""Small helpers several modules need, written once: finite numbers, JSON-safe values, torch thread
pinning, and the name of the file that marks a folder as a charlm run.

The bottom layer, beside config.py and errors.py: imports nothing of charlm but threads.py (itself
bottom layer), and torch only inside the function that needs it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Optional

# A folder is a charlm run only when it holds this file (written by charlm, carrying the run id).
# Corpus folders skip any folder that holds one, so a run directory is never read as text.
RUN_MARKER = ".charlm-run"


def is_finite_number(x: Any) -> bool:
    """A real int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_or_none(x: Any) -> Optional[float]:
    """x as a float when it is a finite number, else None (for tables and JSON)."""
    return float(x) if is_finite_number(x) else None


def json_safe(value: Any) -> Any:
    """value with every non-finite float replaced by None, recursively (JSON has no NaN/Infinity;
    null is what a JSON reader in any language understands)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with n intra-op threads, then restore the setting (None: leave it alone).

    Loops of many tiny ops (unrolled gradients, batch-1 sampling, tiny models) run faster on one
    thread: a second one spends its time waiting for the first, badly so on a busy 2-core CPU.
    A count the user pinned with --threads N (charlm.threads.use) wins over these heuristics."""
    import torch

    from .threads import pinned

    if n is None or pinned() is not None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
