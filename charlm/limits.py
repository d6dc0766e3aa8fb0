"""How much memory a model shape needs, checked before anything is allocated.

A size typed by hand (``--hidden-size 1000000``) or edited into a checkpoint would otherwise reach
torch as an allocation that fails with a traceback, or worse succeeds and swaps the machine for a
minute before failing. ``check_model_fits`` does the arithmetic first and refuses with one line.

Sits beside model.py: imports config and errors only (torch lazily, to ask a GPU its size).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .config import ModelConfig
from .errors import ConfigError
from .util import human_bytes

# Gate blocks per recurrent layer: an LSTM has 4 (input, forget, cell, output), a GRU 3 (reset,
# update, new), a tanh RNN 1. A cell this table does not know is costed like an LSTM, the largest.
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FLOAT_BYTES = 4
# Training keeps, per parameter, the weight, its gradient and Adam's two moments.
TRAIN_COPIES = 4
# Reading a text (evaluation, a prime) makes (streams, T, V) logits per forward call. With a
# vocabulary of hundreds of thousands of characters a full chunk would take tens of GB (a
# 300,000-character corpus was OOM-killed at 24 GB at its first evaluation), so T shrinks to keep
# them under this many floats (128 MiB).
LOGIT_BUDGET = 1 << 25


def steps_per_call(rows: int, vocab_size: int, most: int) -> int:
    """Time steps per forward call for ``rows`` sequences side by side: at most ``most``, and few
    enough that the (rows, T, V) logits stay under LOGIT_BUDGET floats (at least one)."""
    return max(1, min(most, LOGIT_BUDGET // (max(1, rows) * max(1, vocab_size))))


def parameter_count(model_config: ModelConfig, vocab_size: int) -> int:
    """Parameters of Embedding -> recurrent stack -> Linear, from the shape alone (exact for the
    three built-in cells; Python ints, so absurd sizes cannot overflow)."""
    c = model_config
    V, E, H, L = int(vocab_size), int(c.embedding_size), int(c.hidden_size), int(c.layers)
    if c.cell == "transformer":
        # Per block: two LayerNorms (4H), qkv (3H^2 + 3H), the projection (H^2 + H), the MLP
        # (8H^2 + 5H); then the embedding, the final norm and the head.
        block = 12 * H * H + 13 * H
        return V * H + L * block + 2 * H + (0 if c.tie_weights else H * V) + V
    g = GATES.get(c.cell, 4)
    first = g * H * (E + H) + 2 * g * H              # weight_ih (gH, E), weight_hh (gH, H), two biases
    others = (L - 1) * (g * H * (H + H) + 2 * g * H)  # deeper layers read H, not E
    head = (0 if c.tie_weights else H * V) + V        # a tied head shares the embedding's matrix
    return V * E + first + others + head              # embedding, stack, head (weight and bias)


def estimate_model_bytes(model_config: ModelConfig, vocab_size: int, batch_size: int = 0,
                         seq_len: int = 0, training: bool = True) -> int:
    """Bytes the model needs: weights (plus gradients and Adam moments when training), plus a rough
    activation term for a (batch_size, seq_len) chunk: the per-step gate and hidden values of every
    layer and the logits, kept for the backward pass."""
    params = parameter_count(model_config, vocab_size)
    total = params * FLOAT_BYTES * (TRAIN_COPIES if training else 1)
    c = model_config
    g = GATES.get(c.cell, 4)
    per_token = c.embedding_size + c.layers * c.hidden_size * (g + 2) + 2 * int(vocab_size)
    if c.cell == "transformer":
        # Per block and token: the residual stream, qkv, the attention output, the MLP's 4H twice,
        # and one row of attention weights over the window and memory.
        per_token = c.hidden_size + c.layers * (14 * c.hidden_size + int(seq_len) + c.memory) + 2 * int(vocab_size)
    total += int(batch_size) * int(seq_len) * per_token * FLOAT_BYTES
    return total


def machine_memory(device: Any = "cpu") -> Optional[int]:
    """Total memory of the device in bytes: the GPU's for CUDA, else the machine's physical
    memory (MPS shares it); None when the platform does not say."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        try:
            import torch

            return int(torch.cuda.mem_get_info(device)[1])
        except Exception:  # no driver, a device index out of range: fall back to host memory
            pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# inspect-gradients unrolls the recurrence one step at a time in float64 and keeps, for every
# window, step and layer, the state, autograd's saved values and the state's gradient: measured at
# about 15 doubles per unit for a GRU, 11 for an LSTM and 4.4 for a tanh RNN (2 layers of 64, 200
# windows of 502 steps: 1.55, 1.14 and 0.45 GB), so 5g + 2 doubles per unit bounds all three.
TRACE_BYTES = 8


def trace_bytes(cell: str, layers: int, hidden_size: int, windows: int, steps: int,
                embedding_size: int = 0) -> int:
    """Bytes a gradient trace of ``windows`` windows of ``steps`` steps needs (see above; the
    embedded input and its gradient add two doubles per embedding unit)."""
    g = GATES.get(cell, 4)
    per_step = int(layers) * int(hidden_size) * (5 * g + 2) + 2 * int(embedding_size)
    return int(windows) * int(steps) * per_step * TRACE_BYTES


def check_fits(need: int, what: str, advice: str, device: Any = "cpu") -> None:
    """Raise ConfigError (one line) when ``need`` bytes exceed the device's memory: "{what} would
    need about 12 GB; this machine has 8 GB: {advice}"."""
    have = machine_memory(device)
    if have is not None and need > have:
        where = "this GPU has" if getattr(device, "type", str(device)).startswith("cuda") else "this machine has"
        raise ConfigError(f"{what} would need about {human_bytes(need)}; {where} {human_bytes(have)}: {advice}")


def check_model_fits(model_config: ModelConfig, vocab_size: int, device: Any = "cpu",
                     batch_size: int = 0, seq_len: int = 0, training: bool = True) -> None:
    """Raise ConfigError (one line) when the model cannot fit in the device's memory."""
    need = estimate_model_bytes(model_config, vocab_size, batch_size, seq_len, training)
    have = machine_memory(device)
    if have is None or need <= have:
        return
    kind = getattr(device, "type", str(device).split(":")[0])
    where = "this GPU has" if kind == "cuda" else "this machine has"
    params = parameter_count(model_config, vocab_size)
    what = "weights, gradients and Adam moments" if training else "weights"
    raise ConfigError(f"the model would need about {human_bytes(need)} ({what} for {params:,} "
                      f"parameters); {where} {human_bytes(have)}: reduce --hidden-size, "
                      f"--embedding-size, --layers or the vocabulary")
