"""The training loop: truncated backpropagation through time over B contiguous streams.

Each step trains one BPTT chunk of k tokens per stream. The hidden state is carried from chunk to
chunk and detached at the border, so the forward pass remembers the whole stream while the
gradient reaches back at most k steps: BPTT(k). The state is reset at every epoch start.

``train_launch`` reads top to bottom: take the launch decided in launch.py, check the device,
build the run (setup.py), then ``loop``, which reads like nanoGPT's train.py. What the loop does
besides stepping is in named functions below it: reading losses back (``flush_reports``), the DDP
stop agreement (``agreed_stop``), saving and evaluating, the numeric rollback and the end of the
run.

The loop never prints. It reports through ``on_event`` (the CLI's display on rank 0) and records
the same events in metrics.jsonl. Losses stay on the device and are read back every
``report_every`` steps, so a GPU is never made to wait once per step.
"""

from __future__ import annotations

import math
import platform
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import distributed
from .._version import __version__
from ..checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from ..config import ModelConfig, TrainConfig, to_toml
from ..devices import DeviceBatches, describe_device
from ..errors import ConfigError, Interrupted, NumericError, RunDirError
from ..evaluation import evaluate_ids
from ..events import (CheckpointSaved, ChunkTrained, Evaluated, Event, Finished, GradientReport, Notice,
                      RunStarted, Sampled)
from ..metrics import MetricsLog
from ..records import reset_mask, separator_id
from ..rundir import write_run_file
from ..threads import ThreadChooser, plan_threads
from .samples import SamplesLog, eval_sample
from .launch import Launch, plan_configs
from .setup import Setup, build, prepare_device
from .signals import StopRequest, graceful_signals
from .step import EvalCadence, StepResult, lr_at, time_budget, train_step

EventCallback = Callable[[Event], None]
# A measurement of the model on the chunk just trained: (model, x, y, state at the chunk start)
# -> {name: figure}. The lab's gradient horizon (charlm.lab.gradients.horizon_summary) is one; the
# product does not import the lab, so whoever starts the run passes it in.
ChunkProbe = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Optional[tuple]], dict]
MAX_ROLLBACKS = 3


def train(config: TrainConfig, model_config: Optional[ModelConfig] = None,
          on_event: Optional[EventCallback] = None,
          should_stop: Optional[Callable[[], bool]] = None,
          grad_probe: Optional[ChunkProbe] = None) -> Path:
    """Train a model from configs given as they are; return the run directory. Raises CharLMError
    for user mistakes.

    ``model_config`` may be None when resuming (the checkpoint's is used) or fine-tuning (the
    source's). ``should_stop`` is polled after every step; when it returns True the run saves
    last.pt and returns, exactly as on Ctrl-C (but without raising). ``grad_probe`` measures the
    chunk every ``config.grad_report_every`` steps (a GradientReport event); it is required when
    that is set.
    """
    return train_launch(plan_configs(config, model_config), on_event, should_stop, grad_probe)


def train_launch(launch: Launch, on_event: Optional[EventCallback] = None,
                 should_stop: Optional[Callable[[], bool]] = None,
                 grad_probe: Optional[ChunkProbe] = None) -> Path:
    """Train the launch ``plan_launch`` or ``plan_configs`` decided; return the run directory."""
    if launch.config.grad_report_every and grad_probe is None:
        raise ConfigError("grad_report_every needs a probe to measure with: pass "
                          "grad_probe=charlm.lab.gradients.horizon_summary (the CLI does)")
    device, ctx = prepare_device(launch)
    stop = StopRequest()
    threads_before = torch.get_num_threads()   # --threads changes it for the run, not for the caller
    try:
        with graceful_signals(stop):
            run = build(launch, device, ctx)
            sinks = Sinks(on_event if (on_event is not None and ctx.is_main) else None)
            try:
                return loop(run, sinks, stop, should_stop, grad_probe)
            finally:
                sinks.close()
                if run.plan is not None:
                    run.plan.release()
    finally:
        torch.set_num_threads(threads_before)
        distributed.teardown(ctx)


def loop(run: Setup, sinks: "Sinks", stop: StopRequest, should_stop: Optional[Callable[[], bool]],
         grad_probe: Optional[ChunkProbe] = None) -> Path:
    """Train until the budget, a signal or ``should_stop`` ends the run; return the run directory."""
    config, state, p = run.config, run.state, run.state.progress
    start(run, sinks, stop)
    report_every = 1 if run.device.type == "cpu" else 16   # read losses back this often
    reports = Reports(last_tokens=p.tokens_seen)
    clock = Clock(before=p.elapsed)
    cadence = EvalCadence.of(config, run.total_steps, run.max_time, p.elapsed)
    threads = choose_threads(run, sinks)                     # None off CPU
    chunks = DeviceBatches(run.batches, run.device)          # ids reach the device without a host copy per step
    reset_every_chunk = config.state_reset == "chunk"
    sep_id = separator_id(config.records, config.record_sep, run.tokenizer)   # None without --records
    state.model.train()
    while True:
        reason, signum, asked = agreed_stop(run, clock, stop, should_stop, report_every)
        if reason or signum or asked:
            break

        # A new epoch starts every stream from its beginning, so the state starts from zero;
        # with --state-reset chunk every chunk does (no memory beyond k tokens, for comparison).
        new_epoch = p.step_in_epoch >= run.batches.steps_per_epoch
        if new_epoch:
            p.epoch, p.step_in_epoch = p.epoch + 1, 0
        if new_epoch or reset_every_chunk:
            state.reset_hidden(config.batch_size)

        # Under DDP the learning rate and the evaluations may depend on the clock only through a
        # time all ranks agree on (the slowest rank's, see agreed_stop), or the replicas would differ.
        now = clock.lr_time if run.ctx.enabled else clock.elapsed()
        lr = lr_at(config, p.step, now, run.total_steps, run.max_time, p.lr_scale)
        if threads is not None:
            pace(threads, sinks, p.step)                      # the thread count for this step
        x, y = chunks.batch(p.step_in_epoch)                  # (B, k) inputs, (B, k) targets one ahead
        hidden_in = state.hidden                               # what this chunk starts from
        result = train_step(state, run.train_model, x, y, lr, config.grad_clip, run.amp_dtype,
                            reset_mask(x, sep_id))
        p.step += 1
        p.step_in_epoch += 1
        p.tokens_seen += x.numel() * run.ctx.world_size
        reports.pending.append((p.step, p.epoch, result, lr, p.tokens_seen, clock.elapsed()))
        if len(reports.pending) >= report_every:
            flush_reports(run, sinks, reports)

        if grad_probe is not None and config.grad_report_every and p.step % config.grad_report_every == 0:
            flush_reports(run, sinks, reports)   # on every rank: under DDP the read-back is a collective
            if run.ctx.is_main:
                sinks.emit(GradientReport(p.step, grad_probe(state.model, x, y, hidden_in)))

        if reports.bad_in_a_row >= config.max_bad_steps:
            rollback(run, sinks, reports, clock)
            continue  # the restored step was evaluated and saved when it was first reached

        if cadence.due(p.step, now):
            flush_reports(run, sinks, reports)
            evaluate(run, sinks, train_loss(run, clear=True), clock.elapsed())
    return finish(run, sinks, reports, clock, cadence, reason, signum, should_stop)


# ----------------------------------------------------------------------------------------------
# Sinks: metrics.jsonl, TensorBoard, the display


class Sinks:
    """Where events go: metrics.jsonl and TensorBoard (rank 0, once ``open``ed), and the display."""

    def __init__(self, display: Optional[EventCallback]):
        self.display = display
        self.metrics: Optional[MetricsLog] = None
        self.samples: Optional[SamplesLog] = None
        self.tboard = None

    def open(self, run: Setup) -> None:
        """Rank 0: the run's log, cut back to the resumed checkpoint, and its config.toml."""
        if not run.ctx.is_main:
            return
        self.metrics = MetricsLog(run.run_dir / "metrics.jsonl",
                                  truncate_to=run.state.progress.metrics_offset if run.ckpt else 0)
        if run.config.eval_sample_length:
            self.samples = SamplesLog(run.run_dir / "samples.txt",
                                      keep_upto=run.state.progress.step if run.ckpt else None)
        try:   # atomic and without following a link: a planted config.toml link is replaced, not written through
            write_run_file(run.run_dir / "config.toml", to_toml(run.model_config, run.config))
        except OSError as e:
            raise RunDirError(f"cannot write {run.run_dir / 'config.toml'}: {e.strerror or e}") from None
        if run.config.tensorboard:
            from ..tb import TensorBoardSink
            self.tboard = TensorBoardSink(run.run_dir)

    def emit(self, event: Event) -> None:
        if self.metrics is not None:
            self.metrics.write(event)
        if self.tboard is not None:
            self.tboard(event)
        if self.display is not None:
            self.display(event)

    def offset(self) -> int:
        return self.metrics.offset() if self.metrics is not None else 0

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tboard is not None:
            self.tboard.close()


# ----------------------------------------------------------------------------------------------
# The start, the clock and the stop agreement


@dataclass
class Clock:
    """Seconds trained in the whole run: those before this launch plus this launch's."""

    before: float
    t_start: float = field(default_factory=time.perf_counter)
    lr_time: float = -1.0    # the clock the lr follows under DDP: agreed at report intervals

    def __post_init__(self) -> None:
        self.lr_time = self.before

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self.t_start)


def start(run: Setup, sinks: Sinks, stop: StopRequest) -> None:
    """Open the sinks, announce the run, and save step 0 of a new run."""
    p, mc, tok, data = run.state.progress, run.model_config, run.tokenizer, run.dataset
    sinks.open(run)
    sinks.emit(RunStarted(
        run_dir=str(run.run_dir), device=f"{describe_device(run.device)}, {run.precision}",
        model=mc.describe(), parameters=run.state.model.num_parameters(),
        tokenizer=tok.kind, vocab_size=tok.vocab_size, corpus=data.corpus_name,
        train_tokens=data.train.tokens, val_tokens=data.val.tokens, batch_size=run.config.batch_size,
        seq_len=run.config.seq_len, steps_per_epoch=run.batches.steps_per_epoch,
        max_steps=run.total_steps, max_time=run.max_time, start_step=p.step, resumed=run.ckpt is not None,
        world_size=run.ctx.world_size))
    for note in run.notes:
        sinks.emit(Notice(note, p.step, "info"))
    stop.armed = True   # from here a signal finishes the step and saves last.pt
    if run.ckpt is None:
        save(run, sinks, "last.pt", 0.0)  # a good checkpoint from the first instant: resume/rollback target


def finished(run: Setup, clock: Clock) -> Optional[str]:
    """The finish reason of the run's own budget, or None."""
    step, total = run.state.progress.step, run.total_steps
    if total is not None and step >= total:
        return "epochs" if run.config.max_steps is None or total < run.config.max_steps else "max_steps"
    if run.max_time is not None and clock.elapsed() >= run.max_time:
        return "max_time"
    return None


def agreed_stop(run: Setup, clock: Clock, stop: StopRequest, should_stop: Optional[Callable[[], bool]],
                report_every: int) -> tuple[Optional[str], int, bool]:
    """(finish reason, signal number or 0, should_stop) that every rank agrees on.

    The step budget is the same on every rank, but the clock, a signal and ``should_stop`` are
    each rank's own: under DDP they are combined (one tiny all-reduce, at report intervals only)
    so all ranks leave the loop at the same step and save the same way; a rank that went on
    alone would wait forever in the next gradient all-reduce.
    """
    ctx = run.ctx
    reason = finished(run, clock)
    if reason in ("epochs", "max_steps"):
        return reason, 0, False
    if ctx.enabled and run.state.progress.step % report_every != 0:
        return None, 0, False
    signum = stop.signum or 0
    asked = should_stop is not None and should_stop()
    if not ctx.enabled:
        return reason, signum, asked
    flags = torch.tensor([reason == "max_time", signum, asked, clock.elapsed()], dtype=torch.float64,
                         device=run.device if run.device.type == "cuda" else "cpu")
    time_up, signum, asked, clock.lr_time = distributed.all_reduce_max(flags, ctx).tolist()
    return ("max_time" if time_up else None), int(signum), bool(asked)


def choose_threads(run: Setup, sinks: Sinks) -> Optional[ThreadChooser]:
    """The CPU thread count's chooser (--threads; charlm.threads), announced; None off the CPU."""
    if run.device.type != "cpu":
        return None
    chooser, note = plan_threads(run.config.threads, time_budget(run.total_steps, run.max_time) is not None)
    sinks.emit(Notice(note, run.state.progress.step, "info"))
    return chooser


def pace(chooser: ThreadChooser, sinks: Sinks, step: int) -> None:
    """Between steps: let the chooser time the last one and set the next one's thread count."""
    message = chooser.tick()
    if message is not None:
        sinks.emit(Notice(message, step, "info"))


# ----------------------------------------------------------------------------------------------
# Reporting: losses read back from the device in batches


@dataclass
class Reports:
    """Chunk results waiting on the device, and what their read-back has seen so far."""

    last_tokens: int
    pending: list = field(default_factory=list)   # (step, epoch, StepResult, lr, tokens, elapsed)
    bad_in_a_row: int = 0
    last_time: float = field(default_factory=time.perf_counter)
    # Rollbacks of this launch: the step each went back to, and for each replay that ended in a
    # rollback, whether it was bad from its very first step (see rollback()).
    targets: list = field(default_factory=list)
    bad_from_start: list = field(default_factory=list)


def flush_reports(run: Setup, sinks: Sinks, reports: Reports) -> None:
    """Read back the pending losses (one sync), emit one event per chunk, watch for faults."""
    if not reports.pending:
        return
    results: list[StepResult] = [r[2] for r in reports.pending]
    values = torch.stack([torch.cat([r.loss[None], r.grad_norm[None], r.flags.float()]) for r in results])
    if run.ctx.enabled:
        # The chunk loss of the global batch: the mean of the ranks' losses (one all-reduce per
        # report interval). The gradient norm is already global (DDP averaged the grads).
        values = distributed.all_reduce_sum(values, run.ctx) / run.ctx.world_size
    values = values.tolist()
    p, clip = run.state.progress, run.config.grad_clip
    now = time.perf_counter()
    rate = (p.tokens_seen - reports.last_tokens) / max(now - reports.last_time, 1e-9)
    reports.last_time, reports.last_tokens = now, p.tokens_seen
    for (step, epoch, _, lr, tokens, elapsed), (loss, norm, skip, bad) in zip(reports.pending, values):
        skipped = skip > 0
        sinks.emit(ChunkTrained(step=step, epoch=epoch, loss=loss, grad_norm=norm,
                                clipped=bool(clip) and norm > clip, lr=lr, tokens=tokens,
                                elapsed=elapsed, tokens_per_s=rate, skipped=skipped))
        reports.bad_in_a_row = reports.bad_in_a_row + 1 if bad > 0 else 0
        if not skipped:
            p.since_eval.append(loss)
    reports.pending.clear()


def train_loss(run: Setup, clear: bool) -> float:
    """The mean chunk loss since the last evaluation (its train_loss); ``clear`` starts anew.

    The end of a run evaluates without clearing: the losses stay in last.pt, so a run extended
    later reports the same train_loss at its next evaluation as one that never stopped."""
    since = run.state.progress.since_eval
    loss = sum(since) / len(since) if since else float("nan")
    if clear:
        since.clear()
    return loss


# ----------------------------------------------------------------------------------------------
# Saving and evaluating (every rank calls them: states are gathered, evaluations agree)


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def save(run: Setup, sinks: Sinks, name: str, elapsed: float) -> None:
    """Write run_dir/name atomically (rank 0 writes; the other ranks send their parts)."""
    ctx, state, p = run.ctx, run.state, run.state.progress
    # The lock file removed or replaced: another writer may be in the run. Every rank stops.
    distributed.on_main(ctx, lambda: run.plan.lock.check() if run.plan and run.plan.lock else None)
    gather = lambda obj: distributed.all_gather_object(obj, ctx)   # every rank's value, in rank order
    p.elapsed, p.metrics_offset = elapsed, sinks.offset()
    owned = state.state_dict(gather)
    # Each rank's weight digest: proof in the checkpoint that the replicas agree.
    digests = gather(distributed.weights_digest(state.model)) if ctx.enabled else None
    if not ctx.is_main:
        return
    if digests is not None and len(set(digests)) > 1:
        sinks.emit(Notice(f"the {ctx.world_size} replicas' weights differ at step {p.step}; this is a "
                          f"bug in charlm's DDP set-up, please report it", p.step, "warning"))
    if not _all_finite(state.model):
        sinks.emit(Notice(f"not saving {name}: the weights are not finite", p.step, "warning"))
        return
    corpus, data = run.corpus, run.dataset
    single = len(corpus.files) == 1 and corpus.name != "builtin:python-stdlib"
    record = Checkpoint(
        run_id=run.run_id,
        model_config=asdict(run.model_config),
        train_config=asdict(run.config),
        tokenizer=run.tokenizer.to_dict(),
        **owned,
        corpus={"name": data.corpus_name, "path": str(Path(corpus.files[0]).resolve()) if single else corpus.name,
                "sha256": data.sha256, "chars": data.chars,
                "train_tokens": data.train.tokens, "val_tokens": data.val.tokens},
        world_size=ctx.world_size,
        init_from=run.origin,
        replica_digests=digests,
        device=str(run.device),
        precision=run.precision,
        versions={"charlm": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
    )
    save_checkpoint(record, run.run_dir / name)
    sinks.emit(CheckpointSaved(str(run.run_dir / name), p.step))


def evaluate(run: Setup, sinks: Sinks, train_loss: float, elapsed: float) -> None:
    """Validation loss on the held-out tail, a short sample (rank 0, --eval-sample-length); then
    best.pt (when it improved) and last.pt. The sample comes before the saves, so the last.pt of
    this step already counts it (a resume cuts samples.txt back to the checkpoint's step)."""
    p, val = run.state.progress, run.dataset.val
    result = evaluate_ids(run.state.model, val.ids, val.chars, run.device,
                          max_tokens=run.config.eval_tokens or None,
                          separator=separator_id(run.config.records, run.config.record_sep, run.tokenizer))
    is_best = result.loss < p.best_val_loss
    if is_best:
        p.best_val_loss, p.best_val_bpc = result.loss, result.bits_per_char
    sinks.emit(Evaluated(p.step, train_loss, result.loss, result.bits_per_char, elapsed, is_best))
    if sinks.samples is not None:   # rank 0 only (opened there)
        text = eval_sample(run.state.model, run.tokenizer, run.config.eval_sample_length,
                           run.config.seed, run.device)
        if text is not None:   # None: the weights are not finite (the save below refuses them too)
            sinks.samples.append(p.step, text)
            sinks.emit(Sampled(p.step, text))
    # best.pt first: a crash between the two saves then resumes from the previous last.pt,
    # which replays this step and writes best.pt again (the other order would lose it).
    if is_best:
        save(run, sinks, "best.pt", elapsed)
    save(run, sinks, "last.pt", elapsed)


# ----------------------------------------------------------------------------------------------
# Numeric rollback and the end of the run


def rollback(run: Setup, sinks: Sinks, reports: Reports, clock: Clock) -> None:
    """Back to the last good checkpoint at half the learning rate per rollback, or give up."""
    config, state = run.config, run.state
    rollbacks = state.progress.rollbacks + 1
    if reports.targets:
        # The replay since the last rollback was bad from its first step: that step computes its
        # loss and gradient from the checkpoint alone, before any update, so no learning rate
        # could have changed it.
        reports.bad_from_start.append(reports.bad_in_a_row >= state.progress.step - reports.targets[-1])
    if rollbacks > MAX_ROLLBACKS:
        sinks.emit(Notice(f"training diverged: {config.max_bad_steps} non-finite steps in a row after "
                          f"{MAX_ROLLBACKS} rollbacks; stopping", state.progress.step, "warning"))
        poisoned = (len(reports.bad_from_start) == MAX_ROLLBACKS and all(reports.bad_from_start)
                    and len(set(reports.targets)) == 1)
        if poisoned:
            raise NumericError(
                f"training diverged (non-finite loss or gradients) even after {MAX_ROLLBACKS} rollbacks, "
                f"each time at the first step after the checkpoint of step {reports.targets[0]}, before any "
                f"update: the checkpoint itself (its weights or carried state) or the text right after it "
                f"gives non-finite values, which a lower --lr cannot mend. Start a new run (--force), "
                f"or fine-tune from an earlier checkpoint with --init-from; {run.run_dir} is kept")
        raise NumericError(
            f"training diverged (non-finite loss or gradients) even after {MAX_ROLLBACKS} rollbacks "
            f"with a lower learning rate; lower --lr (now {config.lr}) or --grad-clip. last.pt in "
            f"{run.run_dir} holds the last good weights")
    state.load_state_dict(read_checkpoint(run.run_dir / "last.pt", map_location="cpu"))
    p = state.progress   # the checkpoint's counters, but this launch's count of rollbacks
    p.rollbacks, p.lr_scale = rollbacks, 0.5 ** rollbacks
    reports.targets.append(p.step)
    clock.before = p.elapsed
    reports.bad_in_a_row = 0
    sinks.emit(Notice(f"{config.max_bad_steps} non-finite steps in a row: rolled back to step {p.step} "
                      f"with the learning rate scaled by {p.lr_scale:g}", p.step, "warning"))


def finish(run: Setup, sinks: Sinks, reports: Reports, clock: Clock, cadence: EvalCadence,
           reason: Optional[str], signum: int, should_stop: Optional[Callable[[], bool]]) -> Path:
    """Evaluate (or just save, when stopped early), report, and raise Interrupted after a signal."""
    flush_reports(run, sinks, reports)
    p = run.state.progress
    interrupted = bool(signum)
    if not interrupted and should_stop is not None and reason is None:
        reason = "stopped"
    elapsed = clock.elapsed()
    # A run ending a few steps after an evaluation adds none (its row would nearly repeat that
    # one); last.pt keeps the losses since, as after Ctrl-C, so a resume goes on exactly.
    if (p.since_eval or not cadence.evaluated(p.step)) and not cadence.recent(p.step):
        if interrupted or reason == "stopped":
            # Quick, and exact: an evaluation here would add a best-val record that the
            # uninterrupted run never has, so a resumed run would diverge from it.
            save(run, sinks, "last.pt", elapsed)
        else:
            evaluate(run, sinks, train_loss(run, clear=False), elapsed)
    else:
        save(run, sinks, "last.pt", elapsed)
    best, bpc = p.best_val_loss, p.best_val_bpc
    sinks.emit(Finished(str(run.run_dir), p.step, "interrupted" if interrupted else (reason or "stopped"),
                        best if math.isfinite(best) else None, bpc if math.isfinite(best) else None, elapsed))
    if interrupted:
        err = Interrupted(f"{signal.Signals(signum).name}: saved {run.run_dir / 'last.pt'} at step {p.step}; "
                          f"continue with `charlm train --out {run.run_dir} --resume`")
        err.exit_code = 130 if signum == signal.SIGINT else 128 + signum
        raise err
    return run.run_dir
