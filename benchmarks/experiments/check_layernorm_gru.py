"""With layernorm-gru.patch applied: the hand-written LN-GRU layer against the plain equations.

    git apply benchmarks/experiments/layernorm-gru.patch
    python benchmarks/experiments/check_layernorm_gru.py

Checks, in float64, that charlm/lngru_fast.py's forward equals a per-step loop of the same
equations run through autograd, and that its backward passes torch.autograd.gradcheck.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from charlm.lngru_fast import LNGRULayer  # noqa: E402  (exists only with the patch applied)


def plain(gi, h, w_hh, g, b):
    """The same layer step by step: gi (T, B, 3H), h (B, H) -> out (T, B, H)."""
    H = h.size(1)
    outs = []
    for t in range(gi.size(0)):
        gh = F.layer_norm(h @ w_hh.t(), (3 * H,), g, b)                          # (B, 3H)
        r = torch.sigmoid(gi[t, :, :H] + gh[:, :H])
        z = torch.sigmoid(gi[t, :, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[t, :, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs)


torch.manual_seed(0)
T, B, H = 7, 3, 5
args = [torch.randn(T, B, 3 * H), torch.randn(B, H), 0.5 * torch.randn(3 * H, H),
        1 + 0.1 * torch.randn(3 * H), 0.1 * torch.randn(3 * H)]
args = [a.double().requires_grad_() for a in args]
difference = (LNGRULayer.apply(*args) - plain(*args)).abs().max().item()
print(f"forward: largest difference from the plain loop {difference:.1e}")
assert difference < 1e-12
assert torch.autograd.gradcheck(lambda *a: LNGRULayer.apply(*a), args)
print("backward: gradcheck passed")
