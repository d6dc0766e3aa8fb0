"""`charlm corpus ...`: the catalog of named corpora, and what is in a text file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn
from typing_extensions import Annotated

from ..corpus import catalog
from ..errors import ConfigError
from ..util import human_bytes
from .app import (CONTEXT, app, cli_state, get_console, handles_errors, json_option, stdout_taken,
                  write_document)
from .tables import kv_table

corpus_app = typer.Typer(
    context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
    help="Corpora: the built-in one, named ones downloaded into a cache, and what is in a file.\n\n"
         "Examples:\n\n  charlm corpus list\n\n  charlm corpus get tinyshakespeare\n\n  charlm corpus info input.txt")
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("list", context_settings=CONTEXT)
@handles_errors
def corpus_list(
    json_out: Annotated[Optional[str], json_option("the catalog")] = None,
) -> None:
    """The built-in corpus and the named corpora, with source, sha256, licence and cache state.

    Examples: `charlm corpus list`, `charlm corpus list --json -`.
    """
    from ..corpus.text import BUILTIN_NAME

    rows = catalog.listing()
    if json_out is not None:
        builtin = {"name": BUILTIN_NAME, "url": None, "sha256": None, "size": None,
                   "licence": "Python Software Foundation License", "cached": True,
                   "description": "Python's standard library source, offline"}
        write_document({"schema": "charlm.corpus-list/1", "cache": str(catalog.cache_dir()),
                        "corpora": [builtin] + rows}, json_out)
        if stdout_taken(json_out):
            return


    entries = [[BUILTIN_NAME, "Python's standard library source (about 1.2 MB), offline, always here\n"
                              "licence  Python Software Foundation License"]]
    for r in rows:
        sha = r["sha256"] or "[yellow]unknown (no published sha256 found): refused unless --sha256 or --allow-unverified[/]"
        entries.append([r["name"], f"{escape(r['description'])}\nsource   {escape(r['url'])} "
                                   f"({human_bytes(r['size'])})\nsha256   {sha}\nlicence  {escape(r['licence'])}\n"
                                   f"cached   " + (escape(r["path"]) if r["cached"] else "no")])
    folder = str(catalog.cache_dir())
    home = os.path.expanduser("~")
    if folder.startswith(home + os.sep):  # ~/.cache/charlm reads better than the full path
        folder = "~" + folder[len(home):]
    get_console().print(kv_table(f"corpora (cache folder: {escape(folder)})", entries,
                              show_lines=True))
    get_console().print("`charlm train NAME` downloads a named corpus on first use; "
                     "`charlm corpus get NAME` fetches it now.", highlight=False)


@corpus_app.command("get", context_settings=CONTEXT)
@handles_errors
def corpus_get(
    name: Annotated[str, typer.Argument(help="Catalog name (see `charlm corpus list`).")],
    sha256: Annotated[Optional[str], typer.Option(help="Expected sha256 of the download, when the catalog has none.")] = None,
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified", metavar="", help="Accept a download with no known sha256 after a size check.")] = False,
) -> None:
    """Download a named corpus into the cache, verify its sha256, print the text file's path.

    Examples: `charlm corpus get tinyshakespeare`, `charlm corpus get text8 --sha256 HEX`.
    The cache is $CHARLM_CACHE, else $XDG_CACHE_HOME/charlm, else ~/.cache/charlm.
    """
    r = catalog.recipe(name)
    console = get_console(stderr=True)
    if catalog.is_cached(name, sha256):
        typer.echo(str(catalog.cached_path(name)))
        return
    if r.sha256 is None and sha256 is None and allow_unverified:
        console.print(f"[yellow]warning:[/] no published sha256 for {name}: checking its size only",
                      highlight=False)
    show = console.is_terminal and not cli_state["quiet"]
    if show:
        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(f"get {name}", total=r.size)
            path = catalog.fetch(name, lambda done, total: progress.update(task, completed=done, total=total or r.size),
                                 sha256=sha256, allow_unverified=allow_unverified)
    else:
        path = catalog.fetch(name, sha256=sha256, allow_unverified=allow_unverified)
    typer.echo(str(path))


@corpus_app.command("info", context_settings=CONTEXT)
@handles_errors
def corpus_info(
    file: Annotated[str, typer.Argument(help="UTF-8 text file, folder, or catalog name.")],
    json_out: Annotated[Optional[str], json_option("every figure")] = None,
    top: Annotated[int, typer.Option(help="How many most and least frequent characters to show.")] = 10,
) -> None:
    """Size, characters, distinct characters, the most and least frequent, and which tokenizer to use.

    Examples: `charlm corpus info input.txt`, `charlm corpus info input.txt --json -`.
    """
    from ..corpus.describe import describe_corpus

    d = describe_corpus(file, top=top)
    if json_out is not None:
        write_document({"schema": "charlm.corpus-info/1", **d}, json_out)
        if stdout_taken(json_out):
            return


    show = lambda pairs: "  ".join(f"{escape(repr(ch))} {n:,}" for ch, n in pairs)
    rows = [["corpus", escape(d["corpus"]) + (f" ({d['files']} files)" if d["files"] > 1 else "")],
            ["size", f"{d['bytes']:,} bytes"],
            ["characters", f"{d['characters']:,}"],
            ["distinct characters", f"{d['distinct']:,} ({d['covering_99_9']:,} cover 99.9% of the text)"],
            ["most frequent", show(d["most_frequent"])],
            ["least frequent", show(d["least_frequent"])],
            ["sha256", d["sha256"]],
            ["recommended", f"[bold]{d['options']}[/] (vocabulary {d['vocab_size']:,})"],
            ["why", d["reason"]]]
    get_console().print(kv_table(f"corpus info {escape(file)}", rows))


@corpus_app.command("make", context_settings=CONTEXT)
@handles_errors
def corpus_make(
    kind: Annotated[str, typer.Argument(help="Which synthetic corpus: echo.")],
    distance: Annotated[int, typer.Option(help="Steps between a key and its echo (D).")] = 20,
    records: Annotated[int, typer.Option(help="Number of records (lines).")] = 5000,
    keys: Annotated[int, typer.Option(help="Distinct key symbols (chance = 1/keys).")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write. \\[default: echo-dD.txt]")] = None,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Replace the file if it exists.")] = False,
) -> None:
    """Write a synthetic long-range corpus for the truncation experiment.

    echo: lines of a key, D-1 random letters, a '>' cue and the key again.

    Example: `charlm corpus make echo --distance 40`.
    """
    from ..lab.truncation import write_echo

    if kind != "echo":
        raise ConfigError(f"unknown synthetic corpus {kind!r}: the one there is now is 'echo'")
    path = write_echo(out or Path(f"echo-d{distance}.txt"), distance, records, keys, seed, force)
    if not cli_state["quiet"]:
        get_console().print(f"wrote {path}: {records:,} records, the echo {distance} steps after its key "
                         f"(chance {1 / keys:.1%}); train with e.g. `charlm train {path} --seq-len "
                         f"{2 * distance}`", highlight=False)
