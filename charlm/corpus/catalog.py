"""Named corpora: recipes (source address, sha256, licence), downloaded once into a cache.

``charlm train tinyshakespeare`` works because ``data.Corpus.resolve`` asks ``is_known(name)`` and
then ``fetch(name)`` for a name that is not an existing path. A download goes to a temporary file
in the cache folder, is checked against the recipe's sha256, and only then is moved into place
with ``os.replace``: an interrupted or corrupted download never leaves a file that looks complete.
Zip archives are checked as downloaded, then their single text file is extracted the same way.

Where things live, and how tests (or a mirror) redirect them:
- cache folder: ``$CHARLM_CACHE``, else ``$XDG_CACHE_HOME/charlm``, else ``~/.cache/charlm``;
- source address: ``$CHARLM_CATALOG_URL_<NAME>`` (e.g. ``CHARLM_CATALOG_URL_TINYSHAKESPEARE``)
  replaces a recipe's URL. Only the address changes: the bytes must still match the sha256.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import DownloadError

ProgressCallback = Callable[[int, Optional[int]], None]  # (bytes so far, total or None)


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


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        licence="public domain (Shakespeare's works), from karpathy/char-rnn (MIT)",
        description="40,000 lines of Shakespeare, 65 distinct characters: the classic char-rnn corpus",
        checksum_source="karpathy/char-rnn data/tinyshakespeare/input.txt"),
    Recipe(
        name="enwik8",
        url="http://mattmahoney.net/dc/enwik8.zip",
        sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        size=36_445_475,
        licence="Wikipedia text: CC BY-SA 3.0 / GFDL",
        description="first 10^8 bytes of an English Wikipedia XML dump (2006), the Hutter Prize corpus",
        member="enwik8",
        checksum_source="download_checksums of huggingface/datasets datasets/enwik8/dataset_infos.json"),
    Recipe(
        name="text8",
        url="http://mattmahoney.net/dc/text8.zip",
        sha256=None,
        size=31_344_016,
        licence="Wikipedia text: CC BY-SA 3.0 / GFDL",
        description="enwik9 cleaned to lowercase a-z and spaces, first 10^8 characters",
        member="text8",
        checksum_source="no published sha256 found; only the size (31,344,016 bytes, the TensorFlow "
                        "word2vec tutorial's check) is known"),
)}


def is_known(name: str) -> bool:
    return name in RECIPES


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DownloadError(f"no corpus named {name!r} in the catalog (known: {', '.join(sorted(RECIPES))})")
    return RECIPES[name]


def cache_dir() -> Path:
    """$CHARLM_CACHE, else $XDG_CACHE_HOME/charlm, else ~/.cache/charlm (the XDG convention)."""
    if os.environ.get("CHARLM_CACHE"):
        return Path(os.environ["CHARLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charlm"


def source_url(r: Recipe) -> str:
    return os.environ.get(f"CHARLM_CATALOG_URL_{re.sub(r'[^A-Z0-9]', '_', r.name.upper())}", r.url)


def cached_path(name: str) -> Path:
    return cache_dir() / "corpora" / recipe(name).filename


def is_cached(name: str) -> bool:
    return cached_path(name).is_file()


def fetch(name: str, progress: Optional[ProgressCallback] = None, sha256: Optional[str] = None,
          allow_unverified: bool = False) -> Path:
    """The cached text file of a named corpus, downloading and verifying it first if needed.

    ``sha256`` supplies a checksum the recipe lacks (or overrides it); without any checksum the
    download is refused unless ``allow_unverified`` (then only the size is checked).
    """
    r = recipe(name)
    target = cached_path(name)
    if target.is_file():
        return target
    expected = (sha256 or r.sha256 or "").lower() or None
    if expected is None and not allow_unverified:
        raise DownloadError(
            f"cannot verify a download of {name}: charlm has no sha256 for it"
            + (f" ({r.checksum_source})" if r.checksum_source else "") + f"; pass the checksum with `charlm corpus get {name} --sha256 HEX`, accept a "
            f"size-only check with `charlm corpus get {name} --allow-unverified`, or download "
            f"{r.url} yourself and pass the extracted file's path")
    target.parent.mkdir(parents=True, exist_ok=True)
    url = source_url(r)
    archive = _download(url, target.parent, expected, r.size if expected is None else None, progress)
    try:
        if r.member is None:
            os.replace(archive, target)
        else:
            _extract(archive, r.member, target)
    finally:
        archive.unlink(missing_ok=True)
    target.chmod(0o644)  # temporary files are private (0600); a cached corpus is ordinary data
    return target


def _download(url: str, folder: Path, sha256: Optional[str], size: Optional[int],
              progress: Optional[ProgressCallback]) -> Path:
    """Stream url into a temporary file in folder; return it once its checksum (or size) matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    total = response.length  # None when the server does not say
                    while True:
                        block = response.read(1 << 16)
                        if not block:
                            break
                        f.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                    if total is not None and done < total:
                        raise DownloadError(f"download of {url} was cut short ({done:,} of {total:,} bytes); "
                                            f"nothing was kept, try again")
            except urllib.error.HTTPError as e:
                raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise DownloadError(
                    f"cannot reach {url} ({e.reason}): you seem to be offline. Download the file on a "
                    f"machine that is online and pass its path instead, e.g. `charlm train input.txt`") from None
            except (OSError, http.client.HTTPException) as e:  # reset connections, timeouts, IncompleteRead
                raise DownloadError(f"download of {url} was interrupted ({type(e).__name__}: {e}); "
                                    f"nothing was kept, try again") from None
            except ValueError as e:  # a malformed address (e.g. in CHARLM_CATALOG_URL_<NAME>)
                raise DownloadError(f"cannot download {url!r}: {e}") from None
        got = digest.hexdigest()
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
    for r in RECIPES.values():
        rows.append({"name": r.name, "url": source_url(r), "sha256": r.sha256, "size": r.size,
                     "licence": r.licence, "description": r.description,
                     "checksum_source": r.checksum_source, "cached": is_cached(r.name),
                     "path": str(cached_path(r.name))})
    return rows


# ----------------------------------------------------------------------------------------------
# `charlm corpus info FILE`: what is in a corpus, and which tokenizer suits it.

def _is_hangul(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7a3"


def describe_corpus(spec: str, top: int = 10) -> dict:
    """Size, characters, distinct characters, most and least frequent, and a tokenizer advice."""
    from .data import Corpus, scan

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
        **advice,
    }


def _advise(distinct: int, k999: int, hangul_share: float, total: int, corpus) -> dict:
    """Tokenizer advice. Char models want a small alphabet; large ones need pieces or jamo."""
    if hangul_share > 0.3:
        from .data import scan

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
