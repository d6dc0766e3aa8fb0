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
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch
from typer.testing import CliRunner

import charlm  # noqa: E402
from charlm.cli import app  # noqa: E402
from charlm.config import split_options  # noqa: E402
from charlm.errors import ConfigError  # noqa: E402
from helpers import make_text  # noqa: E402

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
    read_only: Optional[str] = None    # a workspace folder to make read-only for this row
    env: Optional[dict] = None         # environment variables for this row
    stdout: Optional[str] = None       # "closed" (`>&-`) or "head" (`| head -3`): a real process


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
    Row("model-unknown", "an unknown --model", T("--model", "transformers"), 1, "--model must be one of"),
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
    Row("temperature-nan", "sample --temperature nan", ["sample", "{ws}/run", "--temperature", "nan"], 1,
        "--temperature must be >= 0"),
    Row("temperature-negative", "sample --temperature -1", ["sample", "{ws}/run", "--temperature", "-1"], 1,
        "--temperature must be >= 0"),
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
    Row("prime-unknown-chars-several", "sample --num-samples 2 --prime with unknown characters",
        ["sample", "{ws}/run", "--num-samples", "2", "--prime", "the Ω"], 1, "vocabulary lacks: 'Ω'"),
    Row("prime-unknown-chars-beam", "sample --beam 2 --prime with unknown characters",
        ["sample", "{ws}/run", "--beam", "2", "--prime", "the Ω"], 1, "vocabulary lacks: 'Ω'"),
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
    # --- seeds and sizes (issue 14) ----------------------------------------------------------------
    Row("seed-too-big", "train --seed 2**64", T("--seed", str(2**64)), 1,
        "--seed must be a whole number from 0 to 2**63 - 1"),
    Row("seed-negative", "train --seed -1", T("--seed", "-1"), 1, "--seed must be a whole number from 0"),
    Row("hidden-size-absurd", "--hidden-size 2**64 (no machine holds it)", T("--hidden-size", str(2**64)), 1,
        "the model would need about"),
    Row("make-seed-negative", "corpus make echo --seed -1",
        ["corpus", "make", "echo", "--seed", "-1", "-o", "{out}"], 1, "--seed must be a whole number from 0"),
    Row("make-distance-huge", "corpus make echo --distance 10**9 (5 TB of text)",
        ["corpus", "make", "echo", "--distance", "1000000000", "-o", "{out}"], 1, "is too big"),
    Row("gradients-seed-too-big", "inspect-gradients --seed 2**64",
        ["inspect-gradients", "--seed", str(2**64)], 1, "--seed must be a whole number from 0"),
    Row("truncation-seed-negative", "truncation-table --seeds -1", ["truncation-table", "--seeds", "-1"], 1,
        "--seeds must be a whole number from 0"),
    Row("truncation-distance-huge", "truncation-table --distances 10**8",
        ["truncation-table", "--distances", "100000000"], 1, "is too big"),
    Row("truncation-workdir-read-only", "truncation-table --workdir on a read-only folder",
        ["truncation-table", "--models", "gru", "--distances", "2", "--chunks", "4", "--steps", "1",
         "--workdir", "{ws}/readonly"], 1, "cannot take files", read_only="readonly"),
    Row("truncation-workdir-under-file", "truncation-table --workdir inside a file",
        ["truncation-table", "--workdir", "{ws}/good.txt/work"], 1, "cannot take files"),
    # --- the environment: names, permissions, stdout, the terminal (issue 14) ----------------------
    Row("info-name-too-long", "info: a path component over 255 characters", ["info", "{ws}/" + "n" * 300],
        1, "File name too long"),
    Row("runs-name-too-long", "runs: a path component over 255 characters", ["runs", "{ws}/" + "n" * 300],
        1, "File name too long"),
    Row("out-name-too-long", "train --out with a component over 255 characters",
        ["train", "{ws}/good.txt", "--out", "{ws}/" + "n" * 300 + "/run", *TINY], 1, "File name too long"),
    Row("corpus-info-name-too-long", "corpus info: a path component over 255 characters",
        ["corpus", "info", "{ws}/" + "n" * 300], 1, "too long"),
    Row("json-name-too-long", "info --json FILE with a name over 255 characters",
        ["info", "{ws}/run", "--json", "{ws}/" + "n" * 300], 1, "cannot write --json"),
    Row("json-into-missing-folder", "info --json into a folder that does not exist",
        ["info", "{ws}/run", "--json", "{ws}/nope/info.json"], 1, "cannot write --json"),
    Row("info-unreadable", "info on a checkpoint without read permission", ["info", "{ws}/locked_run/best.pt"],
        1, "Permission denied", unreadable="locked_run/best.pt"),
    Row("two-documents-on-stdout", "inspect-gradients --json - --csv -",
        ["inspect-gradients", "--json", "-", "--csv", "-"], 2, "only one of --json -"),
    Row("columns-zero", "COLUMNS=0 (errors used to vanish)", ["train", "{ws}/nope.txt", "--out", "{out}"], 1,
        "does not exist", env={"COLUMNS": "0"}),
    Row("stdout-closed-info", "info with stdout closed (`>&-`)", ["info", "{ws}/run"], 1,
        "standard output is closed", stdout="closed"),
    Row("stdout-closed-sample", "sample with stdout closed (`>&-`)", ["sample", "{ws}/run", "--length", "5"], 1,
        "standard output is closed", stdout="closed"),
    Row("stdout-closed-train", "train with stdout closed (`>&-`): trains on", T(), 0,
        "display off, training goes on", stdout="closed"),
    Row("stdout-head", "`charlm train … \\| head -3`: trains on", T("--max-steps", "30", "--eval-every", "5"),
        0, "display off, training goes on", stdout="head"),
    # --- config files (issue 14) ---------------------------------------------------------------------
    Row("toml-not-utf8", "a config file in Latin-1", T("--config", "{ws}/latin1.toml"), 1,
        "is not a UTF-8 TOML file"),
    Row("toml-binary", "a binary file as config", T("--config", "{ws}/binary.toml"), 1,
        "is not a UTF-8 TOML file"),
]

# The same mistakes made through the Python API: (what, the call as the docs show it, the call).
API_ROWS = [
    ("an option name misspelt in a dict", 'charlm.train({"hiden_size": 16})',
     lambda ws: charlm.train({"hiden_size": 16, "out": str(ws / "api-run")}),
     "unknown option 'hiden_size' (did you mean 'hidden_size'?)"),
    ("the same, building configs from a dict", 'config.split_options({"hiden_size": 16})',
     lambda ws: split_options({"hiden_size": 16}), "unknown option 'hiden_size' (did you mean 'hidden_size'?)"),
    ("a seed out of range", 'charlm.TrainConfig(seed=-1).validate()',
     lambda ws: charlm.TrainConfig(seed=-1).validate(), "--seed must be a whole number from 0"),
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
    (ws / "latin1.toml").write_bytes('corpus = "café.txt"\n'.encode("latin-1"))
    (ws / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (ws / "readonly").mkdir()
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


def make_read_only(folder: Path, monkeypatch) -> None:
    """chmod 555; as root, creating a file in the folder is made to fail with EACCES."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            p = Path(os.fsdecode(path))
            if (flags & (os.O_WRONLY | os.O_RDWR)) and (p == folder or p.parent == folder):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, "open", refusing_open)


@dataclass
class Ran:
    """What a real process did, shaped like CliRunner's result."""
    exit_code: int
    stdout: str
    stderr: str
    exception: None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_process(args: list[str], stdout: str) -> Ran:
    """`python -m charlm ARGS >&-` ("closed"), or `... | head -3` ("head")."""
    cmd = [sys.executable, "-m", "charlm", *args]
    env = {**os.environ, "NO_COLOR": "1"}
    if stdout == "closed":
        p = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cmd], stderr=subprocess.PIPE, text=True,
                           env=env, timeout=300)
        return Ran(p.returncode, "", p.stderr)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    head = "".join(p.stdout.readline() for _ in range(3))
    p.stdout.close()                     # head has what it wanted and goes away
    err = p.stderr.read()
    return Ran(p.wait(timeout=300), head, err)


def run_row(row: Row, ws: Path, out: Path, monkeypatch=None):
    args = [a.replace("{ws}", str(ws)).replace("{out}", str(out)) for a in row.args]
    if row.stdout:
        return run_process(args, row.stdout)
    if row.unreadable:
        make_unreadable(ws / row.unreadable, monkeypatch)
    if row.read_only:
        make_read_only(ws / row.read_only, monkeypatch)
    try:
        return runner.invoke(app, args, env=row.env)
    finally:
        if row.unreadable:
            (ws / row.unreadable).chmod(0o644)
        if row.read_only:
            (ws / row.read_only).chmod(0o755)


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
        assert r.stdout == "", "a command that fails its checks writes nothing to stdout"
    assert row.fragment in " ".join(err.split()), err
    assert snapshot(workspace) == before, "a user file changed"
    out = tmp_path / "out"
    if row.code != 0:
        assert not (out / "last.pt").exists(), "a failed command must not leave a checkpoint"
    else:   # the display went off, the run did not: it trained to the end
        from charlm.checkpoint import load_checkpoint

        steps = int(r_arg(row.args, "--max-steps", default="3"))
        assert load_checkpoint(out / "last.pt")["progress"]["step"] == steps
        assert len(err.splitlines()) == 1, err


def r_arg(args: list[str], name: str, default: str) -> str:
    """The last value given to option ``name`` in args."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else default


@pytest.mark.parametrize("what, call, fn, message", API_ROWS, ids=[r[1] for r in API_ROWS])
def test_bad_api_input(what, call, fn, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        fn(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []     # nothing was created


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
            cmd = cmd.replace("n" * 300, "n×300")
            env = "".join(f"{k}={v} " for k, v in (row.env or {}).items())
            pipe = {"closed": " >&-", "head": " \\| head -3"}.get(row.stdout or "", "")
            err = err.replace("n" * 300, "n×300")
            lines.append(f"| {i} | {row.what} | `{env}charlm {cmd}{pipe}` | {r.exit_code} | {err[:220]} |")
        for j, (what, call, fn, _) in enumerate(API_ROWS, len(ROWS) + 1):
            try:
                fn(Path(tmp))
                message = "(no error)"
            except ConfigError as e:
                message = f"ConfigError: {e}"
            lines.append(f"| {j} | {what} (Python API) | `{call}` | - | {message[:220]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())


def test_a_message_quoting_a_value_of_several_lines_is_still_one_line():
    """A hostile checkpoint's model config can hold a tensor, whose repr spans lines; the error
    quoting it stays one line (found by the slow tier's mutated checkpoints)."""
    import torch
    import typer

    from charlm.cli.app import handles_errors
    from charlm.errors import CheckpointError

    @handles_errors
    def command():
        raise CheckpointError(f"checkpoint has an invalid model config: got {torch.zeros(2, 1)!r}")

    app_ = typer.Typer()
    app_.command()(command)
    r = CliRunner().invoke(app_, [])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: checkpoint has an invalid model config: got tensor([[0.], [0.]])"
