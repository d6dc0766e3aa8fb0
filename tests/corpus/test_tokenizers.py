import numpy as np
import pytest

from charlm.corpus.dataset import build_tokenizer
from charlm.corpus.text import Corpus, scan
from charlm.errors import TokenizerError
from charlm.sampling import encode_prime
from charlm.corpus.tokenizers import (CharTokenizer, SentencePieceTokenizer, StreamDecoder, for_display,
                               tokenizer_from_dict)

MIXED = "안녕하세요, 세계! 漢字テスト 😀👍🏽 e\u0301 café\nsecond line\n"


def char_tok(text, **kw):
    from collections import Counter
    return CharTokenizer.from_counts(Counter(text), **kw)


def test_char_round_trip_hangul_cjk_emoji_combining():
    tok = char_tok(MIXED)
    ids = tok.encode(MIXED)
    assert ids.dtype == np.int64 and len(ids) == len(MIXED)  # one id per code point
    assert tok.decode(ids) == MIXED
    assert 0 not in ids  # every character is known
    again = tokenizer_from_dict(tok.to_dict())
    assert again.decode(again.encode(MIXED)) == MIXED


def test_unknown_and_rare_characters_map_to_unk():
    tok = char_tok("aaaab", min_count=2)
    assert tok.itos[0] == "<unk>" and "b" not in tok.stoi
    assert tok.encode("ab").tolist() == [tok.stoi["a"], 0]
    assert tok.unknown_chars("abz") == ["b", "z"]
    with pytest.raises(TokenizerError, match="'z'"):
        encode_prime(tok, "az")


def test_nfd_splits_hangul_into_jamo_and_display_recomposes():
    text = "한국어 문장입니다\n"
    from collections import Counter
    import unicodedata
    tok = CharTokenizer.from_counts(Counter(unicodedata.normalize("NFD", text)), normalize="nfd")
    ids = tok.encode(text)
    assert len(ids) > len(text)  # syllables became jamo
    assert for_display(tok.decode(ids), "nfd") == text
    # Streaming decode releases only settled syllables, and in the end the whole text.
    dec = StreamDecoder(tok)
    out = "".join(dec.push(int(i)) for i in ids) + dec.flush()
    assert out == text


def test_korean_corpus_nfd_vocabulary(korean):
    corpus = Corpus.resolve(str(korean))
    plain = scan(corpus, "none")
    nfd = scan(corpus, "nfd")
    assert len(plain.counts) == 1243
    assert len(nfd.counts) == 110
    tok = build_tokenizer(corpus, nfd, "char", None, 1, "nfd")
    text = korean.read_text(encoding="utf-8")[:5000]
    assert for_display(tok.decode(tok.encode(text)), "nfd") == text


@pytest.mark.parametrize("kind,vocab", [("bpe", 300), ("unigram", 300), ("spm-char", None)])
def test_sentencepiece_round_trip(tmp_path, kind, vocab):
    from helpers import make_text
    text = make_text(20000) + MIXED
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    corpus = Corpus.resolve(str(path))
    tok = build_tokenizer(corpus, scan(corpus), kind, vocab, 1, "none")
    assert isinstance(tok, SentencePieceTokenizer)
    sample = "the cat sat on a mat.\n  indented 한국어 😀 ZZZ unseen ⊕\n"
    assert tok.decode(tok.encode(sample)) == sample   # byte fallback: nothing is lost
    again = tokenizer_from_dict(tok.to_dict())          # the model travels as bytes
    assert again.encode(sample).tolist() == tok.encode(sample).tolist()
    dec = StreamDecoder(tok)
    assert "".join(dec.push(int(i)) for i in tok.encode(sample)) + dec.flush() == sample


def test_sentencepiece_vocab_too_large_is_a_clear_error(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc abc abc\n" * 50, encoding="utf-8")
    corpus = Corpus.resolve(str(path))
    with pytest.raises(TokenizerError, match="vocab"):
        build_tokenizer(corpus, scan(corpus), "bpe", 50000, 1, "none")
