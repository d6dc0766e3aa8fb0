"""`charlm corpus info FILE`: what is in a corpus, and which tokenizer suits it.

Reads the corpus through ``text`` (any spec a run takes: file, folder, catalog name, built-in);
nothing imports this module but the command that shows it.
"""

from __future__ import annotations

from .text import Corpus, scan


def _is_hangul(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7a3"


def describe_corpus(spec: str, top: int = 10) -> dict:
    """Size, characters, distinct characters, most and least frequent, and a tokenizer advice."""
    corpus = Corpus.resolve(spec)
    stats = scan(corpus, "none")
    counts = stats.counts
    ranked = counts.most_common()
    total = stats.chars
    distinct = len(counts)
    letters = sum(n for ch, n in ranked if not ch.isspace())
    hangul = sum(n for ch, n in ranked if _is_hangul(ch))
    hangul_share = hangul / max(1, letters)
    # How many distinct characters cover 99.9% of the text: rare tails barely matter to a model.
    covered, k999 = 0, 0
    for _, n in ranked:
        covered += n
        k999 += 1
        if covered >= 0.999 * total:
            break
    advice = _advise(distinct, k999, hangul_share, total, corpus)
    return {
        "corpus": corpus.name, "files": len(corpus.files),
        "bytes": sum(p.stat().st_size for p in corpus.files), "characters": total,
        "distinct": distinct, "sha256": stats.sha256, "hangul_share": round(hangul_share, 4),
        "covering_99_9": k999,
        "most_frequent": [[ch, n] for ch, n in ranked[:top]],
        "least_frequent": [[ch, n] for ch, n in ranked[::-1][:top]],
        "skipped_binary_files": len(corpus.skipped),
        **advice,
    }


def _advise(distinct: int, k999: int, hangul_share: float, total: int, corpus: Corpus) -> dict:
    """Tokenizer advice. Char models want a small alphabet; large ones need pieces or jamo."""
    if hangul_share > 0.3:
        jamo = len(scan(corpus, "nfd").counts)
        return {"tokenizer": "char", "normalize": "nfd", "vocab_size": jamo,
                "options": "--tokenizer char --normalize nfd",
                "reason": f"{hangul_share:.0%} of the letters are Hangul syllables; NFD splits each "
                          f"into 2-3 jamo, so {distinct} distinct characters become {jamo} symbols"}
    if distinct <= 300:
        return {"tokenizer": "char", "normalize": "none", "vocab_size": distinct,
                "options": "--tokenizer char",
                "reason": f"a small alphabet ({distinct} characters): one token per character"}
    if k999 <= 1000:
        return {"tokenizer": "char", "normalize": "none", "vocab_size": k999,
                "options": "--tokenizer char --min-char-count 3",
                "reason": f"{distinct} characters, but {k999} of them cover 99.9% of the text; "
                          f"map the rare ones to <unk>"}
    # A very large alphabet (CJK): subword pieces. Enough pieces to cover the common characters
    # and their frequent pairs, but not more than the text can train (~50 characters per piece).
    vocab = int(min(32000, max(2000, round(2 * k999, -3)), max(2000, total // 50)))
    return {"tokenizer": "unigram", "normalize": "nfc", "vocab_size": vocab,
            "options": f"--tokenizer unigram --vocab-size {vocab}",
            "reason": f"a very large alphabet ({distinct} characters, {k999} for 99.9% of the text): "
                      f"a char softmax would be huge and rare characters barely trained"}
