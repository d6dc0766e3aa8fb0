"""The Kneser-Ney n-gram baseline's speed and memory: charlm.lab.ngram.KneserNey against a plain
Python count of the same n-grams.

charlm's figure: training (every order 1..n: raw and continuation counts, discounts, pruned
tables) on the first --chars characters of ../shared/corpora/tinyshakespeare.txt, repeated when
more are asked for, then scoring 100 k held-out characters under every order. The reference, from
the same run: counting the same n-grams of orders 1..n with collections.Counter over string
slices, the usual pure-Python way, which does only the counting (no continuation counts, no
smoothing, no scoring). Each is run in its own subprocess, so peak memory (VmHWM) is that of the
work alone.

    python benchmarks/ngram_speed.py                     # 1 M characters, n = 10
    python benchmarks/ngram_speed.py --chars 16000000    # the default --max-train-tokens cap: memory
    python benchmarks/ngram_speed.py --quick             # 100 k characters, for the smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, append_result, corpus_path, load_average, machine  # noqa: E402

HELD_OUT = 100_000


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def text_of(chars: int) -> tuple[str, str]:
    """(training text of ``chars`` characters, held-out text): the corpus's tail is held out."""
    full = corpus_path("tinyshakespeare.txt").read_text(encoding="utf-8")
    held, train = full[-HELD_OUT:], full[:-HELD_OUT]
    return (train * (chars // len(train) + 1))[:chars], held


def child(mode: str, chars: int, order: int) -> None:
    train, held = text_of(chars)
    if mode == "charlm":
        import numpy as np

        from charlm.lab.ngram import KneserNey

        vocab = sorted(set(train) | set(held))
        lut = np.zeros(0x110000, dtype=np.int64)
        lut[[ord(c) for c in vocab]] = np.arange(len(vocab))
        encode = lambda s: lut[np.frombuffer(s.encode("utf-32-le"), dtype="<u4")]
        ids, held_ids = encode(train), encode(held)
        t = time.perf_counter()
        model = KneserNey(ids, len(vocab), order)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        lp = model.logprobs(held_ids)
        t_score = time.perf_counter() - t
        bpc = [float(-row.sum() / (len(held_ids) - 1) / np.log(2)) for row in lp]
        extra = {"train_seconds": t_train, "score_seconds": t_score, "seconds": t_train,
                 "table_mb": model.nbytes / 2**20, "best_order": int(np.argmin(bpc)) + 1, "best_bpc": min(bpc)}
    else:
        from collections import Counter

        t = time.perf_counter()
        counts = [Counter(train[i:i + k] for i in range(len(train) - k + 1)) for k in range(1, order + 1)]
        extra = {"seconds": time.perf_counter() - t, "ngrams": sum(len(c) for c in counts)}
    print(json.dumps({"peak_mb": peak_rss_mb(), **extra}))


def measure(mode: str, chars: int, order: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(chars), str(order)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=1_000_000)
    ap.add_argument("--order", type=int, default=10)
    ap.add_argument("--no-reference", action="store_true", help="skip the Python Counter (for big --chars)")
    ap.add_argument("--quick", action="store_true", help="100 k characters, for the smoke test")
    args = ap.parse_args()
    if args.quick:
        args.chars = 100_000
    print(machine())
    print(f"Kneser-Ney, orders 1-{args.order}, trained on {args.chars:,} characters of tinyshakespeare.txt, "
          f"scored on its last {HELD_OUT:,}; {load_average()}")
    ours = measure("charlm", args.chars, args.order)
    print(f"  charlm KneserNey: train {ours['train_seconds']:.2f} s ({args.chars / ours['train_seconds'] / 1e6:.2f} M chars/s), "
          f"score {ours['score_seconds']:.2f} s, peak {ours['peak_mb']:.0f} MB, tables {ours['table_mb']:.1f} MiB, "
          f"best order {ours['best_order']} at {ours['best_bpc']:.3f} bits/char")
    record = {"chars": args.chars, "order": args.order, "train_seconds": ours["train_seconds"],
              "score_seconds": ours["score_seconds"], "peak_rss_mb": ours["peak_mb"], "table_mb": ours["table_mb"],
              "best_order": ours["best_order"], "best_bits_per_char": ours["best_bpc"]}
    if not args.no_reference:
        ref = measure("reference", args.chars, args.order)
        print(f"  reference, collections.Counter of the same n-grams (counting only): {ref['seconds']:.2f} s, "
              f"peak {ref['peak_mb']:.0f} MB -> charlm trains {ref['seconds'] / ours['train_seconds']:.1f}x faster")
        record.update({"reference_seconds": ref["seconds"], "reference_peak_rss_mb": ref["peak_mb"],
                       "speedup": ref["seconds"] / ours["train_seconds"]})
    print(f"  {load_average()}")
    append_result("ngram_speed", record)


if __name__ == "__main__":
    main()
