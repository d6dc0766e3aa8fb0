"""Corpora as a user really has them: folders with binaries and run folders in them, files that are
not UTF-8, a disk that fills while encoding, damaged id files, damaged tokenizers, a vocabulary with
nothing to learn; and the corpus package's one-way imports. Property tests (hypothesis) feed any
text through the tokenizer and the encoder, and any bytes through a corpus folder."""

from __future__ import annotations

import ast
import atexit
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from typer.testing import CliRunner

from charlm.cli import app
from charlm.corpus import dataset, text
from charlm.corpus.dataset import build_tokenizer, encode_corpus, prepare_dataset
from charlm.corpus.text import Corpus, scan
from charlm.corpus.tokenizers import CharTokenizer, tokenizer_from_dict
from charlm.errors import CharLMError, CorpusError, TokenizerError
from charlm.util import RUN_MARKER
from helpers import TINY, make_text

# Hypothesis keeps caches in ./.hypothesis by default: tests never write into the working tree.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="charlm-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, True)
runner = CliRunner()
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4   # the start of a compiled tool


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def prepare(corpus: Corpus, folder: Path, **kw) -> dataset.Dataset:
    options = dict(tokenizer_kind="char", vocab_size=None, min_char_count=1, normalize="none",
                   val_fraction=0.1)
    options.update(kw)
    return prepare_dataset(corpus, folder, **options)


def all_ids(ds: dataset.Dataset) -> np.ndarray:
    return np.concatenate([np.asarray(ds.train.ids), np.asarray(ds.val.ids)])


# ----------------------------------------------------------------------------------------------
# Folders: binaries skipped and counted, charlm's own runs never read.

def test_folder_skips_binary_files_and_says_how_many(tmp_path):
    root = tmp_path / "src"
    write(root / "a.txt", "alpha text\n")
    write(root / "bin" / "FileStoreTest", ELF)                  # no suffix, like torch/bin's tools
    write(root / "latin1.txt", "caf\u00e9\n".encode("latin-1"))  # not UTF-8 in its first block
    write(root / "b.md", "# beta\n")
    write(root / ".hidden" / "c.txt", "hidden\n")
    corpus = Corpus.resolve(str(root))
    assert corpus.files == [root / "a.txt", root / "b.md"]
    assert corpus.skipped == [root / "bin" / "FileStoreTest", root / "latin1.txt"]
    assert scan(corpus).chars == len("alpha text\n# beta\n")


def test_folder_of_only_binaries_is_one_line_with_the_offset(tmp_path):
    write(tmp_path / "f" / "tool", ELF)
    with pytest.raises(CorpusError) as e:
        Corpus.resolve(str(tmp_path / "f"))
    msg = one_line(e.value)
    assert "holds no text files" in msg and "skipped 1 binary or non-UTF-8 file" in msg
    assert "NUL byte at byte offset 7" in msg


def test_folder_never_reads_charlm_runs(tmp_path):
    root = tmp_path / "corpus"
    write(root / "text.txt", "the text\n")
    write(root / "runs" / "new" / RUN_MARKER, "{}")               # a run with its marker
    write(root / "runs" / "new" / "data" / "meta.json", "{}")
    write(root / "runs" / "new" / "notes.txt", "mine, inside a run\n")
    write(root / "old" / "last.pt", b"\x80")                       # a run from before markers
    write(root / "old" / "data" / "meta.json", "{}")
    write(root / "mine" / "data" / "meta.json", '{"a": 1}\n')     # a user's data, no run
    corpus = Corpus.resolve(str(root))
    assert corpus.files == [root / "mine" / "data" / "meta.json", root / "text.txt"]
    with pytest.raises(CorpusError, match="is a charlm run directory"):
        Corpus.resolve(str(root / "runs" / "new"))


def test_train_a_folder_holding_its_own_run_then_resume(tmp_path, monkeypatch):
    """`charlm train .` with the run inside the corpus folder: the resume sees the same corpus."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.txt", make_text(3000, seed=1))
    write(tmp_path / "b.txt", make_text(3000, seed=2))
    common = [".", "--out", "runs/r", *TINY, "--device", "cpu"]
    first = runner.invoke(app, ["train", *common, "--max-steps", "2"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", *common, "--max-steps", "4", "--resume"])
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("spec", ["", "   "])
def test_an_empty_corpus_path_is_an_error(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorpusError, match="the corpus path is empty"):
        Corpus.resolve(spec)
    result = runner.invoke(app, ["train", spec, "--out", str(tmp_path / "r"), *TINY, "--max-steps", "1"])
    assert result.exit_code == 1 and "the corpus path is empty" in result.stderr
    assert "Traceback" not in result.output


def test_unusable_paths_are_one_line(tmp_path):
    with pytest.raises(CorpusError, match="cannot use corpus path"):
        Corpus.resolve(str(tmp_path / ("x" * 300)))       # a name over 255 bytes
    with pytest.raises(CorpusError, match="not a valid path"):
        Corpus.resolve("a\x00b")


# ----------------------------------------------------------------------------------------------
# Not UTF-8: one line with the file and the byte offset, for a file and for a folder.

def test_non_utf8_reports_the_byte_offset_in_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "BLOCK_BYTES", 1000)    # the bad byte lies in a later block
    body = b"a" * 70_000 + b"\xe9" + b"b" * 100       # past the folder's 64 KiB sniff too
    path = write(tmp_path / "f" / "late.txt", body)
    write(tmp_path / "f" / "good.txt", "good\n")
    for spec in (path, tmp_path / "f"):
        corpus = Corpus.resolve(str(spec))
        assert corpus.skipped == []
        with pytest.raises(CorpusError) as e:
            scan(corpus)
        assert one_line(e.value) == (f"{path} is not UTF-8 text: invalid byte 0xe9 at byte offset "
                                     f"70000 (convert it, e.g. `iconv -f latin1 -t utf-8`)")


# ----------------------------------------------------------------------------------------------
# Encoding: a full disk, a failure part way, damaged id files.

ENCODE = """
import sys
from pathlib import Path
from charlm.corpus.dataset import prepare_dataset
from charlm.corpus.text import Corpus
from charlm.errors import CharLMError
try:
    prepare_dataset(Corpus.resolve(sys.argv[1]), Path(sys.argv[2]), "char", None, 1, "none", 0.1)
except CharLMError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""


def test_disk_full_while_encoding_is_one_line_and_leaves_nothing(tmp_path):
    """A real write failure: the process may write files of at most 40 KB (RLIMIT_FSIZE gives
    EFBIG, as a full disk gives ENOSPC), the corpus's ids need 120 KB. A CharLMError (one line,
    which the CLI prints and exits 1 on), and no train.bin.tmp left filling the disk."""
    corpus = write(tmp_path / "big.txt", make_text(120_000))
    out = tmp_path / "run" / "data"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.run([sys.executable, "-c", ENCODE, str(corpus), str(out)], capture_output=True,
                          text=True, timeout=120, preexec_fn=limit,
                          env={**os.environ, "PYTHONPATH": str(Path(text.__file__).parents[2])})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"cannot write the encoded corpus to {out}: File too large (it needs about "
                           f"120 KB); nothing was kept\n")
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_failure_part_way_through_encoding_removes_the_temporary_files(tmp_path):
    path = write(tmp_path / "c.txt", make_text(5000))
    corpus = Corpus.resolve(str(path))
    stats = scan(corpus)
    tok = build_tokenizer(corpus, stats, "char", None, 1, "none")
    path.write_bytes(path.read_bytes()[:-10] + b"\xff" * 10)   # changed between the two passes
    with pytest.raises(CorpusError, match="not UTF-8"):
        encode_corpus(corpus, stats, tok, 0.1, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []


def test_same_size_garbage_ids_are_encoded_again(tmp_path):
    corpus = Corpus.resolve(str(write(tmp_path / "c.txt", make_text(4000))))
    folder = tmp_path / "data"
    first = all_ids(prepare(corpus, folder))
    meta = (folder / "meta.json").read_text()
    assert "train_ids_sha256" in meta
    rng = np.random.default_rng(0)
    for damage in ("garbage", "truncated", "meta"):
        train = folder / "train.bin"
        if damage == "garbage":
            train.write_bytes(rng.integers(0, 256, train.stat().st_size, dtype=np.uint8).tobytes())
        elif damage == "truncated":
            train.write_bytes(train.read_bytes()[:100])
        else:
            (folder / "meta.json").write_text("[1, 2")
        again = prepare(corpus, folder)
        assert np.array_equal(all_ids(again), first), damage
        assert again.tokenizer.decode(all_ids(again)) == make_text(4000)


def test_reuse_keeps_the_files_when_intact(tmp_path):
    corpus = Corpus.resolve(str(write(tmp_path / "c.txt", make_text(4000))))
    prepare(corpus, tmp_path / "data")
    before = (tmp_path / "data" / "train.bin").stat().st_mtime_ns
    prepare(corpus, tmp_path / "data")
    assert (tmp_path / "data" / "train.bin").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------------------------
# A vocabulary with nothing to learn is refused at set-up.

def test_min_char_count_that_leaves_one_token_is_refused(tmp_path):
    corpus = Corpus.resolve(str(write(tmp_path / "c.txt", make_text(4000))))
    stats = scan(corpus)
    with pytest.raises(TokenizerError) as e:
        build_tokenizer(corpus, stats, "char", None, 1_000_000, "none")
    msg = one_line(e.value)
    assert msg.startswith("the vocabulary would have 1 tokens: --min-char-count 1000000 keeps 0 of "
                          f"the corpus's {len(stats.counts)} distinct characters")
    result = runner.invoke(app, ["train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "r"), *TINY,
                                 "--max-steps", "1", "--min-char-count", "1000000"])
    assert result.exit_code == 1 and "the vocabulary would have 1 tokens" in result.stderr
    one = Corpus.resolve(str(write(tmp_path / "a.txt", "a" * 500)))
    with pytest.raises(TokenizerError, match="would have 2 tokens: the corpus has 1 distinct character,"):
        build_tokenizer(one, scan(one), "char", None, 1, "none")


# ----------------------------------------------------------------------------------------------
# Tokenizer dictionaries from a damaged or edited checkpoint.

GOOD = CharTokenizer(["<unk>", "\n", " ", "a", "b"]).to_dict()
BAD_DICTS = {
    "not a dict": (["<unk>", "a"], "not a dictionary"),
    "unknown kind": ({**GOOD, "kind": "words"}, "unknown tokenizer kind 'words'"),
    "no kind": ({"chars": GOOD["chars"]}, "unknown tokenizer kind None"),
    "chars not a list": ({**GOOD, "chars": "abc"}, "has no list of characters"),
    "empty chars": ({**GOOD, "chars": []}, "has no list of characters"),
    "no <unk> first": ({**GOOD, "chars": ["a", "b"]}, "does not start with <unk>"),
    "surrogate": ({**GOOD, "chars": ["<unk>", "a", "\ud800"]}, "surrogate code point U+D800"),
    "two characters in one": ({**GOOD, "chars": ["<unk>", "ab"]}, "not a single character"),
    "a number": ({**GOOD, "chars": ["<unk>", 7]}, "holds 7, not a single character"),
    "duplicate": ({**GOOD, "chars": ["<unk>", "a", "a"]}, "lists a character twice"),
    "bad normalize": ({**GOOD, "normalize": "nfkc"}, "normalize='nfkc'; expected one of none, nfc, nfd"),
    "normalize not a str": ({**GOOD, "normalize": 3}, "normalize=3"),
    "spm without model": ({"kind": "bpe", "normalize": "none"}, "has no sentencepiece model"),
    "spm garbage model": ({"kind": "bpe", "model_proto": b"not a model", "normalize": "none"},
                          "sentencepiece model cannot be loaded"),
}


@pytest.mark.parametrize("name", sorted(BAD_DICTS))
def test_damaged_tokenizer_dicts_are_one_line(name):
    d, fragment = BAD_DICTS[name]
    with pytest.raises(TokenizerError) as e:
        tokenizer_from_dict(d)
    assert fragment in one_line(e.value)


def test_a_tokenizer_shorter_than_its_model_is_refused():
    assert tokenizer_from_dict(GOOD, vocab_size=5).vocab_size == 5
    with pytest.raises(TokenizerError, match="has 5 tokens but its model has 65"):
        tokenizer_from_dict(GOOD, vocab_size=65)


@settings(max_examples=60, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["kind", "chars", "normalize", "model_proto", "extra"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5), st.binary(max_size=20),
                                 st.sampled_from(["char", "bpe", "unigram", "spm-char", "nfc", "none"]),
                                 st.lists(st.one_of(st.text(max_size=2), st.integers()), max_size=6))))
def test_any_tokenizer_dict_loads_or_is_a_tokenizer_error(d):
    try:
        tok = tokenizer_from_dict(d)
    except TokenizerError as e:
        one_line(e)
    else:
        assert tok.decode(tok.encode("")) == ""


# ----------------------------------------------------------------------------------------------
# Properties: any text round-trips; any bytes in a folder end cleanly.

@settings(max_examples=80, deadline=None, database=None)
@given(st.text(min_size=1, max_size=200), st.sampled_from(["none", "nfc", "nfd"]))
def test_any_text_round_trips_through_the_char_tokenizer(s, form):
    tok = CharTokenizer.from_counts(Counter(unicodedata.normalize(form.upper(), s) if form != "none" else s),
                                    normalize=form)
    ids = tok.encode(s)
    assert 0 not in ids
    expected = s if form == "none" else unicodedata.normalize(form.upper(), s)
    assert tok.decode(ids) == expected
    assert tokenizer_from_dict(tok.to_dict()).decode(ids) == expected


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               min_size=3, max_size=300))
def test_any_text_survives_encoding_to_disk(s):
    """The ids on disk (train then val) decode to exactly the corpus, wherever the split falls."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.txt"
        path.write_text(s, encoding="utf-8", newline="")
        try:
            ds = prepare(Corpus.resolve(str(path)), Path(tmp) / "data", val_fraction=0.3)
        except TokenizerError as e:   # a text of one distinct character: nothing to learn
            assert len(set(s)) == 1 and "would have 2 tokens" in one_line(e)
            return
        assert ds.tokenizer.decode(all_ids(ds)) == s
        assert ds.train.chars + ds.val.chars == len(s) and ds.val.tokens >= 1


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["a.txt", "b", "c.md", "d/e.txt", "d/f", ".g.txt"]),
                          st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode))),
                max_size=5))
def test_any_bytes_in_a_corpus_folder_end_cleanly(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        for name, data in files:
            write(root / name, data)
        try:
            corpus = Corpus.resolve(str(root))
            stats = scan(corpus)
            ds = prepare(corpus, Path(tmp) / "data")
        except CharLMError as e:
            one_line(e)
            return
        assert all(text.binary_reason(p) is None for p in corpus.files)
        assert ds.tokenizer.decode(all_ids(ds)) == "".join(p.read_bytes().decode("utf-8") for p in corpus.files)
        assert stats.chars == ds.chars


# ----------------------------------------------------------------------------------------------
# The package's shape: imports flow one way.

def test_corpus_modules_import_one_way():
    """catalog and tokenizers import nothing of charlm.corpus; the graph (function-local imports
    included) has no cycle."""
    folder = Path(text.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("charlm.corpus."):
                names.add(node.module.split(".")[2])
        graph[path.stem] = names - {path.stem}
    assert graph["catalog"] == set() and graph["tokenizers"] == set()
    assert "data" not in graph   # the old module that did everything is gone

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))
    assert not [m for m in graph if reaches(m, m)]


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_TEXT, encoding=st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]))
def test_a_utf16_or_utf32_file_with_its_bom_is_named_not_called_binary(tmp_path, body, encoding):
    """UTF-16/32 text that starts with its byte order mark (was: "looks like a binary file (NUL byte
    at …)"): the corpus, a prime and a text to score say which encoding it is and how to convert it."""
    from charlm.textio import read_limited

    name = encoding[:6].upper()
    raw = body.encode(encoding)
    if encoding.endswith(("-le", "-be")):      # these codecs write no mark: add the one a file has
        raw = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00"}[encoding] + raw
    path = tmp_path / "wide.txt"
    path.write_bytes(raw)
    expected = f"is {name} text, not UTF-8 (convert it: iconv -f {name} -t UTF-8)"
    with pytest.raises(CorpusError, match=re.escape(expected)):
        list(Corpus.resolve(str(path)).blocks())
    with open(path, "rb") as f, pytest.raises(CorpusError, match=re.escape(expected)):
        read_limited(f, 1000, "--prime-file wide.txt")
    assert name in text.binary_reason(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.text(max_size=20).filter(lambda t: "\x00" not in t),
       last=st.characters(min_codepoint=0x80, blacklist_categories=("Cs",)), data=st.data())
def test_a_file_cut_in_the_middle_of_a_character_says_so(tmp_path, head, last, data):
    """UTF-8 text whose last character lost some of its bytes (was: "invalid byte 0xend of file",
    or a byte offset and advice to convert from Latin-1)."""
    from charlm.textio import read_limited

    encoded = last.encode("utf-8")
    cut = data.draw(st.integers(1, len(encoded) - 1))
    path = tmp_path / "cut.txt"
    path.write_bytes(head.encode("utf-8") + encoded[:cut])
    with pytest.raises(CorpusError, match="ends in the middle of a character") as caught:
        list(Corpus.resolve(str(path)).blocks())
    assert "latin1" not in str(caught.value) and "0xend" not in str(caught.value)
    with open(path, "rb") as f, pytest.raises(CorpusError, match="ends in the middle of a character"):
        read_limited(f, 1000, "--file cut.txt")


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(alphabet="ab\né한😀", min_size=1, max_size=40), min_size=1, max_size=3),
       tail=st.floats(min_value=1e-3, max_value=1.0))
def test_a_corpus_tail_is_the_last_fraction_of_its_text(tmp_path_factory, texts, tail):
    """Corpus.text(tail) keeps only the tail in memory (the text is read twice), and equals the
    last fraction of the whole text, across files and block borders (7-byte blocks here)."""
    import charlm.corpus.text as text_mod

    folder = tmp_path_factory.mktemp("tail")
    for i, t in enumerate(texts):
        (folder / f"{i}.txt").write_text(t, encoding="utf-8")
    corpus = text_mod.Corpus.resolve(str(folder))
    old = text_mod.BLOCK_BYTES
    text_mod.BLOCK_BYTES = 7
    try:
        whole = corpus.text()
        assert whole == "".join(texts)
        assert corpus.text(tail) == whole[len(whole) - int(round(len(whole) * tail)):]
    finally:
        text_mod.BLOCK_BYTES = old
