"""Tokenising speed and memory: charlm.corpus.dataset.prepare_dataset against a raw read + UTF-8 decode.

A corpus of --size-mb megabytes is built in a temporary folder by repeating
../shared/corpora/tinyshakespeare.txt and korean-chatbot.txt (English and Hangul, so the ids need
16 bits). charlm's figure is MB/s of `prepare_dataset` with the char tokenizer: the first pass
(`scan`: character histogram, checksum) and the second (`encode_corpus`: ids written to
train.bin / val.bin), megabytes counted as bytes of UTF-8 input. The reference is the floor under
any tokeniser: reading the same file in 8 MiB blocks and decoding it as UTF-8, once. Each is run in
its own subprocess, alternating, so peak memory (VmHWM) is that of the work alone; the page cache
holds the file for both. `--big` adds one run on a 1 GB corpus: memory must stay flat (the text is
streamed in blocks; the vocabulary comes from the first pass).

    python benchmarks/tokenize_speed.py            # 100 MB, 3 rounds
    python benchmarks/tokenize_speed.py --big      # and one 1 GB run (needs ~4 GB of disk)
    python benchmarks/tokenize_speed.py --quick    # 2 MB, 1 round, for the smoke test
"""

from __future__ import annotations

import argparse
import codecs
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, append_result, corpus_path, load_average, machine, median  # noqa: E402

TARGET_MB_S = 50.0
TARGET_PEAK_MB = 1024.0
MB = 1 << 20


def build_corpus(path: Path, size_mb: float) -> int:
    """Repeat the two shared corpora until the file holds size_mb megabytes; return its size."""
    parts = [corpus_path("tinyshakespeare.txt").read_bytes(), corpus_path("korean-chatbot.txt").read_bytes()]
    target, size = int(size_mb * MB), 0
    with open(path, "wb") as f:
        while size < target:
            for part in parts:
                f.write(part)
                size += len(part)
    return size


def child(mode: str, corpus: str, folder: str) -> None:
    """One measured run in this fresh process; prints seconds and peak RSS as JSON."""
    if mode == "charlm":
        from charlm.corpus.dataset import prepare_dataset
        from charlm.corpus.text import Corpus

        t = time.perf_counter()
        ds = prepare_dataset(Corpus(name=corpus, files=[Path(corpus)]), Path(folder), "char", None,
                             1, "none", 0.1)
        seconds = time.perf_counter() - t
        extra = {"tokens": ds.train.tokens + ds.val.tokens, "vocab": ds.tokenizer.vocab_size,
                 "id_bytes": ds.train.ids.dtype.itemsize}
    else:  # the reference: read and decode, nothing else
        t = time.perf_counter()
        decoder, chars = codecs.getincrementaldecoder("utf-8")(), 0
        with open(corpus, "rb") as f:
            while raw := f.read(8 * MB):
                chars += len(decoder.decode(raw))
        chars += len(decoder.decode(b"", final=True))
        seconds = time.perf_counter() - t
        extra = {"chars": chars}
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), **extra}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec from the parent (which has torch loaded), so it would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, corpus: Path, folder: Path) -> dict:
    for old in folder.glob("*"):  # never let charlm reuse a cached encoding
        old.unlink()
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(corpus), str(folder)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(size_mb: float, rounds: int, tmp: Path) -> dict:
    corpus, folder = tmp / f"corpus-{size_mb:g}MB.txt", tmp / "ids"
    folder.mkdir(exist_ok=True)
    size = build_corpus(corpus, size_mb)
    mb = size / MB
    measure("reference", corpus, folder)  # warm the page cache
    ours, ref = [], []
    for r in range(rounds):
        ours.append(measure("charlm", corpus, folder))
        ref.append(measure("reference", corpus, folder))
        print(f"  {mb:7.1f} MB round {r + 1}: charlm {mb / ours[-1]['seconds']:6.1f} MB/s, peak "
              f"{ours[-1]['peak_mb']:6.0f} MB | read+decode {mb / ref[-1]['seconds']:6.1f} MB/s, "
              f"peak {ref[-1]['peak_mb']:6.0f} MB")
    corpus.unlink()
    rate, ref_rate = median([mb / o["seconds"] for o in ours]), median([mb / o["seconds"] for o in ref])
    ratio = median([r["seconds"] / o["seconds"] for o, r in zip(ours, ref)])
    peak = max(o["peak_mb"] for o in ours)
    return {"size_mb": mb, "mb_per_s": rate, "reference_mb_per_s": ref_rate, "ratio": ratio,
            "peak_rss_mb": peak, "reference_peak_rss_mb": max(r["peak_mb"] for r in ref),
            "vocab": ours[0]["vocab"], "tokens": ours[0]["tokens"], "id_bytes": ours[0]["id_bytes"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:5])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="also one run on a 1 GB corpus")
    ap.add_argument("--quick", action="store_true", help="2 MB, one round, for the smoke test")
    ap.add_argument("--tmp", default=None, help="folder for the corpus and ids (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.rounds = 2, 1
    print(machine())
    print(f"prepare_dataset (scan + encode, char tokenizer) vs read + UTF-8 decode, separate "
          f"processes, alternating; {load_average()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        results = [run(args.size_mb, args.rounds, Path(tmp))]
        if args.big:
            results.append(run(1024, 1, Path(tmp)))
    for res in results:
        if res is results[0]:
            met = res["mb_per_s"] >= TARGET_MB_S and res["peak_rss_mb"] < TARGET_PEAK_MB
            target = f"target >= {TARGET_MB_S:.0f} MB/s under {TARGET_PEAK_MB:.0f} MB"
        else:  # the 1 GB run: memory must stay flat (within 10% of the smaller run's peak)
            met = res["peak_rss_mb"] <= 1.1 * results[0]["peak_rss_mb"]
            target = f"target flat memory (peak {results[0]['peak_rss_mb']:.0f} MB at {results[0]['size_mb']:.0f} MB)"
        print(f"charlm tokenising {res['size_mb']:.0f} MB: {res['mb_per_s']:.1f} MB/s, peak RSS "
              f"{res['peak_rss_mb']:.0f} MB; reference read+decode {res['reference_mb_per_s']:.1f} MB/s "
              f"(peak {res['reference_peak_rss_mb']:.0f} MB); ratio {res['ratio']:.2f}; {target}: "
              f"{'met' if met else 'NOT met'}")
        append_result("tokenize", {**res, "rounds": args.rounds if res is results[0] else 1,
                                   "target": target, "met": met, "quick": args.quick})


if __name__ == "__main__":
    main()
