"""The layout's promises, checked on the source: imports flow one way (no cycles, counting
function-local imports), only charlm/cli/ knows about Typer and Rich, and no function is long."""

from __future__ import annotations

import ast
from pathlib import Path
from helpers import REPO

PACKAGE = REPO / "charlm"
MAX_BODY_LINES = 80   # a function's body, its signature and docstring not counted


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """charlm modules that `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:   # `from . import catalog` imports a module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def test_no_import_cycles():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_the_cli_imports_typer_and_rich():
    offenders = []
    for name, path in modules().items():
        if name == "charlm.cli" or name.startswith("charlm.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in ("typer", "rich")]
    assert not offenders, offenders


def test_no_long_functions():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str) and len(body) > 1):
                body = body[1:]   # the docstring
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_BODY_LINES:
                long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def is_product(name: str) -> bool:
    """The product: everything but the lab's instruments and the command line over both."""
    return not any(name == p or name.startswith(p + ".") for p in ("charlm.lab", "charlm.cli"))


def test_the_product_never_imports_the_lab():
    """The wall: model, corpus, training, checkpoints, sampling, evaluation, scoring, export and
    the API never import charlm.lab, at the top or inside a function. The lab uses the product;
    what the trainer needs from it arrives as an argument (``grad_probe``)."""
    mods = modules()
    crossing = [f"{name} -> {target}" for name, path in mods.items() if is_product(name)
                for target in sorted(imports_of(name, path, set(mods)))
                if target == "charlm.lab" or target.startswith("charlm.lab.")]
    assert not crossing, crossing
    assert {"charlm.lab.gradients", "charlm.lab.context", "charlm.lab.truncation", "charlm.lab.sweep"} <= set(mods)


# A function-local import is allowed only where it keeps something heavy off `charlm --help` and
# start-up (a light module importing torch, numpy or a module that imports them), or loads an
# optional extra; everything else is imported at the top, where a reader looks for it.
HEAVY = ("torch", "numpy", "sentencepiece")
OPTIONAL_EXTRAS = ("matplotlib", "onnx", "onnxruntime", "tensorboard", "torch.utils.tensorboard",
                   "charlm.tb", "readline")


def _resolved(name: str, path: Path, node: ast.AST, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")
    target = (".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
              if node.level else node.module or "")
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def test_function_local_imports_only_keep_heavy_modules_off_start_up():
    mods = modules()
    known = set(mods)
    top: dict[str, set[str]] = {}
    local: dict[str, list[tuple[int, str]]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top[name] = {t for stmt in tree.body for node in ast.walk(stmt)
                     if isinstance(node, (ast.Import, ast.ImportFrom)) and not isinstance(stmt, ast.FunctionDef)
                     and not isinstance(stmt, ast.ClassDef) for t in _resolved(name, path, node, known)}
        local[name] = [(node.lineno, t) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _resolved(name, path, node, known)]

    def heavy(module: str, seen: frozenset = frozenset()) -> bool:
        if module.split(".")[0] in HEAVY:
            return True
        return module in top and module not in seen and any(heavy(t, seen | {module}) for t in top[module])

    def extra(module: str) -> bool:
        return any(module == e or module.startswith(e + ".") for e in OPTIONAL_EXTRAS)

    offenders = [f"{name}:{line} imports {target} inside a function" for name in sorted(local)
                 for line, target in local[name]
                 if not extra(target) and not (heavy(target) and not heavy(name))]
    assert not offenders, offenders
