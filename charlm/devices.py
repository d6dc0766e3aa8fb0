"""Devices and precision: which device, which autocast dtype, and how the data reaches the device.

- ``resolve_device``: 'auto' is CUDA, then MPS, then CPU; a device that is absent is a clear error.
- ``check_precision``: fp32 everywhere; fp16 (autocast + a grad scaler) on CUDA; bf16 (autocast)
  on CUDA where this PyTorch/cuDNN really runs the recurrent layers in bf16, and on CPUs with native
  bf16 arithmetic (AVX-512 BF16 or AMX), where oneDNN runs the matrix products in bf16.
- ``DeviceBatches``: the TBPTT chunks as device tensors without a host copy per step (the whole
  id array lives on the GPU when it fits; otherwise pinned host buffers and asynchronous copies).
- ``rng_state`` / ``set_rng_state``: RNG states that survive a move between CPU and GPU.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import torch

from .errors import DeviceError
from .threads import usable_cpus


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but no CUDA GPU is available here "
                              "(use --device auto or --device cpu)")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise DeviceError("--device mps was asked for, but Apple's MPS backend is not available "
                              "here (use --device auto or --device cpu)")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_device(device: torch.device) -> str:
    """One line for the start-up banner: which device, and its name / cuDNN version."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, cuDNN {cudnn})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    # The CPUs this process may use; the thread count is the run's own line (--threads), since
    # `auto` times 1 and 2 threads and may change its choice as the machine gets busier.
    cpus = usable_cpus()
    return f"cpu ({cpus} usable CPU{'s' if cpus != 1 else ''})"


# ----------------------------------------------------------------------------------------------
# Precision

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(device: torch.device, precision: str) -> str:
    """'auto' made concrete for ``device``; any other name is returned as it is.

    auto is bf16 autocast on a CPU with native bf16 instructions, where it trains 1.4-1.7x faster
    than fp32 and reaches a lower validation loss in the same time (BENCHMARKS.md), and fp32
    everywhere else: on CUDA and MPS mixed precision has not been measured here yet, so it stays
    something a user asks for by name.
    """
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def check_precision(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device`` (None for fp32), or a DeviceError.

    fp16 is a CUDA feature (it needs loss scaling, and CPUs have no fast fp16 products). bf16 runs
    on CUDA, and on a CPU only where it has native bf16 instructions: elsewhere oneDNN emulates
    them and the run would be slower than fp32, so it is refused rather than silently slow.
    """
    precision = resolve_precision(device, precision)
    if precision not in AUTOCAST_DTYPES:
        raise DeviceError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return None
    if device.type == "cpu" and dtype is torch.bfloat16:
        if not cpu_has_native_bf16():
            raise DeviceError("--precision bf16 on CPU needs native bf16 instructions (AVX-512 BF16 "
                              "or AMX), which this CPU lacks; use --precision auto (the default) or fp32")
        return dtype
    if device.type != "cuda":
        raise DeviceError(f"--precision {precision} needs a CUDA GPU, and this run is on {device.type}; "
                          f"use --precision auto (the default) or fp32")
    if dtype is torch.bfloat16:
        ok, why = bf16_rnn_support(device)
        if not ok:
            raise DeviceError(f"--precision bf16 is not available on this GPU: {why}; "
                              f"use --precision fp16 (loss-scaled) or fp32")
    return dtype


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (oneDNN's own check: AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_rnn_support(device: torch.device) -> tuple[bool, str]:
    """Whether a cuDNN LSTM really runs in bf16 under autocast here: try it on a tiny one.

    A probe is more honest than a version table: PyTorch's autocast wrapper for cuDNN RNNs has
    long cast them to fp16 whatever dtype autocast was given, which would run the recurrence in
    fp16 without the loss scaling fp16 needs.
    """
    if not torch.cuda.is_bf16_supported():
        return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
    lstm = torch.nn.LSTM(8, 8, batch_first=True).to(device)
    x = torch.randn(2, 3, 8, device=device)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _ = lstm(x)                               # (2, 3, 8)
        out.float().sum().backward()
    except RuntimeError as e:
        return False, f"cuDNN refused a bf16 LSTM ({str(e).splitlines()[0][:120]})"
    if out.dtype != torch.bfloat16:
        cudnn = torch.backends.cudnn.version()
        return False, (f"PyTorch {torch.__version__} with cuDNN {cudnn} runs recurrent layers in "
                       f"{str(out.dtype).replace('torch.', '')} under bf16 autocast, not bf16")
    return True, ""


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast for a mixed-precision dtype; a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> Optional["torch.amp.GradScaler"]:
    """fp16 needs loss scaling (its range is narrow); bf16 and fp32 do not."""
    if dtype is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


# ----------------------------------------------------------------------------------------------
# RNG states that move between devices


def rng_state(device: torch.device) -> dict:
    """The CPU generator, plus the accelerator's when training on one."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what applies to this device and ignore the rest.

    A checkpoint written on a GPU carries a 'cuda' entry that a CPU run cannot use, and one
    written on a CPU has none for a GPU run (that generator keeps its seed): both resume.
    """
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"].cpu())


# ----------------------------------------------------------------------------------------------
# Data on the device


def device_budget(device: torch.device) -> int:
    """Bytes of device memory the training ids may take: a quarter of what is free now."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free // 4
    if device.type == "mps":
        return 1 << 30
    return 0


class DeviceBatches:
    """TBPTT chunks of a ``data.StreamBatches`` as device tensors, without a host copy per step.

    - 'resident': the rank's (B, L) slice of the ids is copied to the device once (int32, the
      ids of any vocabulary fit) and each step slices it there: no transfer at all in the loop.
    - 'pinned' (CUDA, when the ids do not fit): each chunk is staged in one of a ring of pinned
      host buffers and copied asynchronously, so the copy overlaps the previous step's kernels.
    - 'host' (CPU): the chunk is read from the memmap; the host is the device.
    """

    RING = 4

    def __init__(self, batches, device: torch.device, mode: Optional[str] = None):
        self.batches = batches
        self.device = device
        self.steps_per_epoch = batches.steps_per_epoch
        B, L = batches.data.shape
        if mode is None:
            if device.type == "cpu":
                mode = "host"
            elif B * L * 4 <= device_budget(device):
                mode = "resident"
            else:
                mode = "pinned" if device.type == "cuda" else "host"
        self.mode = mode
        if mode == "resident":
            ids = np.ascontiguousarray(batches.data, dtype=np.int32)          # (B, L)
            self.ids = torch.from_numpy(ids).to(device)
        elif mode == "pinned":
            k = batches.seq_len
            self.ring = [torch.empty((B, k + 1), dtype=torch.int64, pin_memory=True)
                         for _ in range(self.RING)]
            self.events = [None] * self.RING
            self.turn = 0
        elif mode != "host":
            raise ValueError(f"unknown DeviceBatches mode {mode!r}")

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk i: inputs (B, k) and targets (B, k) as int64 tensors on the device."""
        k = self.batches.seq_len
        if self.mode == "resident":
            window = self.ids[:, i * k: (i + 1) * k + 1].long()                # (B, k+1)
            return window[:, :-1], window[:, 1:]
        if self.mode == "pinned":
            slot = self.turn % self.RING
            self.turn += 1
            if self.events[slot] is not None:
                # Only waits if the GPU is RING steps behind: the buffer's last copy must be done.
                self.events[slot].synchronize()
            xb, yb = self.batches.batch(i)
            buf = self.ring[slot]
            buf[:, :-1].numpy()[...] = xb
            buf[:, -1].numpy()[...] = yb[:, -1]
            window = buf.to(self.device, non_blocking=True)                     # (B, k+1)
            event = torch.cuda.Event()
            event.record()
            self.events[slot] = event
            return window[:, :-1], window[:, 1:]
        xb, yb = self.batches.batch(i)
        return torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device)
