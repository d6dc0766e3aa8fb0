"""The four systems side by side: tanh RNN, LSTM, GRU (and minGRU), the Transformer with and
without memory, each trained on the same corpus at the same wall-clock budget and at one equal
number of tokens, then measured with charlm's own commands.

For every system and budget this runs, as a user would:

    charlm train CORPUS --model ... --max-time 135 (or --max-steps for the token budget)
    charlm evaluate RUN CORPUS --tail 0.1 --json -     validation nats/char on the last 10%
    charlm inspect-gradients RUN --json -              the gradient horizon (longest over layers)
    charlm inspect-context RUN --json -                the effective context

and prints one table (markdown) with parameters, tokens/s, validation nats/char, gradient horizon
and effective context. The runs go to a temporary folder unless --keep DIR is given.

    python benchmarks/systems.py                      # tiny shakespeare, 135 s and 1 M tokens
    python benchmarks/systems.py --quick              # tiny models, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, corpus_path, load_average, machine  # noqa: E402

# The transformer recipe for 135 s on 2 cores, chosen by the sweep in BENCHMARKS.md: 2 blocks of
# width 128, 4 heads, window 64, 32 streams, lr 5e-3.
TRANSFORMER = ["--model", "transformer", "--layers", "2", "--hidden-size", "128", "--heads", "4",
               "--batch-size", "32", "--lr", "5e-3", "--warmup-steps", "50"]
SYSTEMS = {
    "rnn": ["--model", "rnn"],
    "lstm": ["--model", "lstm"],
    "gru": [],                                   # the default recipe
    "mingru": ["--model", "mingru"],
    "transformer": TRANSFORMER,
    "transformer+memory": TRANSFORMER + ["--memory", "64"],
}
QUICK = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "16"]
QUICK_TRANSFORMER = ["--model", "transformer", "--layers", "2", "--hidden-size", "16", "--heads", "2",
                     "--batch-size", "4", "--seq-len", "16"]


def charlm(*args: str) -> str:
    """Run `python -m charlm ARGS` and return its stdout; stop the benchmark on a failure."""
    p = subprocess.run([sys.executable, "-m", "charlm", *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"charlm {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def chunk_tokens(options: list[str]) -> int:
    """Tokens per step of a system: --batch-size x --seq-len (charlm's defaults 32 x 64)."""
    get = lambda name, default: int(options[options.index(name) + 1]) if name in options else default
    return get("--batch-size", 32) * get("--seq-len", 64)


def measure(run: Path, corpus: str, quick: bool) -> dict:
    """Parameters, tokens/s, validation nats/char, gradient horizon and effective context of a run."""
    info = json.loads(charlm("info", str(run / "last.pt"), "--json", "-"))
    ev = json.loads(charlm("evaluate", str(run), corpus, "--tail", "0.1", "--json", "-"))
    lags, samples = ("20", "2") if quick else ("200", "16")
    grads = json.loads(charlm("inspect-gradients", str(run), "--lags", lags, "--samples", samples, "--json", "-"))
    horizons = [c["horizon"] for c in grads["models"][0]["curves"]]
    horizon = None if None in horizons else max(horizons)
    ctx_args = ["--max-context", "64", "--targets", "8"] if quick else ["--max-context", "1024", "--targets", "64"]
    ctx = json.loads(charlm("inspect-context", str(run), *ctx_args, "--grad-lags", "0", "--json", "-"))
    return {"parameters": info["parameters"], "tokens": info["tokens_seen"], "seconds": info["elapsed_s"],
            "tokens_per_s": info["tokens_seen"] / info["elapsed_s"], "val_nats_per_char": ev["loss"],
            "val_bits_per_char": ev["bits_per_char"], "gradient_horizon": horizon, "gradient_lags": int(lags),
            "effective_context": ctx["effective_context"], "max_context": ctx["settings"]["max_context"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny models, a few steps (smoke test)")
    ap.add_argument("--seconds", type=float, default=135.0, help="the wall-clock budget of every run")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="the equal-token budget of every run")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="which systems, comma-separated")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    args = ap.parse_args()
    corpus = str(corpus_path("tinyshakespeare.txt"))
    seconds, tokens = (4.0, 4096) if args.quick else (args.seconds, args.tokens)
    print(machine())
    print(f"corpus {Path(corpus).name}; budgets {seconds:g} s and {tokens:,} tokens; load average {load_average()}")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="charlm-systems-"))
    rows = []
    for name in args.systems.split(","):
        options = SYSTEMS[name]
        if args.quick:
            options = QUICK_TRANSFORMER + (["--memory", "8"] if "--memory" in options else []) \
                if "transformer" in name else QUICK + options
        for budget, limit in (("time", ["--max-time", f"{seconds:g}"]),
                              ("tokens", ["--max-steps", str(max(1, tokens // chunk_tokens(options)))])):
            run = folder / f"{name}-{budget}"
            t0 = time.perf_counter()
            charlm("train", corpus, *options, *limit, "--sample-length", "0", "--out", str(run), "--force")
            figures = measure(run, corpus, args.quick)
            figures.update(system=name, budget=budget, options=" ".join(options), wall_s=time.perf_counter() - t0)
            rows.append(figures)
            append_result("systems", {**figures, "quick": args.quick, "load_average": load_average()})
            print(f"{name:>18} {budget:>6}: {figures['val_nats_per_char']:.4f} nats/char, "
                  f"{figures['tokens_per_s']:,.0f} tok/s, {figures['tokens']:,} tokens, horizon "
                  f"{figures['gradient_horizon']}, context {figures['effective_context']} "
                  f"({load_average()})", flush=True)
    print()
    print("| system | budget | parameters | tokens | tokens/s | val nats/char | gradient horizon | effective context |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        horizon = r["gradient_horizon"] if r["gradient_horizon"] is not None else f"> {r['gradient_lags']}"
        ctx = r["effective_context"] if r["effective_context"] is not None else f"> {r['max_context']}"
        print(f"| {r['system']} | {'%g s' % seconds if r['budget'] == 'time' else 'equal tokens'} | "
              f"{r['parameters']:,} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['val_nats_per_char']:.4f} | "
              f"{horizon} | {ctx} |")
    print(f"\nruns in {folder}")


if __name__ == "__main__":
    main()
