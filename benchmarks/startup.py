"""Start-up: `charlm --help` as a subprocess against `python -c pass`, alternating; and no command
imports torch before it needs it.

The figure is the median wall time of `charlm --help` (the installed console script next to this
Python, or `python -m charlm` when there is none) over --rounds runs; the reference is the bare
interpreter start, `python -c pass`, in the same rounds (site-packages hooks included in both);
`python -c "import torch"` is shown for scale, as what a command pays once it does need torch.
Then every command's and subcommand's `--help` runs in a fresh interpreter that reports whether
torch (or numpy) got imported: none may.

    python benchmarks/startup.py             # 10 rounds
    python benchmarks/startup.py --quick     # 2 rounds, 3 commands, no torch timing: smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, append_result, load_average, machine, median  # noqa: E402

TARGET_S = 1.0

# Runs one command line through charlm's Typer app in a fresh interpreter and reports which heavy
# modules it imported on the way.
PROBE = """
import json, sys
from charlm.cli import app
try:
    app(sys.argv[1:], prog_name="charlm")
except SystemExit:
    pass
print(json.dumps({m: m in sys.modules for m in ("torch", "numpy")}))
"""


def charlm_command() -> list[str]:
    script = Path(sys.executable).parent / "charlm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "charlm"]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=REPO)
    return time.perf_counter() - t


def command_names() -> list[list[str]]:
    """Every command and subcommand of the Typer app, as argument lists (["corpus", "list"], ...)."""
    import typer

    from charlm.cli import app

    def walk(group, prefix: list[str]) -> list[list[str]]:
        out = []
        for name, cmd in sorted(group.commands.items()):
            out.append(prefix + [name])
            if hasattr(cmd, "commands"):  # a group: its subcommands too
                out += walk(cmd, prefix + [name])
        return out

    return walk(typer.main.get_command(app), [])


def heavy_imports(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 rounds, for the smoke test")
    args = ap.parse_args()
    rounds = 2 if args.quick else args.rounds
    print(machine())
    cmd = charlm_command()
    shown = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
    print(f"`{shown} --help` vs `python -c pass`, {rounds} rounds alternating; {load_average()}")

    ours, ref, torch_import = [], [], []
    wall(cmd + ["--help"])                         # warm the file cache
    for r in range(rounds):
        ours.append(wall(cmd + ["--help"]))
        ref.append(wall([sys.executable, "-c", "pass"]))
        if r < 3 and not args.quick:
            torch_import.append(wall([sys.executable, "-c", "import torch"]))
    help_s, ref_s = median(ours), median(ref)
    torch_s = median(torch_import) if torch_import else float("nan")
    print(f"charlm --help: {help_s:.3f} s (median of {rounds}); reference python -c pass: {ref_s:.3f} s; "
          f"ratio {help_s / ref_s:.2f}x, {help_s - ref_s:.3f} s over a bare interpreter "
          f"(python -c 'import torch': {torch_s:.3f} s); target < {TARGET_S:.1f} s: "
          f"{'met' if help_s < TARGET_S else 'NOT met'}")

    commands = [[]] + command_names()[: 3 if args.quick else None]
    pulled = []
    for c in commands:
        mods = heavy_imports(c + ["--help"])
        if mods["torch"] or mods["numpy"]:
            pulled.append(" ".join(c) or "(no command)")
        print(f"  charlm {' '.join(c + ['--help']):34s} imports torch: {mods['torch']!s:5s} numpy: {mods['numpy']}")
    print(f"{len(commands)} command lines checked; importing torch or numpy for --help: "
          f"{', '.join(pulled) if pulled else 'none'}")
    append_result("startup", {"command": shown + " --help", "rounds": rounds, "seconds": help_s,
                              "reference_seconds": ref_s, "ratio": help_s / ref_s,
                              "import_torch_seconds": None if torch_s != torch_s else torch_s, "target_seconds": TARGET_S,
                              "met": help_s < TARGET_S and not pulled, "commands_checked": len(commands),
                              "commands_importing_torch": pulled, "quick": args.quick})


if __name__ == "__main__":
    main()
