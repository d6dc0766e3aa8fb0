"""GPU training throughput: charlm's full training loop against raw cuDNN nn.LSTM, same shapes.

    python benchmarks/gpu_throughput.py [--seconds 15] [--out benchmarks/gpu_results.json]

Shapes: LSTM 2 x 1024, seq-len 128, batch 128 (embedding 64, as charlm's default). Four
measurements of --seconds each (60 s in all by default), in fp32 and fp16:

- raw: nn.LSTM forward + backward on random inputs under autocast, nothing else: the ceiling.
- charlm: `charlm.training.train` itself (embedding, LSTM, output layer, cross-entropy, clipping,
  fused AdamW, carried state, metrics), read from its own tokens/s at the report intervals,
  after a warm-up.

The target is charlm >= 85% of raw at each precision. Figures go to a JSON file (and stdout).
Needs a CUDA GPU; without one it stops at once with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, LAYERS, EMBED, SEQ, BATCH = 1024, 2, 64, 128, 128
TARGET = 0.85


def raw_lstm(precision: str, seconds: float, device: torch.device) -> float:
    """Tokens per second of nn.LSTM forward + backward alone (cuDNN), B x T tokens per step."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(EMBED, HIDDEN, num_layers=LAYERS, batch_first=True).to(device)
    x = torch.randn(BATCH, SEQ, EMBED, device=device)
    state = tuple(torch.zeros(LAYERS, BATCH, HIDDEN, device=device) for _ in range(2))
    dtype = {"fp32": None, "fp16": torch.float16}[precision]

    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out, _ = lstm(x, state)                                  # (B, T, H)
        out.float().sum().backward()

    for _ in range(10):   # warm-up: cuDNN plans, allocator
        step()
    torch.cuda.synchronize(device)
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        steps += 10
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * BATCH * SEQ / elapsed


def corpus_file(folder: Path) -> Path:
    """tiny shakespeare when ../shared/corpora has it, else 4 MB of generated text."""
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora" / "tinyshakespeare.txt"
    if shared.exists():
        return shared
    import random

    rng = random.Random(0)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))))
             for _ in range(3000)]
    text = " ".join(rng.choice(words) for _ in range(700_000))
    path = folder / "generated.txt"
    path.write_text(text, encoding="utf-8")
    return path


def charlm_loop(precision: str, seconds: float, corpus: Path, folder: Path) -> float:
    """Tokens per second of charlm's own training loop, from its report-interval rates."""
    from charlm.config import ModelConfig, TrainConfig
    from charlm.metrics import read_metrics
    from charlm.training import train

    config = TrainConfig(corpus=str(corpus), out=str(folder / f"run-{precision}"), force=True,
                         seq_len=SEQ, batch_size=BATCH, max_time=seconds, eval_every=10**9,
                         warmup_steps=0, device="cuda", precision=precision, sample_length=0)
    model = ModelConfig(cell="lstm", hidden_size=HIDDEN, layers=LAYERS, embedding_size=EMBED)
    run = train(config, model)
    chunks = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]
    # tokens_per_s is measured over each report interval (16 steps, ending in a read-back that
    # waits for the GPU): one value per interval; the first two are warm-up.
    rates = [c["tokens_per_s"] for c in chunks[15::16]][2:]
    if not rates:
        raise SystemExit("the charlm run was too short to measure; raise --seconds")
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="seconds per measurement (four measurements)")
    parser.add_argument("--out", default="benchmarks/gpu_results.json", help="JSON file to write")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU is available here (torch.cuda.is_available() is False); "
              "run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = False   # charlm does not set it either: same kernels
    record = {
        "benchmark": "gpu_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "gpu": torch.cuda.get_device_name(device),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "torch": str(torch.__version__), "python": platform.python_version(),
        "shape": {"cell": "lstm", "layers": LAYERS, "hidden": HIDDEN, "embedding": EMBED,
                  "seq_len": SEQ, "batch": BATCH},
        "seconds_per_measurement": args.seconds, "target_ratio": TARGET, "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = corpus_file(folder)
        record["corpus"] = corpus.name
        for precision in ("fp32", "fp16"):
            raw = raw_lstm(precision, args.seconds, device)
            torch.cuda.empty_cache()
            loop = charlm_loop(precision, args.seconds, corpus, folder)
            torch.cuda.empty_cache()
            ratio = loop / raw
            record["results"][precision] = {"raw_lstm_tokens_per_s": round(raw),
                                            "charlm_tokens_per_s": round(loop),
                                            "ratio": round(ratio, 4), "meets_target": ratio >= TARGET}
            print(f"{precision}: raw cuDNN LSTM {raw:,.0f} tok/s, charlm loop {loop:,.0f} tok/s, "
                  f"{ratio:.1%} of raw (target {TARGET:.0%})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
