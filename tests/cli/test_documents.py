"""Documents a command writes to a file the user names (--json FILE, --csv FILE): never left empty
or half-written by a failure such as a full disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import REPO

# A child that cannot write more than 100 bytes to any file (RLIMIT_FSIZE, SIGXFSZ ignored, so a
# larger write fails with EFBIG as a full disk fails with ENOSPC), then runs charlm.
LIMITED = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100)); "
           "from charlm.cli import main; sys.argv = ['charlm'] + sys.argv[1:]; main()")


@pytest.mark.parametrize("existing", [False, True])
def test_json_file_on_a_full_disk_leaves_no_empty_file(tiny_run, tmp_path, existing):
    """`info RUN --json FILE` when the disk fills (was: a 0-byte FILE left, or the old one emptied):
    one line, and FILE is as it was, absent or unchanged, with no temporary file beside it."""
    out = tmp_path / "info.json"
    if existing:
        out.write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", LIMITED, "info", str(tiny_run), "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot write --json") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["info.json"] if existing else [])
    if existing:
        assert out.read_text() == "{}\n"


def test_json_to_a_device_or_through_a_link_still_works(tiny_run, tmp_path):
    """The temporary-file route is for regular files: /dev/stdout is written as it is, and a link
    names the file that is replaced (the link stays a link)."""
    from typer.testing import CliRunner

    from charlm.cli import app

    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    result = CliRunner().invoke(app, ["info", str(tiny_run), "--json", str(tmp_path / "link.json")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.json").is_symlink() and target.read_text().startswith("{")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "charlm", "info", str(tiny_run), "--json", "/dev/stdout"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.lstrip().startswith("{"), proc.stderr
