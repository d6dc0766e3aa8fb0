"""The corpus catalog: downloads from a local http.server (success, checksum mismatch, interrupted,
offline), the cache folder, `charlm corpus list/get/info`, and `charlm train NAME`."""

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlm.corpus import catalog
from charlm.corpus.catalog import Recipe
from charlm.cli import app
from charlm.errors import DownloadError
from helpers import REPO, TINY, make_text

runner = CliRunner()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        cut = self.path.startswith("/cut/")
        self.send_response(200)
        # A cut download promises the whole body, sends half, and hangs up.
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.wfile.flush()
        if cut:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local http.server on 127.0.0.1 (a free port), stopped after the test."""
    files: dict = {}
    handler = type("Handler", (_Handler,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, files
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_CACHE", str(folder))
    return folder


def _recipe(monkeypatch, name, url, body, member=None, sha256="auto"):
    sha = hashlib.sha256(body).hexdigest() if sha256 == "auto" else sha256
    r = Recipe(name=name, url=url, sha256=sha, size=len(body), licence="test", description="test corpus",
               member=member)
    monkeypatch.setitem(catalog.recipes(), name, r)
    return r


def _leftovers(folder: Path):
    """The files in folder, but the record charlm keeps beside each cached corpus."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".source.json")) \
        if folder.exists() else []


def test_download_verifies_and_caches(server, cache, monkeypatch):
    base, files = server
    body = make_text(3000).encode()
    files["/tiny.txt"] = body
    _recipe(monkeypatch, "tiny", base + "/tiny.txt", body)
    assert catalog.is_known("tiny") and not catalog.is_cached("tiny")
    path = catalog.fetch("tiny")
    assert path == cache / "corpora" / "tiny.txt" and path.read_bytes() == body
    assert _leftovers(cache) == ["tiny.txt"]  # no temporary file left behind
    del files["/tiny.txt"]  # a second fetch uses the cache, not the network
    assert catalog.fetch("tiny") == path


def test_zip_archive_is_extracted_to_its_text_file(server, cache, monkeypatch):
    base, files = server
    text = make_text(2000, seed=3).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("tiny8", text)
    files["/tiny8.zip"] = buf.getvalue()
    _recipe(monkeypatch, "tiny8", base + "/tiny8.zip", buf.getvalue(), member="tiny8")
    path = catalog.fetch("tiny8")
    assert path.read_bytes() == text
    assert _leftovers(cache) == ["tiny8.txt"]  # the archive is gone


def test_checksum_mismatch_is_refused_and_nothing_kept(server, cache, monkeypatch):
    base, files = server
    files["/tiny.txt"] = b"not the text the recipe promises\n"
    _recipe(monkeypatch, "tiny", base + "/tiny.txt", files["/tiny.txt"], sha256="0" * 64)   # the right size
    with pytest.raises(DownloadError, match="checksum mismatch"):
        catalog.fetch("tiny")
    assert _leftovers(cache) == []


def test_interrupted_download_leaves_no_partial_file(server, cache, monkeypatch):
    base, files = server
    body = make_text(50_000).encode()
    files["/cut/tiny.txt"] = body
    _recipe(monkeypatch, "tiny", base + "/cut/tiny.txt", body)
    with pytest.raises(DownloadError, match="interrupted|cut short"):
        catalog.fetch("tiny")
    assert _leftovers(cache) == []
    assert not catalog.is_cached("tiny")


def test_offline_message_says_how_to_pass_a_local_file(cache, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _recipe(monkeypatch, "tiny", f"http://127.0.0.1:{port}/tiny.txt", b"x")
    with pytest.raises(DownloadError) as e:
        catalog.fetch("tiny")
    assert "offline" in str(e.value) and "charlm train input.txt" in str(e.value)
    assert _leftovers(cache) == []


def test_no_known_checksum_is_refused_unless_asked(server, cache, monkeypatch):
    base, files = server
    body = make_text(1000).encode()
    files["/u.txt"] = body
    _recipe(monkeypatch, "unverified", base + "/u.txt", body, sha256=None)
    with pytest.raises(DownloadError, match="cannot verify a download of unverified"):
        catalog.fetch("unverified")
    assert _leftovers(cache) == []
    # The user supplies the checksum...
    assert catalog.fetch("unverified", sha256=hashlib.sha256(body).hexdigest()).read_bytes() == body
    (cache / "corpora" / "unverified.txt").unlink()
    # ...or accepts a size-only check, which still refuses a wrong size.
    assert catalog.fetch("unverified", allow_unverified=True).read_bytes() == body
    (cache / "corpora" / "unverified.txt").unlink()
    files["/u.txt"] = body[:-4]
    with pytest.raises(DownloadError, match="size mismatch"):
        catalog.fetch("unverified", allow_unverified=True)
    files["/u.txt"] = body + b"more"   # more than the recipe's size: refused as it arrives
    with pytest.raises(DownloadError, match="sent more than the 1,000 bytes"):
        catalog.fetch("unverified", allow_unverified=True)


def test_cache_folder_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CHARLM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.cache_dir() == tmp_path / "xdg" / "charlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert catalog.cache_dir() == Path.home() / ".cache" / "charlm"
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "mine"))
    assert catalog.cache_dir() == tmp_path / "mine"


def test_catalog_recipes_are_complete():
    for name in ("tinyshakespeare", "enwik8", "text8"):
        r = catalog.recipe(name)
        assert r.url.startswith("http") and r.licence and r.size > 0
    assert catalog.recipe("tinyshakespeare").sha256 == \
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert catalog.recipe("enwik8").member == "enwik8" and len(catalog.recipe("enwik8").sha256) == 64
    # No published sha256 was found for text8: the recipe says so rather than pretending.
    assert catalog.recipe("text8").sha256 is None and "no published sha256" in catalog.recipe("text8").checksum_source


def test_corpus_list(cache):
    result = runner.invoke(app, ["corpus", "list", "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["corpora"]}
    assert {"builtin:python-stdlib", "tinyshakespeare", "enwik8", "text8"} <= set(rows)
    assert rows["tinyshakespeare"]["sha256"].startswith("86c4e6aa") and rows["tinyshakespeare"]["cached"] is False
    table = runner.invoke(app, ["corpus", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    for fragment in ("tinyshakespeare", "enwik8", "text8", "86c4e6aa9db7", "CC BY-SA", "unknown"):
        assert fragment in table.stdout


def test_corpus_get_cli_mismatch_and_real_tinyshakespeare(server, cache, tmp_path):
    """The URL override points the real recipe at the local server; the sha256 still rules."""
    base, files = server
    files["/input.txt"] = make_text(5000).encode()
    env = {**os.environ, "CHARLM_CATALOG_URL_TINYSHAKESPEARE": base + "/input.txt"}
    proc = subprocess.run([sys.executable, "-m", "charlm", "corpus", "get", "tinyshakespeare"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert _leftovers(cache) == []
    real = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
    if real.exists():  # served from where it lies, never copied into the repository
        files["/input.txt"] = real.read_bytes()
        result = runner.invoke(app, ["corpus", "get", "tinyshakespeare"],
                               env={"CHARLM_CATALOG_URL_TINYSHAKESPEARE": base + "/input.txt"})
        assert result.exit_code == 0, result.output
        assert Path(result.stdout.strip()).read_bytes() == real.read_bytes()


def test_train_accepts_a_catalog_name(server, cache, monkeypatch, tmp_path):
    base, files = server
    body = make_text(6000, seed=5).encode()
    files["/tiny.txt"] = body
    _recipe(monkeypatch, "tinytest", base + "/tiny.txt", body)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "tinytest", *TINY, "--max-steps", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", str(out), "--json", "-"])
    d = json.loads(info.stdout)
    assert d["corpus"] == "tinytest" and d["corpus_sha256"] == hashlib.sha256(body).hexdigest()


def test_corpus_info_recommends_a_tokenizer(tmp_path):
    english = tmp_path / "en.txt"
    english.write_text(make_text(4000), encoding="utf-8")
    d = json.loads(runner.invoke(app, ["corpus", "info", str(english), "--json", "-"]).stdout)
    assert d["characters"] == 4000 and d["bytes"] == 4000
    assert d["tokenizer"] == "char" and d["vocab_size"] == d["distinct"]
    assert d["most_frequent"][0][0] == " " and d["least_frequent"][0][1] <= d["most_frequent"][-1][1]

    hangul = tmp_path / "ko.txt"
    hangul.write_text("안녕하세요 반갑습니다 오늘 날씨가 좋네요\n" * 50, encoding="utf-8")
    d = json.loads(runner.invoke(app, ["corpus", "info", str(hangul), "--json", "-"]).stdout)
    assert d["normalize"] == "nfd" and d["vocab_size"] < d["distinct"] + 20

    # A very large alphabet (thousands of CJK characters): subword pieces.
    import random

    rng = random.Random(0)
    cjk = tmp_path / "zh.txt"
    cjk.write_text("".join(chr(0x4E00 + rng.randrange(6000)) for _ in range(200_000)), encoding="utf-8")
    d = json.loads(runner.invoke(app, ["corpus", "info", str(cjk), "--json", "-"]).stdout)
    assert d["tokenizer"] == "unigram" and d["vocab_size"] >= 2000
    assert f"--vocab-size {d['vocab_size']}" in d["options"]

    table = runner.invoke(app, ["corpus", "info", str(english)], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "--tokenizer char" in table.stdout and "distinct characters" in table.stdout


def test_corpus_info_missing_file_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["corpus", "info", str(tmp_path / "nope.txt")])
    assert result.exit_code == 1 and "does not exist" in result.stderr and "Traceback" not in result.output


# ----------------------------------------------------------------------------------------------
# The cache folder and the address: a cache that is a file or unwritable, a file:// address.

def test_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CHARLM_CACHE", str(blocker))
    _recipe(monkeypatch, "tiny", "http://127.0.0.1:9/tiny.txt", b"x")
    with pytest.raises(DownloadError) as e:
        catalog.fetch("tiny")
    assert str(e.value) == (f"cannot use $CHARLM_CACHE {blocker}: a file is in the way of "
                            f"{blocker / 'corpora'}; set CHARLM_CACHE to a folder")
    assert blocker.read_text() == "not a folder"
    result = runner.invoke(app, ["corpus", "get", "tiny"], env={"CHARLM_CACHE": str(blocker)})
    assert result.exit_code == 1 and "a file is in the way" in result.stderr and "Traceback" not in result.output
    assert runner.invoke(app, ["corpus", "list", "--json", "-"]).exit_code == 0  # listing still works


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: permissions cannot be tested")
def test_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    (locked / "corpora").mkdir(parents=True)
    (locked / "corpora").chmod(0o500)
    monkeypatch.setenv("CHARLM_CACHE", str(locked))
    _recipe(monkeypatch, "tiny", "http://127.0.0.1:9/tiny.txt", b"x")
    try:
        with pytest.raises(DownloadError, match="is not writable; set CHARLM_CACHE"):
            catalog.fetch("tiny")
    finally:
        (locked / "corpora").chmod(0o700)


def test_unwritable_cache_message(tmp_path, monkeypatch):
    """The same check as root would see it, with os.access saying no."""
    monkeypatch.setenv("CHARLM_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(catalog.os, "access", lambda path, mode: False)
    _recipe(monkeypatch, "tiny", "http://127.0.0.1:9/tiny.txt", b"x")
    with pytest.raises(DownloadError) as e:
        catalog.fetch("tiny")
    assert str(e.value) == (f"cannot use $CHARLM_CACHE {tmp_path / 'c'}: {tmp_path / 'c' / 'corpora'} "
                            f"is not writable; set CHARLM_CACHE to a folder you can write")


def test_file_addresses_are_supported(cache, monkeypatch, tmp_path):
    body = make_text(2000).encode()
    source = tmp_path / "mirror" / "tiny.txt"
    source.parent.mkdir()
    source.write_bytes(body)
    _recipe(monkeypatch, "tiny", source.as_uri(), body)
    assert catalog.fetch("tiny").read_bytes() == body
    _recipe(monkeypatch, "gone", (tmp_path / "nope.txt").as_uri(), body)
    with pytest.raises(DownloadError) as e:
        catalog.fetch("gone")
    assert str(e.value) == f"cannot read {(tmp_path / 'nope.txt').as_uri()}: No such file or directory"
    _recipe(monkeypatch, "ftp", "ftp://example.org/x.txt", body)
    with pytest.raises(DownloadError, match="only http, https, file addresses are supported"):
        catalog.fetch("ftp")
    assert _leftovers(cache) == ["tiny.txt"]


def test_file_address_through_the_cli(cache, tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(b"hello\n" * 10)
    env = {**os.environ, "CHARLM_CATALOG_URL_TINYSHAKESPEARE": source.as_uri()}
    proc = subprocess.run([sys.executable, "-m", "charlm", "corpus", "get", "tinyshakespeare"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: checksum mismatch for {source.as_uri()}")


# ----------------------------------------------------------------------------------------------
# Recipes: TOML files in corpora/, one per corpus, packaged with the code.

RECIPE = 'description = "d"\nurl = "https://example.org/x.txt"\nsize = 10\nlicence = "l"\n'


@pytest.mark.parametrize("body,why", [
    ("url = ", "not valid TOML (Invalid value"),
    (RECIPE + "colour = 'red'\n", "unknown key 'colour'"),
    (RECIPE.replace("size = 10", "size = '10'"), "size must be int, got str"),
    (RECIPE.replace("size = 10", "size = 0"), "size must be positive"),
    (RECIPE.replace('licence = "l"\n', ""), "it lacks licence"),
    (RECIPE + 'sha256 = "abc"\n', "sha256 must be 64 hexadecimal digits"),
    (RECIPE.replace("https://", "gopher://"), "url must start with http://, https://, file://"),
])
def test_a_malformed_recipe_is_one_line_naming_the_file(tmp_path, monkeypatch, body, why):
    path = tmp_path / "broken.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(catalog.CorpusError) as e:
        catalog.read_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"corpus recipe {path} is malformed: ") and why in msg and "\n" not in msg
    # Through the CLI: `corpus list`, and a corpus name anywhere, say the same line.
    monkeypatch.setattr(catalog, "recipe_folder", lambda: tmp_path)
    monkeypatch.setattr(catalog, "_recipes", None)
    result = runner.invoke(app, ["corpus", "list"])
    assert result.exit_code == 1 and f"corpus recipe {path} is malformed" in result.stderr
    assert "Traceback" not in result.output


def test_recipes_are_read_from_the_top_level_corpora_folder(tmp_path, monkeypatch):
    repo = REPO
    assert catalog.recipe_folder() == repo / "corpora"
    assert sorted(catalog.recipes()) == sorted(p.stem for p in (repo / "corpora").glob("*.toml"))
    (tmp_path / "mine.toml").write_text(RECIPE, encoding="utf-8")
    monkeypatch.setattr(catalog, "recipe_folder", lambda: tmp_path)
    monkeypatch.setattr(catalog, "_recipes", None)
    r = catalog.recipe("mine")
    assert (r.name, r.url, r.size, r.sha256, r.member) == ("mine", "https://example.org/x.txt", 10, None, None)


def test_pyproject_packages_every_package_and_the_recipes():
    """pyproject.toml lists packages by hand (to map corpora/ into charlm._corpora): none missing."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    repo = REPO
    setup = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "charlm").rglob("__init__.py")}
    assert set(setup["packages"]) == found | {"charlm._corpora"}
    assert setup["package-dir"] == {"charlm._corpora": "corpora"}
    assert "*.toml" in setup["package-data"]["charlm._corpora"]


@pytest.mark.slow
def test_a_wheel_carries_the_recipes(tmp_path):
    """`pip wheel .` puts corpora/*.toml at charlm/_corpora/, where recipe_folder() looks."""
    repo = REPO
    src = tmp_path / "src"   # a copy, so the build leaves nothing in the working tree
    import shutil

    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "whl"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "whl").glob("charlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for recipe in (repo / "corpora").glob("*.toml"):
        assert f"charlm/_corpora/{recipe.name}" in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = "import charlm.corpus.catalog as c; print(c.recipe_folder(), sorted(c.recipes()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "site" / "charlm" / "_corpora") in out.stdout and "tinyshakespeare" in out.stdout


def test_a_download_stops_at_the_recipes_size(cache, monkeypatch):
    """A mirror set to /dev/zero wrote 1.76 GB in 10 s: the download now stops one block past the
    published size, refused, with nothing left in the cache."""
    r = catalog.recipe("tinyshakespeare")
    monkeypatch.setenv("CHARLM_CATALOG_URL_TINYSHAKESPEARE", "file:///dev/zero")
    with pytest.raises(DownloadError, match=f"sent more than the {r.size:,} bytes"):
        catalog.fetch("tinyshakespeare")
    assert _leftovers(cache) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_sigterm_during_a_download_leaves_no_temporary_file(tmp_path):
    """A download waiting on a source that sends nothing (a FIFO nobody writes), killed with
    SIGTERM: exit 143 and no .download-*.tmp left in the cache (it stayed forever before)."""
    import signal
    import subprocess
    import time

    fifo = tmp_path / "never"
    os.mkfifo(fifo)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "CHARLM_CACHE": str(cache_dir), "CHARLM_CATALOG_URL_TINYSHAKESPEARE": f"file://{fifo}",
           "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "charlm", "corpus", "get", "tinyshakespeare"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(cache_dir.rglob(".download-*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(cache_dir.rglob(".download-*.tmp")), "the download never started"
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        p.kill()
    assert p.returncode in (143, 1), p.stderr
    assert list(cache_dir.rglob(".download-*.tmp")) == []


@pytest.mark.parametrize("url", ["http://[::1", "https://[zz]/x", "ftp://example.org/input.txt", "input.txt"])
def test_a_malformed_catalog_url_in_the_environment_is_one_line_naming_the_variable(cache, url):
    env = {"CHARLM_CATALOG_URL_TINYSHAKESPEARE": url}
    r = runner.invoke(app, ["corpus", "get", "tinyshakespeare", "--allow-unverified"], env=env)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(r.stderr.strip().splitlines()) == 1 and "$CHARLM_CATALOG_URL_TINYSHAKESPEARE" in r.stderr
    assert _leftovers(cache) == []



@pytest.mark.parametrize("change", ["edited", "cut", "recipe", "sha256-option", "no-record"])
def test_a_cached_corpus_is_reused_only_while_its_source_is_the_same(server, cache, monkeypatch, change):
    """A cached copy was reused on its name alone (was: an edited or cut cached file, a recipe whose
    checksum changed, or `corpus get --sha256` of another file all used the old copy). Now a copy
    whose size changed, or that was downloaded under another checksum, is downloaded again; one
    cached before charlm kept a record is checked by hashing it."""
    base, files = server
    old, new = make_text(3000).encode(), make_text(3000, seed=7).encode()
    files["/tiny.txt"] = old
    _recipe(monkeypatch, "tiny", base + "/tiny.txt", old)
    path = catalog.fetch("tiny")
    assert path.read_bytes() == old and catalog.is_cached("tiny")
    record = path.parent / ".tiny.txt.source.json"
    assert record.is_file()
    if change == "edited":
        path.write_bytes(old + b"mine\n")
    elif change == "cut":
        path.write_bytes(old[:100])
    elif change == "recipe":                                  # a new version of the recipe
        files["/tiny.txt"] = new
        _recipe(monkeypatch, "tiny", base + "/tiny.txt", new)
    elif change == "sha256-option":
        files["/tiny.txt"] = new
        assert not catalog.is_cached("tiny", hashlib.sha256(new).hexdigest())
        assert catalog.fetch("tiny", sha256=hashlib.sha256(new).hexdigest()).read_bytes() == new
        return
    else:
        record.unlink()
        assert catalog.is_cached("tiny") and record.is_file()   # hashed once, then recorded
        path.write_bytes(old[:-1] + b"X")
        record.unlink()
    assert not catalog.is_cached("tiny")
    assert catalog.fetch("tiny").read_bytes() == files["/tiny.txt"]
    assert catalog.is_cached("tiny")
