"""Named corpora: recipes read from the top-level corpora/ folder, downloaded once into a cache.

This module only knows recipes, the cache and downloads; it imports nothing else of charlm.corpus,
so ``text.Corpus.resolve`` can look a name up here ("tinyshakespeare" wherever a path goes) without
a cycle. A download goes to a temporary file in the cache folder, is checked against the recipe's
sha256, and only then is moved into place with ``os.replace``: an interrupted or corrupted download
never leaves a file that looks complete. Zip archives are checked as downloaded, then their single
text file is extracted the same way.

Where things live, and how tests (or a mirror) redirect them:
- recipes: ``corpora/NAME.toml`` in a source checkout or an editable install, and the same files
  as the package data ``charlm/_corpora/`` in a wheel (pyproject.toml maps one to the other);
- cache folder: ``$CHARLM_CACHE``, else ``$XDG_CACHE_HOME/charlm``, else ``~/.cache/charlm``;
- source address: ``$CHARLM_CATALOG_URL_<NAME>`` (e.g. ``CHARLM_CATALOG_URL_TINYSHAKESPEARE``)
  replaces a recipe's URL (http, https or file). Only the address changes: the bytes must still
  match the sha256.
"""

from __future__ import annotations

import hashlib
import json
import http.client
import os
import signal
import threading
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject.toml declares tomli there)
    import tomli as tomllib

from ..errors import CorpusError, DownloadError

ProgressCallback = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)
SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class Recipe:
    name: str
    url: str
    sha256: Optional[str]      # of the downloaded file (the archive for a zip); None: not known
    size: int                  # bytes of the downloaded file, as published
    licence: str
    description: str
    member: Optional[str] = None   # the text file inside a zip archive
    checksum_source: str = ""      # where the sha256 (or its absence) comes from

    @property
    def filename(self) -> str:
        return f"{self.name}.txt"


# ----------------------------------------------------------------------------------------------
# Recipes: one TOML file per corpus.

_FIELDS = {"url": str, "size": int, "sha256": str, "licence": str, "description": str,
           "member": str, "checksum_source": str}
_REQUIRED = ("url", "size", "licence", "description")
_recipes: Optional[dict[str, Recipe]] = None


def recipe_folder() -> Path:
    """Where the recipe files are: the package data of a wheel, else the checkout's corpora/."""
    package = Path(__file__).resolve().parent.parent  # charlm/
    installed = package / "_corpora"
    return installed if installed.is_dir() else package.parent / "corpora"


def read_recipe(path: Path) -> Recipe:
    """One recipe file, checked: a malformed one is a one-line CorpusError naming the file."""
    def bad(why: str) -> CorpusError:
        return CorpusError(f"corpus recipe {path} is malformed: {why}")

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise CorpusError(f"cannot read corpus recipe {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise bad(f"not valid TOML ({e})") from None
    for key, value in data.items():
        if key not in _FIELDS:
            raise bad(f"unknown key {key!r} (known: {', '.join(_FIELDS)})")
        if not isinstance(value, _FIELDS[key]) or isinstance(value, bool):
            raise bad(f"{key} must be {_FIELDS[key].__name__}, got {type(value).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise bad(f"it lacks {', '.join(missing)}")
    if data["size"] <= 0:
        raise bad(f"size must be positive, got {data['size']}")
    sha = data.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise bad("sha256 must be 64 hexadecimal digits")
    if urllib.parse.urlsplit(data["url"]).scheme not in SCHEMES:
        raise bad(f"url must start with {', '.join(s + '://' for s in SCHEMES)}")
    return Recipe(name=path.stem, url=data["url"], sha256=sha.lower() if sha else None,
                  size=data["size"], licence=data["licence"], description=data["description"],
                  member=data.get("member"), checksum_source=data.get("checksum_source", ""))


def recipes() -> dict[str, Recipe]:
    """Every recipe, by name, read once (lazily: `charlm --help` reads none)."""
    global _recipes
    if _recipes is None:
        folder = recipe_folder()
        found = {}
        for path in sorted(folder.glob("*.toml")):
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", path.stem):
                raise CorpusError(f"corpus recipe {path} has a bad name: use lowercase letters, "
                                  f"digits, '-', '_' and '.'")
            found[path.stem] = read_recipe(path)
        _recipes = found
    return _recipes


def is_known(name: str) -> bool:
    return name in recipes()


def recipe(name: str) -> Recipe:
    known = recipes()
    if name not in known:
        raise DownloadError(f"no corpus named {name!r} in the catalog (known: {', '.join(sorted(known))})")
    return known[name]


# ----------------------------------------------------------------------------------------------
# The cache.

def cache_dir() -> Path:
    """$CHARLM_CACHE, else $XDG_CACHE_HOME/charlm, else ~/.cache/charlm (the XDG convention)."""
    if os.environ.get("CHARLM_CACHE"):
        return Path(os.environ["CHARLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charlm"


def source_url(r: Recipe) -> str:
    """The recipe's address, or the one its environment variable gives (checked here, so a
    malformed one is named by the variable rather than met deep inside a download)."""
    variable = f"CHARLM_CATALOG_URL_{re.sub(r'[^A-Z0-9]', '_', r.name.upper())}"
    url = os.environ.get(variable)
    if url is None:
        return r.url
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError as e:   # e.g. "http://[::1": an unclosed IPv6 bracket
        raise DownloadError(f"${variable} is not a valid address ({e}): {url!r}; fix or unset it") from None
    if scheme not in SCHEMES:
        raise DownloadError(f"${variable} must start with {', '.join(s + '://' for s in SCHEMES)}, got {url!r}; "
                            f"fix or unset it")
    return url


def cached_path(name: str) -> Path:
    return cache_dir() / "corpora" / recipe(name).filename


def is_cached(name: str, sha256: Optional[str] = None) -> bool:
    """Whether the cache holds a copy of ``name`` that can be used as it is: the file is there and
    it is what the checksum in force (``sha256``, else the recipe's) describes. A copy is never
    reused on its name alone: a recipe whose checksum changed (a new charlm version), a
    ``--sha256`` other than the one it was downloaded under, or a file whose size changed since
    (edited, cut short) makes it stale, and fetch() downloads it again."""
    try:
        path = cached_path(name)
        if not path.is_file():
            return False
        expected = (sha256 or recipe(name).sha256 or "").lower() or None
        return _provenance_holds(path, recipe(name), expected)
    except OSError:  # e.g. a name too long for the file system under $CHARLM_CACHE
        return False


def _provenance_path(target: Path) -> Path:
    """Beside each cached corpus: the checksum of what it was made from and its size."""
    return target.parent / f".{target.name}.source.json"


def _write_provenance(target: Path, source_sha256: str) -> None:
    record = {"source_sha256": source_sha256, "size": target.stat().st_size}
    try:
        _provenance_path(target).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError:
        pass   # without it the copy is checked by hashing (or, for an archive, downloaded again)


def _provenance_holds(target: Path, r: Recipe, expected: Optional[str]) -> bool:
    try:
        record = json.loads(_provenance_path(target).read_text(encoding="utf-8"))
        source, size = record["source_sha256"], record["size"]
    except (OSError, ValueError, KeyError, TypeError):
        record = None
    if record is not None:
        return target.stat().st_size == size and (expected is None or source == expected)
    # A copy cached before charlm kept this record: a plain file is checked by its own checksum
    # (and the record written); an archive's member cannot be, so it is taken as it is.
    if expected is None or r.member is not None:
        return True
    if _sha256_of(target) != expected:
        return False
    _write_provenance(target, expected)
    return True


def _cache_folder(target: Path) -> Path:
    """The folder a download goes to, created; a cache that is a file or unwritable is one line."""
    folder = target.parent
    where = "$CHARLM_CACHE" if os.environ.get("CHARLM_CACHE") else "the cache folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DownloadError(f"cannot use {where} {cache_dir()}: a file is in the way of {folder}; "
                            f"set CHARLM_CACHE to a folder") from None
    except OSError as e:
        raise DownloadError(f"cannot use {where} {cache_dir()}: {e.strerror or e}; set CHARLM_CACHE "
                            f"to a folder you can write") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DownloadError(f"cannot use {where} {cache_dir()}: {folder} is not writable; set "
                            f"CHARLM_CACHE to a folder you can write")
    return folder


def fetch(name: str, progress: Optional[ProgressCallback] = None, sha256: Optional[str] = None,
          allow_unverified: bool = False) -> Path:
    """The cached text file of a named corpus, downloading and verifying it first if needed.

    ``sha256`` supplies a checksum the recipe lacks (or overrides it); without any checksum the
    download is refused unless ``allow_unverified`` (then only the size is checked).
    """
    r = recipe(name)
    target = cached_path(name)
    if is_cached(name, sha256):
        return target
    expected = (sha256 or r.sha256 or "").lower() or None
    if expected is None and not allow_unverified:
        raise DownloadError(
            f"cannot verify a download of {name}: charlm has no sha256 for it"
            + (f" ({r.checksum_source})" if r.checksum_source else "") + f"; pass the checksum with `charlm corpus get {name} --sha256 HEX`, accept a "
            f"size-only check with `charlm corpus get {name} --allow-unverified`, or download "
            f"{r.url} yourself and pass the extracted file's path")
    folder = _cache_folder(target)
    archive = _download(source_url(r), folder, expected, r.size if expected is None else None, progress,
                        limit=r.size)
    got = _sha256_of(archive)
    try:
        if r.member is None:
            os.replace(archive, target)
        else:
            _extract(archive, r.member, target)
        target.chmod(0o644)  # temporary files are private (0600); a cached corpus is ordinary data
        _write_provenance(target, got)
    except OSError as e:
        raise DownloadError(f"cannot store {name} in {folder}: {e.strerror or e}") from None
    finally:
        archive.unlink(missing_ok=True)
    return target


# ----------------------------------------------------------------------------------------------
# Downloads.

def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, folder: Path, sha256: Optional[str], size: Optional[int],
              progress: Optional[ProgressCallback], limit: Optional[int] = None) -> Path:
    """Stream url into a temporary file in folder; return it once its checksum (or size) matches.
    More than ``limit`` bytes (the recipe's published size) is refused as they arrive, and the
    temporary file is removed on any failure, Ctrl-C and SIGTERM included."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise DownloadError(f"cannot download {url!r}: only {', '.join(SCHEMES)} addresses are supported")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise DownloadError(f"cannot write to the cache folder {folder}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f, _terminate_as_exit():
            got, done = _stream(url, f, progress, limit)
        if sha256 is not None and got != sha256:
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}; "
                                f"the file was refused and deleted")
        if sha256 is None and size is not None and done != size:
            raise DownloadError(f"size mismatch for {url}: expected {size:,} bytes, got {done:,}; "
                                f"the file was refused and deleted")
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) inside the block (main thread only), so the block's clean-up
    runs as it does on Ctrl-C; by default SIGTERM ends the process with nothing cleaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)
    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _stream(url: str, f, progress: Optional[ProgressCallback], limit: Optional[int] = None) -> tuple[str, int]:
    """Copy url into the open file f; return the sha256 and the byte count. Errors are one line."""
    digest = hashlib.sha256()
    done = 0
    local = url.startswith("file:")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            length = response.headers.get("Content-Length")  # None when the server does not say
            total = int(length) if length and length.isdigit() else None
            while True:
                block = response.read(1 << 16)
                if not block:
                    break
                done += len(block)
                if limit is not None and done > limit:   # a wrong mirror, or /dev/zero: stop now
                    raise DownloadError(f"{url} sent more than the {limit:,} bytes the recipe publishes; "
                                        f"refused and deleted (is the address right?)")
                f.write(block)
                digest.update(block)
                if progress is not None:
                    progress(done, total)
            if total is not None and done < total:
                raise DownloadError(f"download of {url} was cut short ({done:,} of {total:,} bytes); "
                                    f"nothing was kept, try again")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if local:  # a file:// address: no network involved, so say what the file system said
            why = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            raise DownloadError(f"cannot read {url}: {why}") from None
        raise DownloadError(
            f"cannot reach {url} ({e.reason}): you seem to be offline. Download the file on a "
            f"machine that is online and pass its path instead, e.g. `charlm train input.txt`") from None
    except DownloadError:
        raise
    except (OSError, http.client.HTTPException) as e:  # reset connections, timeouts, a full disk
        raise DownloadError(f"download of {url} was interrupted ({type(e).__name__}: {e}); "
                            f"nothing was kept, try again") from None
    except ValueError as e:  # a malformed address (e.g. in CHARLM_CATALOG_URL_<NAME>)
        raise DownloadError(f"cannot download {url!r}: {e}") from None
    return digest.hexdigest(), done


def _extract(archive: Path, member: str, target: Path) -> None:
    """Extract the one text file of a zip archive to target (through a temporary file)."""
    try:
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            name = member if member in names else (names[0] if len(names) == 1 else None)
            if name is None:
                raise DownloadError(f"archive {archive.name} has no member {member!r} (it holds {names[:5]})")
            fd, tmp_name = tempfile.mkstemp(prefix=".extract-", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, z.open(name) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile:
        raise DownloadError("the download is not a valid zip archive") from None


def listing() -> list[dict]:
    """Every recipe as a plain dict, with whether it is cached here (for `charlm corpus list`)."""
    rows = []
    for r in recipes().values():
        rows.append({"name": r.name, "url": source_url(r), "sha256": r.sha256, "size": r.size,
                     "licence": r.licence, "description": r.description,
                     "checksum_source": r.checksum_source, "cached": is_cached(r.name),
                     "path": str(cached_path(r.name))})
    return rows
