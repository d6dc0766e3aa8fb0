"""The training loop: truncated backpropagation through time over B contiguous streams.

Read top to bottom: set-up (device, run directory, data, model, optimizer, resume), then the loop.
Each step trains one BPTT chunk of k tokens per stream. The hidden state is carried from chunk to
chunk and detached at the border, so the forward pass remembers the whole stream while the
gradient reaches back at most k steps: BPTT(k). The state is reset at every epoch start.

The loop never prints. It reports through ``on_event`` (the CLI's display on rank 0) and records
the same events in metrics.jsonl. Losses stay on the device and are read back every
``report_every`` steps, so a GPU is never made to wait once per step.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from .. import __version__, distributed
from ..checkpoint import check_resumable, load_checkpoint, save_checkpoint
from ..rundir import prepare_run_dir
from ..config import DEFAULT_MAX_TIME, ModelConfig, TrainConfig, to_toml
from ..corpus.dataset import StreamBatches, prepare_dataset
from ..corpus.text import Corpus
from ..devices import (DeviceBatches, autocast, check_precision, describe_device, grad_scaler,
                      resolve_device, resolve_precision, rng_state as _rng_state, set_rng_state as _set_rng_state)
from ..errors import ConfigError, CorpusError, DeviceError, Interrupted, NumericError
from ..evaluation import evaluate_ids
from ..events import (CheckpointSaved, ChunkTrained, Evaluated, Event, Finished, GradientReport,
                     Notice, RunStarted)
from ..gradients import horizon_summary
from ..metrics import MetricsLog
from ..model import CharRNN

EventCallback = Callable[[Event], None]
MAX_ROLLBACKS = 3


def lr_at(config: TrainConfig, step: int, elapsed: float, total_steps: Optional[int],
          max_time: Optional[float], scale: float = 1.0) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the end of the budget.

    The budget is whichever ends first, steps or seconds, so a `--max-time` run decays exactly
    into its deadline.
    """
    warm = min(1.0, (step + 1) / (config.warmup_steps + 1)) if config.warmup_steps else 1.0
    progress = 0.0
    if total_steps:
        progress = max(progress, step / total_steps)
    if max_time:
        progress = max(progress, elapsed / max_time)
    progress = min(progress, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    ratio = config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine
    return config.lr * warm * ratio * scale


class _StopRequest:
    """Set by SIGINT/SIGTERM; the loop saves and stops at the end of the current step."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.armed = False   # set once the loop can save; before that a signal stops at once

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def _graceful_signals(stop: _StopRequest) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: finish the step, save last.pt, exit. Second Ctrl-C: exit at once
    (checkpoints are written atomically, so nothing on disk can be half-written)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if not stop.armed:
            # Still preparing (encoding a large corpus can take minutes) and nothing to save yet:
            # stop now, as Python would; the data files are written atomically too.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        if stop.signum is not None and signum == signal.SIGINT:
            os._exit(130)
        stop.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _check_resume_compatible(ckpt: dict, model_config: ModelConfig, config: TrainConfig) -> None:
    saved_model = dict(ckpt["model_config"])
    given = asdict(model_config)
    for key, value in given.items():
        if key == "vocab_size":
            continue
        if saved_model.get(key) != value:
            option = "--model" if key == "cell" else f"--{key.replace('_', '-')}"
            raise ConfigError(f"cannot resume: the checkpoint's model has {option} {saved_model.get(key)}, "
                              f"but {value} was given (drop the option, or start a new run)")
    saved_train = ckpt["train_config"]
    for key in ("tokenizer", "vocab_size", "normalize", "min_char_count", "val_fraction", "seq_len",
                "batch_size"):
        if saved_train.get(key) != getattr(config, key):
            option = f"--{key.replace('_', '-')}"
            raise ConfigError(f"cannot resume: the run was trained with {option} {saved_train.get(key)}, "
                              f"but {getattr(config, key)} was given (drop the option, or start a new run)")


def train(config: TrainConfig, model_config: Optional[ModelConfig] = None,
          on_event: Optional[EventCallback] = None,
          should_stop: Optional[Callable[[], bool]] = None) -> Path:
    """Train a model; return the run directory. Raises CharLMError for user mistakes.

    ``model_config`` may be None when resuming (the checkpoint's is used). ``should_stop`` is
    polled after every step; when it returns True the run saves last.pt and returns, exactly as
    on Ctrl-C (but without raising).
    """
    config.validate()
    if config.tensorboard:
        from ..tb import require
        require()  # before a run directory exists: a missing extra must not leave a half-made run
    device = resolve_device(config.device)
    if device.type != "cuda" and not config.resume:
        check_precision(device, config.precision)  # refuse before joining a process group
    ctx = distributed.setup(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    config = distributed.elastic_resume(config, ctx)
    stop = _StopRequest()
    try:
        with _graceful_signals(stop):
            return _train(config, model_config, on_event, should_stop, device, ctx, stop)
    finally:
        distributed.teardown(ctx)


def _train(config: TrainConfig, model_config: Optional[ModelConfig], on_event: Optional[EventCallback],
           should_stop: Optional[Callable[[], bool]], device: torch.device,
           ctx: distributed.DistContext, stop: _StopRequest) -> Path:
    emit_display = on_event if (on_event is not None and ctx.is_main) else (lambda e: None)

    # --- run directory (rank 0 creates it; the others wait and use the same path) -------------
    run_dir = None
    error: Optional[Exception] = None
    if ctx.is_main:
        try:
            run_dir = prepare_run_dir(config.out, config.resume, config.force)
            for stray in run_dir.glob(".*.tmp"):  # leftovers of a save cut short by a crash
                stray.unlink(missing_ok=True)
        except Exception as e:  # passed to every rank so all of them stop with the same message
            error = e
    run_dir, error = distributed.broadcast_object((run_dir, error), ctx)
    if error is not None:
        raise error
    run_dir = Path(run_dir)

    # --- resume: the checkpoint's model and tokenizer win; options may only agree with them ---
    ckpt = None
    notes: list[str] = []   # said once the run has started
    if config.resume and not (run_dir / "last.pt").is_file():
        # Killed or failed before its first checkpoint (prepare_run_dir checked that nothing but
        # derived files is there): there is nothing to resume, so the run starts from step 0.
        notes.append(f"{run_dir} has no checkpoint yet: starting the run from step 0")
    elif config.resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        check_resumable(ckpt, run_dir / "last.pt")
        if model_config is None:
            model_config = ModelConfig(**ckpt["model_config"])
        _check_resume_compatible(ckpt, model_config, config)
        if config.corpus is None:
            config = replace(config, corpus=ckpt["corpus"]["path"])
        try:
            check_precision(device, config.precision)
        except DeviceError:
            # A checkpoint resumes anywhere: where its precision is not available, go on in fp32.
            notes.append(f"resuming a --precision {config.precision} run on {device.type}, which "
                         f"lacks it: continuing in fp32")
            config = replace(config, precision="fp32")
        if distributed.restart_count() > 0:
            notes.append(f"torchrun restart {distributed.restart_count()}: resuming from "
                         f"{run_dir / 'last.pt'}")
        saved_world = ckpt.get("world_size", 1)
        if saved_world != ctx.world_size:
            raise ConfigError(f"cannot resume: the run was trained with {saved_world} processes, this "
                              f"launch has {ctx.world_size}; resume with the same --nproc_per_node")
    model_config = model_config or ModelConfig()
    model_config.validate()

    # --- data: corpus -> ids on disk (rank 0 encodes, the others reuse its files) --------------
    corpus = Corpus.resolve(config.corpus)
    data_dir = run_dir / "data"
    tok_dict = ckpt["tokenizer"] if ckpt else None
    def prepare(tokenizer_dict):
        return prepare_dataset(corpus, data_dir, config.tokenizer, config.vocab_size,
                               config.min_char_count, config.normalize, config.val_fraction,
                               tokenizer_dict=tokenizer_dict)

    # Rank 0 builds the tokenizer and writes the ids; the others then reuse its files with the
    # very same tokenizer (a sentencepiece model trained twice could differ).
    if ctx.is_main:
        dataset = prepare(tok_dict)
    distributed.barrier(ctx)
    shared_tok = distributed.broadcast_object(dataset.tokenizer.to_dict() if ctx.is_main else None, ctx)
    if not ctx.is_main:
        dataset = prepare(shared_tok)
    if ckpt and ckpt["corpus"]["sha256"] != dataset.sha256:
        raise CorpusError(f"cannot resume: corpus {corpus.name} changed since the run started "
                          f"(sha256 differs); start a new run")
    tokenizer = dataset.tokenizer
    batches = StreamBatches(dataset.train.ids, config.batch_size, config.seq_len, ctx.rank, ctx.world_size)
    if dataset.val.tokens < 2:
        raise CorpusError("the validation split is empty; raise --val-fraction or use a longer corpus")

    # --- stopping rule: --max-steps, --epochs and --max-time all count the whole run ----------
    max_time = config.max_time
    if not config.stopping_rule_given():
        max_time = DEFAULT_MAX_TIME
    total_steps = config.max_steps
    if config.epochs is not None:
        epoch_steps = math.ceil(config.epochs * batches.steps_per_epoch)
        total_steps = min(total_steps, epoch_steps) if total_steps else epoch_steps

    # --- model and optimizer ---------------------------------------------------------------
    torch.manual_seed(config.seed)
    model_config = replace(model_config, vocab_size=tokenizer.vocab_size)
    model = CharRNN(model_config).to(device)
    train_model: torch.nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        # Same initial weights everywhere (DDP also broadcasts rank 0's), but each rank its own
        # dropout masks: its streams are different text.
        torch.manual_seed(config.seed + ctx.rank)
    # cuDNN wants the RNN weights in one contiguous buffer; DDP's initial broadcast and
    # load_state_dict copy into the parameters, so re-flatten after each of them.
    model.rnn.flatten_parameters()
    # Fused AdamW reads `found_inf` and skips a non-finite update on the device, without a sync.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay, fused=fused)
    # Mixed precision: autocast for the forward pass (bf16 on a CPU with native bf16 by default);
    # fp16 also scales the loss so small gradients survive fp16's narrow range. The scaler only
    # unscales and tracks its scale; the step itself stays ours (found_inf on the fused
    # optimizer), see the loop. The weights, the optimizer and the carried state stay fp32.
    precision = resolve_precision(device, config.precision)
    amp_dtype = check_precision(device, precision)
    scaler = grad_scaler(device, amp_dtype)

    # --- progress counters (all of it goes into the checkpoint) ------------------------------
    step = 0                # optimizer steps in the whole run
    epoch = 0
    step_in_epoch = 0       # chunk index within the current epoch
    tokens_seen = 0
    elapsed_before = 0.0    # seconds trained before this launch
    lr_scale = 1.0          # lowered after a numeric rollback
    rollbacks = 0
    best_val = float("inf")
    best_bpc = float("inf")
    since_eval: list[float] = []   # chunk losses since the last evaluation (its train_loss)
    state = model.init_state(config.batch_size, device)   # each (layers, B, H)

    def restore(ck: dict) -> None:
        nonlocal step, epoch, step_in_epoch, tokens_seen, elapsed_before, lr_scale, rollbacks
        nonlocal best_val, best_bpc, state
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        p = ck["progress"]
        step, epoch, step_in_epoch = p["step"], p["epoch"], p["step_in_epoch"]
        tokens_seen, elapsed_before = p["tokens_seen"], p["elapsed"]
        lr_scale, rollbacks = p.get("lr_scale", 1.0), p.get("rollbacks", 0)
        best_val, best_bpc = p["best_val_loss"], p["best_val_bpc"]
        since_eval[:] = p.get("since_eval", [])
        state = tuple(s.to(device, torch.float32) for s in ck["hidden_state"][ctx.rank])
        _set_rng_state(ck["rng"][ctx.rank], device)
        if scaler is not None and ck.get("grad_scaler"):
            scaler.load_state_dict(ck["grad_scaler"])   # an fp16 run resumes with its loss scale
        model.rnn.flatten_parameters()

    metrics = None
    tboard = None  # TensorBoard sink (--tensorboard), rank 0 only, fed the same events as metrics
    if ckpt is not None:
        restore(ckpt)
    if ctx.is_main:
        metrics = MetricsLog(run_dir / "metrics.jsonl",
                             truncate_to=ckpt["progress"]["metrics_offset"] if ckpt else 0)
        (run_dir / "config.toml").write_text(to_toml(model_config, config))
        if config.tensorboard:
            from ..tb import TensorBoardSink
            tboard = TensorBoardSink(run_dir)

    def emit(event: Event) -> None:
        if metrics is not None:
            metrics.write(event)
        if tboard is not None:
            tboard(event)
        emit_display(event)

    def gather(obj):
        """Every rank's value of obj, in rank order (for states and RNGs in the checkpoint)."""
        return distributed.all_gather_object(obj, ctx)

    def save(name: str, elapsed: float) -> None:
        """Write run_dir/name atomically. Every rank calls it (states are gathered)."""
        hidden = gather(tuple(s.detach().float().cpu() for s in state))
        rngs = gather(_rng_state(device))
        # Each rank's weight digest: proof in the checkpoint that the replicas agree.
        digests = gather(distributed.weights_digest(model)) if ctx.enabled else None
        if not ctx.is_main:
            return
        if digests is not None and len(set(digests)) > 1:
            emit(Notice(f"the {ctx.world_size} replicas' weights differ at step {step}; this is a "
                        f"bug in charlm's DDP set-up, please report it", step, "warning"))
        if not _all_finite(model):
            emit(Notice(f"not saving {name}: the weights are not finite", step, "warning"))
            return
        payload = {
            "model_config": asdict(model_config),
            "train_config": asdict(config),
            "tokenizer": tokenizer.to_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "progress": {"step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                         "tokens_seen": tokens_seen, "elapsed": elapsed, "lr_scale": lr_scale,
                         "rollbacks": rollbacks, "best_val_loss": best_val, "best_val_bpc": best_bpc,
                         "since_eval": list(since_eval), "metrics_offset": metrics.offset()},
            "hidden_state": [list(h) for h in hidden],
            "rng": rngs,
            "corpus": {"name": dataset.corpus_name, "path": str(Path(corpus.files[0]).resolve())
                       if len(corpus.files) == 1 and corpus.name != "builtin:python-stdlib" else corpus.name,
                       "sha256": dataset.sha256, "chars": dataset.chars,
                       "train_tokens": dataset.train.tokens, "val_tokens": dataset.val.tokens},
            "world_size": ctx.world_size,
            "replica_digests": digests,
            "device": str(device),
            "precision": precision,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "versions": {"charlm": __version__, "torch": str(torch.__version__),
                         "python": platform.python_version()},
        }
        save_checkpoint(payload, run_dir / name)
        emit(CheckpointSaved(str(run_dir / name), step))

    def evaluate(train_loss: float, elapsed: float) -> None:
        """Validation loss on the held-out tail; every rank computes it, so all agree."""
        nonlocal best_val, best_bpc
        result = evaluate_ids(model, dataset.val.ids, dataset.val.chars, device,
                              max_tokens=config.eval_tokens or None)
        is_best = result.loss < best_val
        if is_best:
            best_val, best_bpc = result.loss, result.bits_per_char
        emit(Evaluated(step, train_loss, result.loss, result.bits_per_char, elapsed, is_best))
        # best.pt first: a crash between the two saves then resumes from the previous last.pt,
        # which replays this step and writes best.pt again (the other order would lose it).
        if is_best:
            save("best.pt", elapsed)
        save("last.pt", elapsed)

    emit(RunStarted(
        run_dir=str(run_dir), device=f"{describe_device(device)}, {precision}",
        model=f"{model_config.cell} {model_config.layers}x{model_config.hidden_size}",
        parameters=model.num_parameters(), tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size,
        corpus=dataset.corpus_name, train_tokens=dataset.train.tokens, val_tokens=dataset.val.tokens,
        batch_size=config.batch_size, seq_len=config.seq_len, steps_per_epoch=batches.steps_per_epoch,
        max_steps=total_steps, max_time=max_time, start_step=step, resumed=ckpt is not None,
        world_size=ctx.world_size))
    for note in notes:
        emit(Notice(note, step, "info"))
    stop.armed = True   # from here a signal finishes the step and saves last.pt
    if ckpt is None:
        save("last.pt", 0.0)  # a good checkpoint exists from the first instant: resume/rollback target

    # --- the loop ------------------------------------------------------------------------------
    report_every = 1 if device.type == "cpu" else 16   # read losses back this often
    pending: list[tuple] = []                            # device tensors waiting to be read back
    chunks = DeviceBatches(batches, device)              # the ids reach the device without a host copy per step
    bad_in_a_row = 0
    t_start = time.perf_counter()
    last_report_time, last_report_tokens = t_start, tokens_seen
    reason = "max_steps"
    # Under DDP the learning rate may depend on the clock (--max-time) only through a time all
    # ranks agree on, or the replicas would take different steps: the slowest rank's elapsed
    # time, agreed at each report interval (see agreed_stop).
    lr_clock = elapsed_before
    model.train()

    def elapsed_now() -> float:
        return elapsed_before + (time.perf_counter() - t_start)

    def finished() -> Optional[str]:
        if total_steps is not None and step >= total_steps:
            return "epochs" if config.max_steps is None or total_steps < config.max_steps else "max_steps"
        if max_time is not None and elapsed_now() >= max_time:
            return "max_time"
        return None

    def agreed_stop() -> tuple[Optional[str], int, bool]:
        """(finish reason, signal number or 0, should_stop) that every rank agrees on.

        The step budget is the same on every rank, but the clock, a signal and ``should_stop``
        are each rank's own: under DDP they are combined (one tiny all-reduce, at report
        intervals only) so all ranks leave the loop at the same step and save the same way;
        a rank that went on alone would wait forever in the next gradient all-reduce.
        """
        reason = finished()
        if reason in ("epochs", "max_steps"):
            return reason, 0, False
        if ctx.enabled and step % report_every != 0:
            return None, 0, False
        signum = stop.signum or 0
        asked = should_stop is not None and should_stop()
        if not ctx.enabled:
            return reason, signum, asked
        nonlocal lr_clock
        flags = torch.tensor([reason == "max_time", signum, asked, elapsed_now()], dtype=torch.float64,
                             device=device if device.type == "cuda" else "cpu")
        time_up, signum, asked, lr_clock = distributed.all_reduce_max(flags, ctx).tolist()
        return ("max_time" if time_up else None), int(signum), bool(asked)

    def flush_reports() -> None:
        """Read back the pending losses (one sync), emit one event per chunk, watch for faults."""
        nonlocal bad_in_a_row, last_report_time, last_report_tokens
        if not pending:
            return
        values = torch.stack([torch.cat([l[None], n[None], f.float()]) for (_, _, l, n, f, *_rest) in pending])
        if ctx.enabled:
            # The chunk loss of the global batch: the mean of the ranks' losses (one all-reduce
            # per report interval). The gradient norm is already global (DDP averaged the grads).
            values = distributed.all_reduce_sum(values, ctx) / ctx.world_size
        values = values.tolist()
        now = time.perf_counter()
        rate = (tokens_seen - last_report_tokens) / max(now - last_report_time, 1e-9)
        last_report_time, last_report_tokens = now, tokens_seen
        for (s, ep, _, _, _, lr, toks, el), (loss, norm, skip, bad) in zip(pending, values):
            skipped = skip > 0
            emit(ChunkTrained(step=s, epoch=ep, loss=loss, grad_norm=norm,
                              clipped=bool(config.grad_clip) and norm > config.grad_clip,
                              lr=lr, tokens=toks, elapsed=el, tokens_per_s=rate, skipped=skipped))
            if bad > 0:
                bad_in_a_row += 1
            else:
                bad_in_a_row = 0
            if not skipped:
                since_eval.append(loss)
        pending.clear()

    signum = 0
    while True:
        reason, signum, asked = agreed_stop()
        if reason or signum or asked:
            break

        # A new epoch starts every stream from its beginning, so the state starts from zero.
        if step_in_epoch >= batches.steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
            state = model.init_state(config.batch_size, device)

        lr = lr_at(config, step, lr_clock if ctx.enabled else elapsed_now(), total_steps, max_time,
                   lr_scale)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Chunk i of every stream: x (B, k) inputs, y (B, k) the same text one token ahead.
        x, y = chunks.batch(step_in_epoch)

        state_in = state   # the carried state this chunk starts from (--grad-report-every)
        with autocast(device, amp_dtype):
            logits, new_state = train_model(x, state)                          # (B, k, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            # fp16: backward through loss * scale, then unscale the grads in place so clipping
            # and the norm see true values. An overflow shows up as a non-finite norm below.
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

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
        state = tuple(torch.where(bad, old, new.detach().float()) for old, new in zip(state, new_state))

        step += 1
        step_in_epoch += 1
        tokens_seen += x.numel() * ctx.world_size
        flags = torch.stack([skip, bad])   # (2,) skipped update, diverging step
        pending.append((step, epoch, loss.detach(), grad_norm.detach(), flags, lr, tokens_seen, elapsed_now()))
        if len(pending) >= report_every:
            flush_reports()

        if config.grad_report_every and step % config.grad_report_every == 0:
            # How far back the gradient reaches now: the loss at this chunk's last position,
            # unrolled step by step through the chunk for a few streams (rank 0 only, no
            # collectives). Lags stop at k - 1, the most BPTT(k) ever trains through.
            flush_reports()   # on every rank: under DDP the read-back is a collective
            if ctx.is_main:
                emit(GradientReport(step, horizon_summary(model, x, y, state_in)))

        if bad_in_a_row >= config.max_bad_steps:
            # Roll back to the last good checkpoint at half the learning rate, or give up.
            rollbacks += 1
            if rollbacks > MAX_ROLLBACKS:
                emit(Notice(f"training diverged: {config.max_bad_steps} non-finite steps in a row after "
                            f"{MAX_ROLLBACKS} rollbacks; stopping", step, "warning"))
                if metrics is not None:
                    metrics.close()
                if tboard is not None:
                    tboard.close()
                raise NumericError(
                    f"training diverged (non-finite loss or gradients) even after {MAX_ROLLBACKS} "
                    f"rollbacks with a lower learning rate; lower --lr (now {config.lr}) or --grad-clip. "
                    f"last.pt in {run_dir} holds the last good weights")
            good = load_checkpoint(run_dir / "last.pt", map_location="cpu")
            kept_rollbacks = rollbacks
            restore(good)
            rollbacks, lr_scale = kept_rollbacks, 0.5 ** kept_rollbacks
            bad_in_a_row = 0
            emit(Notice(f"{config.max_bad_steps} non-finite steps in a row: rolled back to step {step} "
                        f"with the learning rate scaled by {lr_scale:g}", step, "warning"))
            continue  # the restored step was evaluated and saved when it was first reached

        if step % config.eval_every == 0:
            flush_reports()
            train_loss = sum(since_eval) / len(since_eval) if since_eval else float("nan")
            since_eval.clear()
            evaluate(train_loss, elapsed_now())

    # --- the end: evaluate, save, report ------------------------------------------------------
    flush_reports()
    interrupted = bool(signum)
    if not interrupted and should_stop is not None and reason is None:
        reason = "stopped"
    elapsed = elapsed_now()
    if since_eval or (step % config.eval_every != 0):
        train_loss = sum(since_eval) / len(since_eval) if since_eval else float("nan")
        if interrupted or reason == "stopped":
            # Quick, and exact: an evaluation here would add a best-val record that the
            # uninterrupted run never has, so a resumed run would diverge from it.
            save("last.pt", elapsed)
        else:
            evaluate(train_loss, elapsed)
    else:
        save("last.pt", elapsed)
    emit(Finished(str(run_dir), step, "interrupted" if interrupted else (reason or "stopped"),
                  best_val if math.isfinite(best_val) else None,
                  best_bpc if math.isfinite(best_bpc) else None, elapsed))
    if metrics is not None:
        metrics.close()
    if tboard is not None:
        tboard.close()
    if interrupted:
        signame = signal.Signals(signum).name
        err = Interrupted(f"{signame}: saved {run_dir / 'last.pt'} at step {step}; continue with "
                          f"`charlm train --out {run_dir} --resume`")
        err.exit_code = 130 if signum == signal.SIGINT else 128 + signum
        raise err
    return run_dir


def resolve_options(explicit: dict, config_file: Optional[str] = None) -> tuple[Optional[ModelConfig], TrainConfig]:
    """Merge option sources: defaults < the checkpoint (on --resume) < TOML file < explicit flags.

    Returns ``(None, train_config)`` for a resume that names no model option, so the checkpoint's
    model is used as it is; a model option that is named must agree with the checkpoint.
    """
    from ..config import config_keys, load_toml, split_options

    file_options = load_toml(config_file) if config_file else {}
    options = {**file_options, **{k: v for k, v in explicit.items() if v is not None}}
    keys = config_keys()
    model_named = any(keys[k][0] is ModelConfig for k in options)
    resume = options.get("resume", False)
    if resume:
        out = options.get("out")
        if out is None:
            raise ConfigError("--resume needs --out DIR naming the run to continue")
        ckpt_path = Path(out) / "last.pt"
        if not ckpt_path.is_file():
            from ..rundir import is_unstarted_run
            from ..errors import RunDirError

            if not is_unstarted_run(Path(out)):
                raise RunDirError(f"cannot resume: {out} has no last.pt (start it without --resume)")
            # Killed before its first checkpoint: start over with the options it was launched
            # with (its config.toml, when the crash left a whole one), under the ones given now.
            base: dict = {}
            try:
                if (Path(out) / "config.toml").is_file():
                    base = load_toml(Path(out) / "config.toml")
            except ConfigError:
                pass
            for k in ("resume", "force", "out"):
                base.pop(k, None)
            return split_options({**base, **options})
        ckpt = load_checkpoint(ckpt_path)
        check_resumable(ckpt, ckpt_path)
        saved = {k: v for k, v in ckpt["train_config"].items() if k in keys}
        saved.update({("model" if k == "cell" else k): v for k, v in ckpt["model_config"].items()
                      if k != "vocab_size"})
        # The device is the machine's, not the run's: a resume picks the best one present
        # (a GPU run continues on a CPU-only machine and the reverse) unless --device is given.
        for k in ("resume", "force", "out", "device"):
            saved.pop(k, None)
        # The stopping rule is the new launch's own business when it names one.
        if any(k in options for k in ("max_steps", "max_time", "epochs")):
            for k in ("max_steps", "max_time", "epochs"):
                saved.pop(k, None)
        merged = {**saved, **options}
        model_config, train_config = split_options(merged)
        return (model_config if model_named else None), train_config
    try:
        model_config, train_config = split_options(options)
    except ConfigError as e:
        # A bad value that came from the file (not a flag): say which file, so it can be found.
        from_file = [k for k in file_options if explicit.get(k) is None]
        if any(f"--{k.replace('_', '-')} " in f"{e} " for k in from_file):
            raise ConfigError(f"{config_file}: {e}") from None
        raise
    return model_config, train_config
