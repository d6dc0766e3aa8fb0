"""--help at 80 columns: train's options in groups (from the config dataclasses' metadata), one
metavar style, visible defaults, the same --device wording in every command."""

from __future__ import annotations

from dataclasses import fields

import pytest
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import OPTION_GROUPS, ModelConfig, TrainConfig

runner = CliRunner()


def help_of(*command: str) -> str:
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    return r.stdout


def flat(text: str) -> str:
    """The help's words in one line, panel borders left out."""
    return " ".join(text.replace("│", " ").split())


def test_train_help_is_grouped_and_fits_80_columns():
    text = help_of("train")
    assert max(len(line) for line in text.splitlines()) <= 80
    panels = [line.split("─ ")[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert panels == ["Arguments", "Options", *OPTION_GROUPS]
    assert "Peak learning rate (AdamW)" in flat(text) and "[default: \\n]" in flat(text)
    # Only typer's own --help still says <bool>: no flag of ours shows a value it does not take.
    assert [line for line in text.splitlines() if "<bool>" in line] == [
        line for line in text.splitlines() if "--help" in line]


def test_every_train_field_names_a_group():
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if (cls, f.name) != (ModelConfig, "vocab_size"):
                assert f.metadata.get("group") in OPTION_GROUPS, f.name


@pytest.mark.parametrize("command", [("sample",), ("evaluate",), ("score",), ("inspect-context",)])
def test_device_is_described_in_the_same_words_everywhere(command):
    words = "'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda' or 'mps'."
    assert words in flat(help_of("train")) and words in flat(help_of(*command))


def test_sample_seed_says_what_no_seed_does():
    assert "Without one, each run draws a new random seed" in flat(help_of("sample"))
