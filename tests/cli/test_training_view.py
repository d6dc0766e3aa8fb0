"""The live training view at 80 columns: synthetic events in, a recorded Rich console out."""

from __future__ import annotations

import io
import math

from rich.console import Console

from charlm.cli.training_view import Smoothed, TrainingView, fit_fields, sparkline
from charlm.events import ChunkTrained, Evaluated, RunStarted, Sampled

START = RunStarted(run_dir="runs/a-rather-long-run-name", device="cpu", model="lstm 2x512",
                   parameters=3_300_000, tokenizer="char", vocab_size=65, corpus="tinyshakespeare.txt",
                   train_tokens=1_000_000, val_tokens=110_000, batch_size=32, seq_len=128,
                   steps_per_epoch=244, max_steps=20_000, max_time=None, start_step=0, resumed=False)


def chunk(step: int, loss: float = 2.5, rate: float = 30_000.0, clipped: bool = False,
          skipped: bool = False) -> ChunkTrained:
    return ChunkTrained(step=step, epoch=0, loss=loss, grad_norm=12.345, clipped=clipped, lr=2.5e-3,
                        tokens=step * 4096, elapsed=step * 0.1, tokens_per_s=rate, skipped=skipped)


def rendered(view: TrainingView, width: int = 80) -> list[str]:
    out = Console(file=io.StringIO(), width=width, record=True)
    out.print(view._renderable())
    return out.export_text().splitlines()


def test_every_line_fits_80_columns_and_no_field_is_split():
    view = TrainingView(Console(file=io.StringIO(), width=80), plain=False)
    view(START)
    for step in range(1, 200):
        view(chunk(step, loss=4.2 - step / 100, clipped=step % 3 == 0, skipped=step == 50))
        if step % 50 == 0:
            view(Evaluated(step=step, train_loss=3.1, val_loss=3.2, val_bpc=4.6, elapsed=step / 10, best=True))
            view(Sampled(step, "word " * (step // 5) + "\nand a second line"))
    view.close()
    lines = rendered(view)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    step_lines = [line for line in lines if line.startswith("step ")]
    assert len(step_lines) == 1
    for field in ("step 199", "loss 2.2100", "grad norm 12.345", "skipped 1 so far"):
        assert field in step_lines[0]
    # A field dropped for room is dropped whole: no part of it is left at the end of the line.
    assert step_lines[0].rstrip().split("  ")[-1] in ("lr 2.50e-03", "skipped 1 so far", "clipped 33% of steps")


def test_narrow_terminal_drops_low_priority_fields_whole():
    view = TrainingView(Console(file=io.StringIO(), width=40), plain=False)
    for step in range(1, 30):
        view(chunk(step, clipped=True))
    line = view._step_line(view.last_chunk, 40).plain
    assert len(line) <= 40 and line.startswith("step 29  loss 2.5000")
    assert "lr" not in line and "clipped" not in line


def test_fit_fields_keeps_order_and_priority():
    fields = [(0, "aaaa", ""), (3, "bbbb", ""), (1, "cccc", "")]
    assert [t for t, _ in fit_fields(fields, 10)] == ["aaaa", "cccc"]
    assert [t for t, _ in fit_fields(fields, 16)] == ["aaaa", "bbbb", "cccc"]


def test_sample_panel_width_does_not_follow_the_text():
    view = TrainingView(Console(file=io.StringIO(), width=120), plain=False)
    widths = []
    for step, text in ((10, "ab"), (20, "a much longer sample of text " * 3)):
        view(Sampled(step, text))
        widths.append(max(len(line) for line in rendered(view, 120)))
    assert widths[0] == widths[1] == 80


def test_tokens_per_second_is_smoothed():
    view = TrainingView(Console(file=io.StringIO(), width=80), plain=True)
    rates = [36_900.0, 2_200.0] * 150   # report intervals (0.1 s apart) that swing as in the issue
    shown = []
    for step, rate in enumerate(rates, 1):
        view(chunk(step, rate=rate))
        shown.append(view.rate.value)
    late = shown[150:]
    assert max(late) - min(late) < 0.2 * (36_900 - 2_200)
    assert abs(sum(late) / len(late) - (36_900 + 2_200) / 2) < 5_000
    s = Smoothed(seconds=5.0)
    assert s.update(100.0, 0.0) == 100.0
    assert s.update(200.0, 5.0) == 100 + 100 * (1 - math.exp(-1))
    assert s.update(float("nan"), 1.0) == s.value


def test_sparkline_scale_is_a_long_window_not_the_frame():
    view = TrainingView(Console(file=io.StringIO(), width=200), plain=False)
    for step, loss in enumerate([4.0] + [2.0] * 60 + [2.1], 1):
        view(chunk(step, loss=loss))
    # The frame's values span 2.0 to 2.1: on the window's scale (2.0 to 4.0) that is a small step,
    # not the full bar that rescaling to the frame would draw.
    line = view._step_line(view.last_chunk, 200).plain
    assert "▁" * 40 in line and "█" not in line
    assert sparkline([2.0, 2.1], 2.0, 4.0) == "▁▁"
    assert sparkline([2.0, 2.1]) == "▁█"


def test_clipping_is_reported_as_a_share_of_steps():
    out = io.StringIO()
    view = TrainingView(Console(file=out, width=200), plain=True, plain_every=0)
    for step in range(1, 11):
        view(chunk(step, clipped=step <= 3))
    assert "clipped 30% of steps" in out.getvalue().splitlines()[-1]


def test_train_figure_is_named_the_same_in_the_table_and_the_log():
    out = io.StringIO()
    plain = TrainingView(Console(file=out, width=200), plain=True)
    plain(Evaluated(step=100, train_loss=2.5, val_loss=2.6, val_bpc=3.7, elapsed=9.0, best=True))
    assert "train 2.5000 (mean since last eval)" in out.getvalue()
    live = TrainingView(Console(file=io.StringIO(), width=80), plain=False)
    live(Evaluated(step=100, train_loss=2.5, val_loss=2.6, val_bpc=3.7, elapsed=9.0, best=True))
    text = " ".join(rendered(live))
    assert "train: mean chunk loss since the previous evaluation" in " ".join(text.split())
