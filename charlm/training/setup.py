"""Set-up: everything a run needs, built and validated into one value before the loop starts.

Validate, then act. The launch (launch.py) has decided, from the options and the disk, what the
run is and what happens to its folder, and has read and checked the checkpoint it resumes. Here
the device's precision, the corpus, the tokenizer and the sizes are checked, and the model is
built, before the run directory is created, replaced or written: a new run is prepared in a hidden
sibling folder (rundir.stage) and moved into place (rundir.commit) as the very last step. A
mistyped corpus path with --force, a --seq-len too long for the text or a corpus that is not UTF-8
leave the old run exactly as it was.

Under torchrun every rank plans its launch from the same disk and they must agree; rank 0 locks
and prepares the run directory and encodes the data; the other ranks reuse its files with the very
same tokenizer. An error on rank 0 is sent to every rank, so all of them stop with the same
message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import distributed
from ..checkpoint import Checkpoint
from ..config import DEFAULT_MAX_TIME, ModelConfig, TrainConfig
from ..corpus.dataset import Dataset, StreamBatches, prepare_dataset
from ..corpus.text import Corpus
from ..corpus.tokenizers import tokenizer_from_dict
from ..devices import check_precision, grad_scaler, resolve_device, resolve_precision
from ..errors import CharLMError, CorpusError, DeviceError, RunDirError
from ..limits import check_model_fits
from ..model import build_model
from ..records import separator_id
from ..rundir import (RunPlan, commit, discard, name_the_run, new_run_id, open_run_dir, read_marker, stage,
                      write_marker)
from .finetune import Source, load_source, transfer_weights
from .launch import Launch
from .state import Progress, TrainState


@dataclass
class Setup:
    """One validated run, ready to train."""

    config: TrainConfig
    model_config: ModelConfig
    device: torch.device
    ctx: distributed.DistContext
    precision: str
    amp_dtype: Optional[torch.dtype]
    run_dir: Path
    run_id: str
    plan: RunPlan                      # holds the run's lock (rank 0); released at the end
    corpus: Corpus
    dataset: Dataset
    batches: StreamBatches
    total_steps: Optional[int]
    max_time: Optional[float]
    state: TrainState
    train_model: torch.nn.Module       # the model, or its DDP wrapper
    ckpt: Optional[Checkpoint] = None  # the checkpoint resumed from
    origin: Optional[dict] = None      # the run fine-tuned from (--init-from): path, run_id, step
    notes: list = field(default_factory=list)   # said once the run has started

    @property
    def tokenizer(self):
        return self.dataset.tokenizer


def prepare_device(launch: Launch) -> tuple[torch.device, distributed.DistContext]:
    """What this machine must offer the launch (its device, an extra), then the process group
    (under torchrun)."""
    if launch.config.tensorboard:
        from ..tb import require
        require()  # before anything else: a missing extra must not leave a half-made run
    device = resolve_device(launch.config.device)
    ctx = distributed.setup(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return device, ctx


def build(launch: Launch, device: torch.device, ctx: distributed.DistContext) -> Setup:
    """Validate what needs the machine and the corpus, then create (or lock, for a resume) the
    run directory as the launch decided."""
    _agree(launch, ctx)
    # Rank 0's run folder (None on the others): no disk writes yet, but the lock of an existing run.
    plan: Optional[RunPlan] = distributed.on_main(
        ctx, lambda: open_run_dir(launch.run_dir, launch.mode, launch.folder))
    try:
        return _build(launch, device, ctx, plan)
    except BaseException as e:
        staging = plan.staging if plan is not None else None
        if plan is not None:
            discard(plan)
            plan.release()
        if isinstance(e, CharLMError):
            raise name_the_run(e, plan, staging) from None
        raise


def _agree(launch: Launch, ctx: distributed.DistContext) -> None:
    """Every rank planned its own launch from the same disk: they must have decided alike."""
    modes = distributed.all_gather_object(launch.mode, ctx)
    if len(set(modes)) > 1:
        seen = ", ".join(f"rank {r}: {m}" for r, m in enumerate(modes))
        raise RunDirError(f"the processes see the run folder {launch.run_dir} differently ({seen}); "
                          f"give every node the same shared path for --out")


def _build(launch: Launch, device: torch.device, ctx: distributed.DistContext,
           plan: Optional[RunPlan]) -> Setup:
    path = distributed.broadcast_object(plan.path if plan else None, ctx)
    config, model_config, ckpt = launch.config, launch.model_config, launch.checkpoint
    notes = list(launch.notes)
    config, precision, amp_dtype = _precision(config, device, ckpt is not None, notes)
    source: Optional[Source] = None
    if ckpt is None and config.init_from:
        source, config, model_config = load_source(config, model_config, device)
    if model_config.cell == "transformer":
        model_config = replace(model_config, window=config.seq_len)   # a chunk is its attention window
    corpus = Corpus.resolve(config.corpus)
    if corpus.skipped:
        notes.append(f"skipped {len(corpus.skipped)} files in {corpus.name} that are not text "
                     f"(binary, or not UTF-8 at the start)")

    def prepare(data_dir: Path, tokenizer_dict: Optional[dict]) -> Dataset:
        return prepare_dataset(corpus, data_dir, config.tokenizer, config.vocab_size, config.min_char_count,
                               config.normalize, config.val_fraction, tokenizer_dict=tokenizer_dict)

    # Rank 0 builds the tokenizer and writes the ids (into the hidden staging folder for a new
    # run); the others reuse its files with the same tokenizer (sentencepiece trained twice
    # could differ).
    def main_data() -> tuple[Dataset, dict]:
        data_dir = path / "data" if launch.resuming else stage(plan) / "data"
        dataset = (source.dataset(corpus, data_dir, config) if source is not None
                   else prepare(data_dir, ckpt.tokenizer if ckpt else None))
        _check_sizes(dataset, config, ctx, ckpt, corpus)
        # Refuse a model this machine cannot hold (--hidden-size 1000000) before building it.
        check_model_fits(model_config, dataset.tokenizer.vocab_size, device, config.batch_size, config.seq_len)
        return dataset, dataset.tokenizer.to_dict()

    dataset, tok_dict = distributed.on_main(ctx, main_data) or (None, None)
    tok_dict = distributed.broadcast_object(tok_dict, ctx)
    model_config = replace(model_config, vocab_size=tokenizer_from_dict(tok_dict).vocab_size
                           if dataset is None else dataset.tokenizer.vocab_size)
    if source is not None:
        notes.append(f"fine-tuning from {source.path} (step {source.record['step']}): vocabulary "
                     f"{source.tokenizer.vocab_size} -> {model_config.vocab_size} tokens; fresh optimizer and schedule")
    state, train_model = _model(config, model_config, device, ctx, amp_dtype,
                                source.weights if source is not None else None)
    if ckpt is not None:
        state.load_state_dict(ckpt, str(path / "last.pt"))

    # Everything is known to be good: now, and only now, the run directory is made or replaced.
    # (The staged memmaps stay valid when their folder is renamed: a mapping follows the file.)
    run_id, path = distributed.broadcast_object(distributed.on_main(ctx, lambda: _commit(plan, ckpt)), ctx)
    if not ctx.is_main:
        dataset = prepare(path / "data", tok_dict)
    batches = StreamBatches(dataset.train.ids, config.batch_size, config.seq_len, ctx.rank, ctx.world_size)
    total_steps, max_time = _budget(config, batches)
    return Setup(config=config, model_config=model_config, device=device, ctx=ctx, precision=precision,
                 amp_dtype=amp_dtype, run_dir=path, run_id=run_id, plan=plan, corpus=corpus,
                 dataset=dataset, batches=batches, total_steps=total_steps, max_time=max_time,
                 state=state, train_model=train_model, ckpt=ckpt, notes=notes,
                 origin=source.record if source is not None else (ckpt.init_from if ckpt else None))


def _precision(config: TrainConfig, device: torch.device, resuming: bool,
               notes: list[str]) -> tuple[TrainConfig, str, Optional[torch.dtype]]:
    """The run's precision and its autocast dtype (None: fp32), checked once, here: on a CUDA
    device it can only be asked once the process's own GPU is chosen. A new run refuses one the
    device lacks; a resume goes on in fp32 there, since a checkpoint resumes anywhere."""
    try:
        precision = resolve_precision(device, config.precision)
        return config, precision, check_precision(device, precision)
    except DeviceError:
        if not resuming:
            raise
        notes.append(f"resuming a --precision {config.precision} run on {device.type}, which "
                     f"lacks it: continuing in fp32")
        return replace(config, precision="fp32"), "fp32", None


def _check_sizes(dataset: Dataset, config: TrainConfig, ctx: distributed.DistContext,
                 ckpt: Optional[Checkpoint], corpus: Corpus) -> None:
    """What the encoded text must satisfy before a run may start."""
    if ckpt and ckpt.corpus.get("sha256") != dataset.sha256:
        raise CorpusError(f"cannot resume: corpus {corpus.name} changed since the run started "
                          f"(sha256 differs); start a new run")
    StreamBatches(dataset.train.ids, config.batch_size, config.seq_len, 0, ctx.world_size)
    separator_id(config.records, config.record_sep, dataset.tokenizer)   # --records: a known character
    if dataset.val.tokens < 2:
        raise CorpusError("the validation split is empty; raise --val-fraction or use a longer corpus")


def _commit(plan: RunPlan, ckpt: Optional[Checkpoint]) -> tuple[str, Path]:
    """Make the run directory (rank 0); the run's id and its final path."""
    if plan.mode == "resume":
        marker = read_marker(plan.path)
        run_id = (marker or {}).get("run_id") or (ckpt.run_id if ckpt else None) or new_run_id()
        if marker is None:
            # A run from before markers (or whose marker was lost): adopted, under the id its
            # checkpoint carries when it has one.
            write_marker(plan.path, run_id)
        for stray in plan.path.glob(".*.tmp"):   # leftovers of a save cut short by a crash
            stray.unlink(missing_ok=True)
        return run_id, plan.path
    run_id = new_run_id()
    write_marker(plan.staging, run_id)
    return run_id, commit(plan)


def _budget(config: TrainConfig, batches: StreamBatches) -> tuple[Optional[int], Optional[float]]:
    """The stopping rule: --max-steps, --epochs and --max-time all count the whole run."""
    max_time = config.max_time if config.stopping_rule_given() else DEFAULT_MAX_TIME
    total_steps = config.max_steps
    if config.epochs is not None:
        epoch_steps = math.ceil(config.epochs * batches.steps_per_epoch)
        total_steps = min(total_steps, epoch_steps) if total_steps else epoch_steps
    return total_steps, max_time


def _model(config: TrainConfig, model_config: ModelConfig, device: torch.device, ctx: distributed.DistContext,
           amp_dtype: Optional[torch.dtype], init_weights: Optional[dict] = None):
    """Model (seeded), its DDP wrapper, optimizer and loss scaler, as a fresh TrainState.
    ``init_weights``: a fine-tuned run's source weights, over the fresh initialisation."""
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    if init_weights is not None:
        transfer_weights(model, init_weights)
    train_model: torch.nn.Module = model
    if ctx.enabled:
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        # Same initial weights everywhere (DDP also broadcasts rank 0's), but each rank its own
        # dropout masks: its streams are different text.
        torch.manual_seed(config.seed + ctx.rank)
    # cuDNN wants the RNN weights in one contiguous buffer; DDP's initial broadcast and
    # load_state_dict copy into the parameters, so re-flatten after each of them.
    model.flatten_parameters()
    # Fused AdamW reads `found_inf` and skips a non-finite update on the device, without a sync.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay, fused=fused)
    # Mixed precision: autocast for the forward pass (bf16 on a CPU with native bf16 by default);
    # fp16 also scales the loss so small gradients survive fp16's narrow range. The scaler only
    # unscales and tracks its scale; the step itself stays ours (found_inf on the fused
    # optimizer, see step.py). The weights, the optimizer and the carried state stay fp32.
    scaler = grad_scaler(device, amp_dtype)
    state = TrainState(model=model, optimizer=optimizer, scaler=scaler,
                       hidden=model.init_state(config.batch_size, device), progress=Progress(),
                       device=device, rank=ctx.rank)
    return state, train_model


