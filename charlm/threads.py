"""How many CPU threads torch should use: the CPUs this process may really use, and ``auto``.

A recurrent step is a chain of small matrix products, and every one of them ends at a barrier
where each OpenMP thread waits for the others. When another process takes one of the cores, the
descheduled thread makes the rest wait at every barrier: on a 2-core machine with one busy
neighbour, GRU 1x320 trained at 1,559 tokens/s on two threads and 10,478 on one; idle, two
threads were faster (issue 24). No fixed count is right, so `--threads auto` measures
(``ThreadChooser``). And torch starts as many threads as the host has cores, whatever CPU quota a
container gives the process: ``usable_cpus`` reads the affinity mask and the cgroup quota.

The bottom layer, beside config.py: imports nothing of charlm but errors, and torch only inside
the functions that set it.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")


# ----------------------------------------------------------------------------------------------
# The CPUs a process may use


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota: str, period: str) -> Optional[int]:
    """ceil(quota / period), or None when there is no limit ('max', -1) or the text is not numbers."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> Optional[int]:
    """The CPU quota of the cgroup mounted at ``root``, in whole CPUs (rounded up); None: no limit.

    cgroup v2 has one file, ``cpu.max``: "max 100000" (no limit) or "200000 100000" (2 CPUs).
    v1 has ``cpu.cfs_quota_us`` (-1: no limit) and ``cpu.cfs_period_us``, under cpu/ or
    cpu,cpuacct/ (or at the root, where a container mounts its own controller there).
    """
    root = Path(root)
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        return _quota_cpus(*parts) if len(parts) == 2 else None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _quota_cpus(quota, period)
    return None


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask), capped by its cgroup quota; >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, limit)
    return max(1, cpus)


# ----------------------------------------------------------------------------------------------
# The --threads option: 'auto' or a count


def parse_threads(value, option: str = "--threads") -> Optional[int]:
    """'auto' (or None) -> None; a whole number >= 1 (or its text) -> that number; else ConfigError."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"{option} must be 'auto' or a whole number >= 1, got {value!r}")


_pinned: Optional[int] = None   # set by use(): the count the user named, which heuristics keep


def pinned() -> Optional[int]:
    """The thread count the user pinned with --threads N in this process, or None."""
    return _pinned


def use(value) -> Optional[int]:
    """Apply a command's --threads: N pins N threads (the commands' own heuristics then keep it);
    'auto' only caps torch's count at the usable CPUs, and leaves the heuristics free (one thread
    for small work). Returns the pinned count or None."""
    import torch

    global _pinned
    n = parse_threads(value)
    if n is None:
        cap = usable_cpus()
        if torch.get_num_threads() > cap:
            torch.set_num_threads(cap)
    else:
        torch.set_num_threads(n)
    _pinned = n
    return n


def auto_candidates() -> tuple[int, ...]:
    """The counts `auto` compares: 1 and the usable count. torch's own setting caps it, so a
    count the caller chose (OMP_NUM_THREADS, torch.set_num_threads, torchrun's 1) is respected."""
    import torch

    top = max(1, min(torch.get_num_threads(), usable_cpus()))
    return tuple(sorted({1, top}))


# ----------------------------------------------------------------------------------------------
# Measuring: keep the faster count, and look again now and then


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@dataclass
class ThreadChooser:
    """Chooses the intra-op thread count of a training run by timing its own steps.

    The loop calls ``tick()`` between steps; the time from one tick to the next is the step that
    ran with the current count. A trial runs ``steps`` steps at each candidate in a row and keeps
    the count with the lowest median step time (the median shrugs off the first step's warm-up
    and a step an evaluation or a checkpoint fell in). The first trial opens the run; another
    runs every ``recheck_every`` seconds with ``recheck_steps`` per candidate, so a run adapts
    when a neighbour starts and recovers when it ends. With one candidate it only sets that
    count. ``clock`` and ``set_threads`` are injectable, for tests.
    """

    candidates: tuple[int, ...]
    steps: int = 5                    # per candidate in the first trial
    recheck_steps: int = 3            # per candidate in later trials
    recheck_every: float = 45.0       # seconds between the end of a trial and the next
    clock: Callable[[], float] = time.perf_counter
    set_threads: Callable[[int], None] = set_torch_threads
    current: Optional[int] = None     # the count the last step ran with
    chosen: Optional[int] = None      # the count the last trial kept
    next_trial: float = 0.0           # clock time at which the next trial starts
    measuring: bool = False
    plan: list = field(default_factory=list)     # counts for the trial's remaining steps
    times: dict = field(default_factory=dict)    # count -> its step times in this trial
    last_tick: Optional[float] = None

    def __post_init__(self) -> None:
        self.candidates = tuple(dict.fromkeys(self.candidates))   # deduplicated, in order
        if len(self.candidates) == 1:
            self.chosen = self.candidates[0]

    def tick(self) -> Optional[str]:
        """Between two steps: time the step that ended, set the count for the next one. Returns a
        message when a trial chose a count for the first time or changed it, else None."""
        now = self.clock()
        if self.measuring and self.last_tick is not None:
            self.times.setdefault(self.current, []).append(now - self.last_tick)
        message = None
        if self.measuring and not self.plan:
            message = self._decide(now)
        if not self.measuring and len(self.candidates) > 1 and now >= self.next_trial:
            self._start_trial()
        target = self.plan.pop(0) if self.plan else self.chosen
        if target != self.current:
            self.set_threads(target)
            self.current = target
        self.last_tick = self.clock()
        return message

    def _start_trial(self) -> None:
        # The current count first (no switch before the first timed step), then the others.
        n = self.steps if self.chosen is None else self.recheck_steps
        order = sorted(self.candidates, key=lambda c: c != self.current)
        self.plan = [c for c in order for _ in range(n)]
        self.times, self.measuring = {}, True

    def _decide(self, now: float) -> Optional[str]:
        medians = {c: statistics.median(t) for c, t in self.times.items()}
        before, self.chosen = self.chosen, min(medians, key=lambda c: (medians[c], c))
        self.times, self.measuring, self.next_trial = {}, False, now + self.recheck_every
        if before == self.chosen:
            return None
        timings = ", ".join(f"{c} {medians[c] * 1000:.0f} ms" for c in sorted(medians))
        if before is None:
            return f"threads auto: {self.chosen} (median step time by thread count: {timings})"
        return (f"threads auto: {before} -> {self.chosen}, the machine got "
                f"{'busier' if self.chosen < before else 'quieter'} (median step time by thread count: {timings})")


def plan_threads(value, time_budget: bool) -> tuple[ThreadChooser, str]:
    """The chooser for a CPU training run, and the notice that opens it.

    ``--threads N`` pins N. ``auto`` measures only when the run's budget is time: 1 and 2 threads
    do not give bit-identical losses (docs/threads.md), so a run that measured would depend on the
    machine's load, and a step-budgeted run must give the same weights when run again or resumed.
    Such a run keeps one count: torch's, capped by the usable CPUs. A time budget is not
    reproducible anyway (the clock decides where it ends).
    """
    n = parse_threads(value)
    if n is not None:
        return ThreadChooser((n,)), f"threads: {n} (--threads {n})"
    candidates = auto_candidates()
    if len(candidates) == 1:
        return ThreadChooser(candidates), "threads: 1 (auto: one usable CPU or thread)"
    if not time_budget:
        top = candidates[-1]
        return ThreadChooser((top,)), (f"threads: {top} (auto measures in time-budgeted runs only: a step "
                                       f"budget keeps one count, reproducibly; on a busy machine try --threads 1)")
    return ThreadChooser(candidates), (f"threads auto: timing {' and '.join(map(str, candidates))} threads, "
                                       f"again every {ThreadChooser.recheck_every:.0f} s")


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with n intra-op threads, then restore the setting (None: leave it alone).

    Loops of many tiny ops (unrolled gradients, batch-1 sampling, tiny models) run faster on one
    thread: a second one spends its time waiting for the first, badly so on a busy 2-core CPU.
    A count the user pinned with --threads N (charlm.threads.use) wins over these heuristics."""
    import torch

    if n is None or pinned() is not None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
