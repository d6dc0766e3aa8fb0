"""One optimizer step: the learning-rate schedule and ``train_step`` on one BPTT chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..devices import autocast
from .state import TrainState


# A run whose budget is time runs a different number of steps on a busy 2-core CPU and on a fast
# machine, so its warm-up and evaluations are fractions of the time; the step settings bound them.
WARMUP_FRACTION = 0.02      # warm-up ends after 2% of the time budget, or warmup_steps if sooner
EVALS_PER_BUDGET = 6        # evaluations every 1/6 of the time budget, or eval_every steps if sooner


def time_budget(total_steps: Optional[int], max_time: Optional[float]) -> Optional[float]:
    """The run's time budget in seconds when time is its only budget (no step or epoch limit)."""
    return max_time if total_steps is None else None


def lr_at(config: TrainConfig, step: int, elapsed: float, total_steps: Optional[int],
          max_time: Optional[float], scale: float = 1.0) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the end of the budget.

    The budget is whichever ends first, steps or seconds, so a `--max-time` run decays exactly
    into its deadline. When the budget is time only, the warm-up also ends after WARMUP_FRACTION
    of it, so a slow machine reaches the peak early too; a step-budgeted run is as it always was.
    """
    warm = 1.0
    if config.warmup_steps:
        warm = (step + 1) / (config.warmup_steps + 1)
        seconds = time_budget(total_steps, max_time)
        if seconds:
            warm = max(warm, elapsed / (WARMUP_FRACTION * seconds))
        warm = min(1.0, warm)
    progress = 0.0
    if total_steps:
        progress = max(progress, step / total_steps)
    if max_time:
        progress = max(progress, elapsed / max_time)
    progress = min(progress, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    ratio = config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine
    return config.lr * warm * ratio * scale


@dataclass
class EvalCadence:
    """When to evaluate: every ``every_steps`` steps, and when the budget is time, also each time
    the run's clock passes another ``every_seconds`` (1/EVALS_PER_BUDGET of the budget).

    Under DDP the clock given to ``due`` must be the ranks' agreed one, so all evaluate together.
    """

    every_steps: int
    every_seconds: Optional[float] = None
    next_time: float = math.inf
    last_step: int = -1          # the step of the last evaluation in this launch
    last_by_clock: bool = False  # whether the clock, not the step count, asked for it

    @classmethod
    def of(cls, config: TrainConfig, total_steps: Optional[int], max_time: Optional[float],
           elapsed: float) -> "EvalCadence":
        seconds = time_budget(total_steps, max_time)
        if not seconds:
            return cls(config.eval_every)
        every = seconds / EVALS_PER_BUDGET
        return cls(config.eval_every, every, every * (math.floor(elapsed / every) + 1))

    def due(self, step: int, elapsed: float) -> bool:
        """True when step (just trained) should be evaluated; marks it evaluated."""
        by_time = self.every_seconds is not None and elapsed >= self.next_time
        by_steps = step % self.every_steps == 0
        if not (by_steps or by_time):
            return False
        if self.every_seconds is not None:
            self.next_time = self.every_seconds * (math.floor(elapsed / self.every_seconds) + 1)
        # Two schedules, one evaluation: the clock's a few steps from the step count's (either way
        # round) would add a near-duplicate row, so the second is skipped.
        if self._near(step) and self.last_by_clock != (not by_steps):
            return False
        self.last_step, self.last_by_clock = step, not by_steps
        return True

    def _near(self, step: int) -> bool:
        return self.last_step >= 0 and step - self.last_step <= max(1, self.every_steps // 20)

    def evaluated(self, step: int) -> bool:
        """Whether step had its evaluation (by the step cadence, or by the clock in this launch)."""
        return step % self.every_steps == 0 or step == self.last_step

    def recent(self, step: int) -> bool:
        """Whether an evaluation ran at most a few steps before ``step`` (5% of --eval-every, at
        least 1), by the step cadence or by the clock in this launch."""
        last = max(step - step % self.every_steps if step >= self.every_steps else -1, self.last_step)
        return last >= 0 and step - last <= max(1, self.every_steps // 20)


@dataclass
class StepResult:
    """What a step leaves on the device for the next read-back (no sync per step)."""

    loss: torch.Tensor        # () the chunk's mean loss, nats/token
    grad_norm: torch.Tensor   # () global gradient norm before clipping
    flags: torch.Tensor       # (2,) [update skipped, diverging step] as bools


def train_step(state: TrainState, train_model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               lr: float, grad_clip: float, amp_dtype: Optional[torch.dtype],
               reset: Optional[torch.Tensor] = None) -> StepResult:
    """Train one chunk: x (B, k) inputs, y (B, k) targets; carries state.hidden to the next chunk.

    ``reset`` (B, k) bool (--records): zero a stream's state before it reads that position.

    ``train_model`` is the model itself, or its DDP wrapper (which averages the gradients).
    """
    optimizer, scaler = state.optimizer, state.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(state.device, amp_dtype):
        logits, new_hidden = train_model(x, state.hidden, reset)                # (B, k, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        # fp16: backward through loss * scale, then unscale the grads in place so clipping
        # and the norm see true values. An overflow shows up as a non-finite norm below.
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)

    # A non-finite loss or gradient skips the update (on the device, no sync) and keeps the
    # previous state; several in a row trigger a rollback once the values are read back.
    # The fused optimizer reads `found_inf` itself, so we set it rather than calling
    # scaler.step(), which would overwrite it with the grads-only flag. With fp16 a finite
    # loss whose grads overflowed is the scaler's business (it halves the scale), not a
    # divergence: it skips the update but keeps the new state and counts as no bad step.
    finite_loss = torch.isfinite(loss)
    skip = ~(finite_loss & torch.isfinite(grad_norm))
    bad = ~finite_loss if scaler is not None else skip
    optimizer.found_inf = skip.float()
    optimizer.step()
    if scaler is not None:
        scaler.update()   # reads the inf flags unscale_() recorded; on the device, no sync
    # Detach at the chunk border: the next chunk's gradient stops here (BPTT(k)).
    state.hidden = tuple(torch.where(bad, old, new.detach().float())
                         for old, new in zip(state.hidden, new_hidden))
    return StepResult(loss.detach(), grad_norm.detach(), torch.stack([skip, bad]))
