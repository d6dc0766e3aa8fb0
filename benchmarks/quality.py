"""Quality per wall-clock minute on tiny shakespeare (issue 5, target 1).

Runs, in one process run and on the same machine state:
1. charlm's default recipe: `charlm train tinyshakespeare.txt --max-time T`, then
   `charlm evaluate RUN tinyshakespeare.txt --tail 0.1` (the last 10%, never trained on);
2. the reference: a plain one-layer 256-unit LSTM loop (word_language_model style: Embedding +
   nn.LSTM + Linear, Adam 2e-3 constant, clip 1.0, detach) trained on the same first
   90% for the same T seconds and evaluated on the same tail with the same stateful evaluation.
It prints both losses (nats/char) and their ratio, cites nanoGPT's documented CPU recipe (1.886
after 135 s on these machines) and A100 figure (1.4697), and draws the loss curve of charlm's run.

    python benchmarks/quality.py                    # T = 135 s (about 5 minutes in all)
    python benchmarks/quality.py --seconds 20 --no-reference   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, append_result, corpus_path, machine  # noqa: E402

NANOGPT_CPU_135S = 1.886    # ../shared/corpora/README.md, measured on these machines
NANOGPT_A100 = 1.4697       # nanoGPT README, shakespeare_char on an A100


def run_charlm(corpus: Path, seconds: float, out: Path, extra: list[str]) -> tuple[float, float, dict]:
    # The subprocesses run this checkout's charlm too, wherever the script is started from.
    env = {**os.environ, "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "charlm", "train", str(corpus), "--max-time", str(seconds),
           "--out", str(out), "--force", "--sample-length", "0", *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    ev = subprocess.run([sys.executable, "-m", "charlm", "evaluate", str(out / "last.pt"), str(corpus),
                         "--tail", "0.1", "--json", "-", "--device", "cpu"],
                        check=True, env=env, capture_output=True, text=True)
    from charlm.runinfo import checkpoint_info

    return json.loads(ev.stdout)["loss"], wall, checkpoint_info(out / "last.pt")


def run_reference(corpus: Path, seconds: float) -> float:
    """A plain LSTM 1x256 loop for `seconds`, evaluated on the tail with charlm's evaluation."""
    from charlm.config import ModelConfig
    from charlm.evaluation import evaluate_ids
    from charlm.model import CharRNN

    text = corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i + 1 for i, c in enumerate(chars)}  # id 0 is <unk>, as in charlm
    ids = np.array([stoi[c] for c in text], dtype=np.int64)
    n_val = int(round(len(ids) * 0.1))
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    V, B, T = len(chars) + 1, 64, 64
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="lstm", vocab_size=V, embedding_size=64, hidden_size=256))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    L = len(train_ids) // B
    data = torch.from_numpy(train_ids[: B * L]).view(B, L)
    state, i, t0 = None, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        j = (i * T) % ((L - 1) // T * T)
        if j == 0:
            state = None
        x, y = data[:, j:j + T], data[:, j + 1:j + 1 + T]
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        i += 1
    return evaluate_ids(model, val_ids, len(val_ids), torch.device("cpu")).loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=135.0)
    ap.add_argument("--no-reference", action="store_true", help="skip the plain-LSTM reference run")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--plot", type=Path, default=None, help="write the loss curve here (png)")
    ap.add_argument("extra", nargs="*", help="extra `charlm train` options, after --")
    args = ap.parse_args()
    corpus = corpus_path("tinyshakespeare.txt")
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        ours, wall, info = run_charlm(corpus, args.seconds, out, args.extra)
        recipe = "default recipe" if not args.extra else " ".join(args.extra)
        print(f"charlm {recipe}, --max-time {args.seconds:g}: {ours:.4f} nats/char on the last 10% "
              f"(wall {wall:.0f} s including start-up and data preparation; {info['step']} steps, "
              f"{info['tokens_seen'] / 1e6:.2f}M tokens, {info['parameters']:,} parameters)")
        ref = None
        if not args.no_reference:
            ref = run_reference(corpus, args.seconds)
            print(f"reference plain LSTM 1x256 loop, {args.seconds:g} s: {ref:.4f} nats/char | "
                  f"ratio charlm/reference {ours / ref:.3f}")
        print(f"nanoGPT CPU recipe (135 s, cited): {NANOGPT_CPU_135S} | ratio {ours / NANOGPT_CPU_135S:.3f}; "
              f"nanoGPT on an A100 (cited): {NANOGPT_A100}")
        if args.plot:
            subprocess.run([sys.executable, "-m", "charlm", "plot", str(out), "-o", str(args.plot)], check=False)
        append_result("quality", {"seconds": args.seconds, "charlm_loss": ours, "reference_loss": ref,
                                  "ratio": ours / ref if ref else None, "nanogpt_cpu_135s": NANOGPT_CPU_135S,
                                  "extra": args.extra, "steps": info["step"], "tokens": info["tokens_seen"],
                                  "parameters": info["parameters"]})


if __name__ == "__main__":
    main()
