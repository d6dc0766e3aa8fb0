"""Hostile or mistaken input: every row of the table in docs/reliability.md, through the CLI.

Each row is run with Typer's CliRunner and must exit with its code (1 for a mistake the core
reports, 2 for a usage error Typer reports), print no traceback, and for exit 1 print exactly one
line on stderr naming the problem. Nothing of the user's may change: the files of the workspace
(corpora, configs, an existing run, an unrelated folder) are hashed before and after every row.

`python tests/test_bad_inputs.py` prints the table as Markdown, with the messages of this machine,
for docs/reliability.md.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from charlm.cli import app  # noqa: E402
from conftest import make_text  # noqa: E402

runner = CliRunner()


HAS_CUDA = torch.cuda.is_available()
TINY = ["--hidden-size", "8", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8",
        "--max-steps", "3", "--eval-every", "3", "--sample-length", "0", "--device", "cpu"]


@dataclass
class Row:
    id: str
    what: str                 # the mistake, as the docs table says it
    args: list[str]           # {ws} is the workspace, {out} a fresh run directory
    code: int
    fragment: str             # the message must contain this
    unreadable: Optional[str] = None   # a workspace file to make unreadable for this row
    needs_no_cuda: bool = False


def T(*extra: str) -> list[str]:
    """A train command line on the good corpus into a fresh --out, with tiny shapes."""
    return ["train", "{ws}/good.txt", "--out", "{out}", *TINY, *extra]


ROWS = [
    # --- the corpus --------------------------------------------------------------------------
    Row("corpus-missing", "corpus file does not exist",
        ["train", "{ws}/nope.txt", "--out", "{out}", *TINY], 1, "does not exist"),
    Row("corpus-empty", "empty corpus file", ["train", "{ws}/empty.txt", "--out", "{out}", *TINY], 1,
        "is empty"),
    Row("corpus-binary", "binary file as corpus (NUL bytes)",
        ["train", "{ws}/binary.bin.txt", "--out", "{out}", *TINY], 1, "binary file"),
    Row("corpus-not-utf8", "corpus in Latin-1, not UTF-8",
        ["train", "{ws}/latin1.txt", "--out", "{out}", *TINY], 1, "is not UTF-8 text: invalid byte 0xe9"),
    Row("corpus-folder-no-text", "a folder with no text files",
        ["train", "{ws}/images", "--out", "{out}", *TINY], 1, "holds no text files"),
    Row("corpus-unreadable", "corpus file without read permission",
        ["train", "{ws}/secret.txt", "--out", "{out}", *TINY], 1, "permission denied",
        unreadable="secret.txt"),
    # --- device --------------------------------------------------------------------------------
    Row("device-cuda-absent", "`--device cuda` on a machine without CUDA", T("--device", "cuda"), 1,
        "no CUDA GPU is available", needs_no_cuda=True),
    Row("device-unknown", "`--device tpu`", T("--device", "tpu"), 1, "--device must be one of"),
    # --- shapes and sizes ----------------------------------------------------------------------
    Row("seq-len-too-long", "--seq-len longer than the corpus allows", T("--seq-len", "100000"), 1,
        "too few for 4 streams of --seq-len 100000"),
    Row("batch-too-large", "--batch-size larger than the corpus allows", T("--batch-size", "100000"), 1,
        "too few for 100000 streams"),
    Row("hidden-zero", "--hidden-size 0", T("--hidden-size", "0"), 1,
        "--hidden-size must be a positive whole number"),
    Row("batch-negative", "--batch-size -3", T("--batch-size", "-3"), 1,
        "--batch-size must be a positive whole number"),
    Row("seq-len-zero", "--seq-len 0", T("--seq-len", "0"), 1, "--seq-len must be a positive whole number"),
    Row("layers-zero", "--layers 0", T("--layers", "0"), 1, "--layers must be a positive whole number"),
    Row("max-steps-zero", "--max-steps 0", T("--max-steps", "0"), 1, "--max-steps must be a positive"),
    Row("epochs-negative", "--epochs -1", T("--epochs", "-1"), 1, "--epochs must be > 0"),
    Row("not-a-number", "--hidden-size abc (not a number)", T("--hidden-size", "abc"), 2,
        "Invalid value for '--hidden-size'"),
    # --- optimisation --------------------------------------------------------------------------
    Row("lr-zero", "--lr 0", T("--lr", "0"), 1, "--lr must be > 0"),
    Row("lr-negative", "--lr -0.01", T("--lr", "-0.01"), 1, "--lr must be > 0"),
    Row("dropout-one", "--dropout 1", T("--dropout", "1"), 1, "--dropout must be in [0, 1)"),
    Row("dropout-negative", "--dropout -0.1", T("--dropout", "-0.1"), 1, "--dropout must be in [0, 1)"),
    Row("val-fraction-one", "--val-fraction 1", T("--val-fraction", "1"), 1, "--val-fraction must be in (0, 1)"),
    Row("model-unknown", "--model transformer", T("--model", "transformer"), 1, "--model must be one of"),
    # --- tokenizer and vocabulary --------------------------------------------------------------
    Row("vocab-too-small", "--tokenizer bpe --vocab-size 100 (below byte fallback's 256 + pieces)",
        T("--tokenizer", "bpe", "--vocab-size", "100"), 1, "too small for a bpe tokenizer"),
    Row("vocab-too-large", "--tokenizer bpe --vocab-size 50000 on a small corpus",
        T("--tokenizer", "bpe", "--vocab-size", "50000"), 1, "Vocabulary size too high"),
    Row("char-vocab-over-limit", "a corpus of every Unicode character (char vocabulary > 2^20)",
        ["train", "{ws}/every_char.txt", "--out", "{out}", *TINY], 1, "over the limit of 1048576"),
    Row("vocab-size-with-char", "--vocab-size with the char tokenizer", T("--vocab-size", "50"), 1,
        "applies to sentencepiece tokenizers only"),
    # --- run directories -----------------------------------------------------------------------
    Row("run-dir-exists", "--out names an existing run, without --resume/--force",
        ["train", "{ws}/good.txt", "--out", "{ws}/run", *TINY], 1, "already exists; pass --resume"),
    Row("run-dir-is-file", "--out names a file", ["train", "{ws}/good.txt", "--out", "{ws}/good.txt", *TINY],
        1, "is a file"),
    Row("force-on-foreign-dir", "--force on a folder that is not a run",
        ["train", "{ws}/good.txt", "--out", "{ws}/my_stuff", "--force", *TINY], 1, "refusing to delete it"),
    Row("out-holds-users-config", "--out names a folder holding only the user's own config.toml",
        ["train", "{ws}/good.txt", "--out", "{ws}/exp", *TINY], 1, "already exists"),
    Row("force-on-users-config", "--force on a folder holding only the user's own config.toml",
        ["train", "{ws}/good.txt", "--out", "{ws}/exp", "--force", *TINY], 1, "refusing to delete it"),
    Row("resume-nothing", "--resume on a folder with no checkpoint",
        ["train", "{ws}/good.txt", "--out", "{ws}/my_stuff", "--resume", *TINY], 1, "has no last.pt"),
    Row("resume-and-force", "--resume together with --force",
        ["train", "--out", "{ws}/run", "--resume", "--force"], 1, "contradict each other"),
    Row("resume-without-out", "--resume without --out", ["train", "--resume"], 1, "--resume needs --out"),
    Row("out-under-a-file", "--out inside a file (good.txt/run)",
        ["train", "{ws}/good.txt", "--out", "{ws}/good.txt/run", *TINY], 1, "run directory"),
    # --- config files --------------------------------------------------------------------------
    Row("toml-corrupt", "a corrupt TOML config", T("--config", "{ws}/corrupt.toml"), 1, "is not valid TOML"),
    Row("toml-unknown-key", "an unknown key in the TOML config", T("--config", "{ws}/unknown_key.toml"), 1,
        "unknown key 'hiden_size'"),
    Row("toml-wrong-type", "a wrong type in the TOML config (hidden_size = \"big\")",
        T("--config", "{ws}/wrong_type.toml"), 1, "key 'hidden_size' must be int"),
    Row("toml-missing", "--config names a missing file", T("--config", "{ws}/nope.toml"), 1, "does not exist"),
    Row("toml-unreadable", "a config file without read permission", T("--config", "{ws}/locked.toml"), 1,
        "cannot read config file", unreadable="locked.toml"),
    # --- sampling ------------------------------------------------------------------------------
    Row("temperature-zero", "sample --temperature 0", ["sample", "{ws}/run", "--temperature", "0"], 1,
        "--temperature must be > 0"),
    Row("temperature-negative", "sample --temperature -1", ["sample", "{ws}/run", "--temperature", "-1"], 1,
        "--temperature must be > 0"),
    Row("top-p-zero", "sample --top-p 0", ["sample", "{ws}/run", "--top-p", "0"], 1, "--top-p must be in (0, 1]"),
    Row("top-p-above-one", "sample --top-p 1.5", ["sample", "{ws}/run", "--top-p", "1.5"], 1,
        "--top-p must be in (0, 1]"),
    Row("top-k-zero", "sample --top-k 0", ["sample", "{ws}/run", "--top-k", "0"], 1,
        "--top-k must be a positive whole number"),
    Row("length-negative", "sample --length -1", ["sample", "{ws}/run", "--length", "-1"], 1,
        "--length must be >= 0"),
    Row("num-samples-zero", "sample --num-samples 0", ["sample", "{ws}/run", "--num-samples", "0"], 1,
        "--num-samples must be a positive"),
    Row("prime-unknown-chars", "a prime of characters the model never saw",
        ["sample", "{ws}/run", "--prime", "Ωψ"], 1, "vocabulary lacks: 'Ω', 'ψ'"),
    Row("prime-file-missing", "--prime-file that does not exist",
        ["sample", "{ws}/run", "--prime-file", "{ws}/nope.txt"], 1, "cannot read --prime-file"),
    Row("prime-file-not-utf8", "--prime-file in Latin-1",
        ["sample", "{ws}/run", "--prime-file", "{ws}/latin1.txt"], 1, "is not UTF-8 text"),
    Row("sample-device-cuda-absent", "sample --device cuda without CUDA",
        ["sample", "{ws}/run", "--device", "cuda"], 1, "no CUDA GPU", needs_no_cuda=True),
    # --- checkpoints ---------------------------------------------------------------------------
    Row("checkpoint-missing", "sample a checkpoint that does not exist", ["sample", "{ws}/nope.pt"], 1,
        "does not exist"),
    Row("checkpoint-dir-empty", "sample a folder with no checkpoint", ["sample", "{ws}/my_stuff"], 1,
        "has no best.pt or last.pt"),
    Row("checkpoint-unreadable", "a checkpoint without read permission",
        ["sample", "{ws}/locked_run/best.pt"], 1, "cannot read checkpoint", unreadable="locked_run/best.pt"),
    Row("checkpoint-not-charlm", "a text file given as a checkpoint", ["sample", "{ws}/good.txt"], 1,
        "charlm checkpoint"),
    Row("evaluate-text-missing", "evaluate on a file that does not exist",
        ["evaluate", "{ws}/run", "{ws}/nope.txt"], 1, "does not exist"),
    Row("evaluate-tail-out-of-range", "evaluate --tail 2", ["evaluate", "{ws}/run", "{ws}/good.txt", "--tail", "2"],
        1, "--tail must be in (0, 1]"),
]


def build_workspace(ws: Path) -> None:
    """The user's files: corpora good and bad, configs, a finished run, an unrelated folder."""
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "good.txt").write_text(make_text(3000), encoding="utf-8")
    (ws / "secret.txt").write_text(make_text(3000), encoding="utf-8")
    (ws / "empty.txt").write_text("", encoding="utf-8")
    (ws / "binary.bin.txt").write_bytes(bytes(range(256)) * 20)
    (ws / "latin1.txt").write_bytes("café au lait, naïve\n".encode("latin-1") * 50)
    (ws / "images").mkdir()
    (ws / "images" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    # Every Unicode scalar value but NUL and the surrogates: 1,112,063 distinct characters.
    (ws / "every_char.txt").write_text(
        "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000), encoding="utf-8")
    (ws / "corrupt.toml").write_text("hidden_size = [1,\n")
    (ws / "unknown_key.toml").write_text("hiden_size = 8\n")
    (ws / "wrong_type.toml").write_text('hidden_size = "big"\n')
    (ws / "locked.toml").write_text("hidden_size = 8\n")
    (ws / "my_stuff").mkdir()
    (ws / "exp").mkdir()
    (ws / "exp" / "config.toml").write_text("# my experiment\nhidden_size = 8\n")
    (ws / "my_stuff" / "thesis.md").write_text("years of work\n")
    r = runner.invoke(app, ["train", str(ws / "good.txt"), "--out", str(ws / "run"), *TINY])
    assert r.exit_code == 0, r.output
    (ws / "locked_run").mkdir()
    shutil.copy(ws / "run" / "best.pt", ws / "locked_run" / "best.pt")


def snapshot(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ws.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("user")
    build_workspace(ws)
    return ws


def make_unreadable(path: Path, monkeypatch) -> None:
    """chmod 000 where that works; root ignores it, so there the open itself is made to fail."""
    path.chmod(0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", refusing_open)


def run_row(row: Row, ws: Path, out: Path, monkeypatch=None):
    args = [a.replace("{ws}", str(ws)).replace("{out}", str(out)) for a in row.args]
    if row.unreadable:
        make_unreadable(ws / row.unreadable, monkeypatch)
    try:
        return runner.invoke(app, args)
    finally:
        if row.unreadable:
            (ws / row.unreadable).chmod(0o644)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, workspace: Path, tmp_path: Path, monkeypatch):
    if row.needs_no_cuda and HAS_CUDA:
        pytest.skip("this machine has CUDA")
    before = snapshot(workspace)
    r = run_row(row, workspace, tmp_path / "out", monkeypatch)
    monkeypatch.undo()
    assert r.exit_code == row.code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    err = r.stderr.strip()
    if row.code == 1:
        assert len(err.splitlines()) == 1, err
        assert err.startswith("error: ")
    assert row.fragment in " ".join(err.split()), err
    assert snapshot(workspace) == before, "a user file changed"
    out = tmp_path / "out"
    assert not (out / "last.pt").exists(), "a failed command must not leave a checkpoint"


def test_a_fixed_mistake_reruns_without_force(workspace, tmp_path):
    """A run that failed before its first checkpoint does not block the corrected command."""
    out = tmp_path / "out"
    r = runner.invoke(app, ["train", str(workspace / "good.txt"), "--out", str(out), *TINY,
                            "--seq-len", "100000"])
    assert r.exit_code == 1
    r = runner.invoke(app, ["train", str(workspace / "good.txt"), "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").is_file()


def test_table_is_big_enough():
    assert len(ROWS) >= 20 and len({r.id for r in ROWS}) == len(ROWS)


def markdown_table() -> str:
    """The docs table, with each row's real message on this machine."""
    import tempfile

    lines = ["| # | bad input | command | exit | message |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        build_workspace(ws)
        for i, row in enumerate(ROWS, 1):
            mp = pytest.MonkeyPatch()
            try:
                r = run_row(row, ws, Path(tmp) / f"out{i}", mp)
            finally:
                mp.undo()
            err = " ".join(r.stderr.split()).replace(tmp, "…").replace("|", "\\|")
            if row.code == 2:
                err = err[err.find("Invalid value"):].split("│")[0].strip() if "Invalid value" in err else err
            args = list(row.args)
            for j in range(len(args)):   # the tiny shapes every train row uses are left out
                if args[j:j + len(TINY)] == TINY:
                    args[j:j + len(TINY)] = ["…"]
                    break
            cmd = " ".join(a.replace("{ws}/", "").replace("{out}", "OUT") for a in args).replace("|", "\\|")
            lines.append(f"| {i} | {row.what} | `charlm {cmd}` | {r.exit_code} | {err[:220]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
