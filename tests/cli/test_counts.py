"""Every count a user can type (issue 23): a huge value is refused with one line before memory is
allocated, or, where the count only bounds a loop over something small (a beam wider than the
vocabulary, more guesses than there are tokens), clamped so the command still ends at once. The
options that stream (`sample --length`, `--num-samples`) are bounded in memory by design and are
tested in tests/using/test_sampling.py.

Was: `inspect-gradients RUN --samples 10**10` a MemoryError traceback, `--samples 100000 --lags
1000` past 12 GB, `train --sample-length 10**10` a run stalled generating its closing sample and
growing samples.txt by gigabytes, and a sweep or truncation-table point with a huge size refused
only when its turn came."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from charlm.cli import app
from helpers import TINY, make_text

runner = CliRunner()
# Past any machine's memory: a size that fits is allowed (the estimate compares with this machine's
# memory), and a test must not allocate gigabytes to find out.
HUGE = st.integers(min_value=12, max_value=40).map(lambda k: 10 ** k)
SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

REFUSED = {   # command (with {run}, {corpus}, {out} filled in) -> the options a huge value must be refused for
    "inspect-gradients {run}": ["--lags", "--samples", "--warmup"],
    "inspect-gradients --models gru": ["--hidden-size", "--layers", "--embedding-size", "--lags", "--samples"],
    "inspect-context {run}": ["--targets", "--max-context", "--grad-lags"],
    "train {corpus} --out {out} --max-steps 1 " + " ".join(TINY):
        ["--hidden-size", "--embedding-size", "--layers", "--batch-size", "--seq-len", "--sample-length",
         "--eval-sample-length"],
    "truncation-table --workdir {out} --models gru --distances 5 --chunks 8 --seeds 0":
        ["--hidden-size", "--batch-size", "--keys", "--distances", "--chunks"],
}
CLAMPED = {
    "sample {run} --length 2": ["--beam", "--top-k"],
    "score {run} hello": ["--top", "--rows"],
}


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_run):
    corpus = tmp_path_factory.mktemp("counts") / "good.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    return {"run": str(tiny_run), "corpus": str(corpus)}


def _invoke(template: str, option: str, value: int, places: dict, out) -> tuple:
    args = template.format(out=out, **places).split() + [option, str(value)]
    t0 = time.perf_counter()
    result = runner.invoke(app, args)
    return result, time.perf_counter() - t0


@pytest.mark.parametrize("template, option", [(t, o) for t, opts in REFUSED.items() for o in opts])
@SETTINGS
@given(value=HUGE)
def test_a_huge_count_is_refused_in_one_line(template, option, value, places, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "o"
    result, seconds = _invoke(template, option, value, places, out)
    assert result.exit_code in (1, 2), (result.exit_code, result.output)
    assert "Traceback" not in result.output and not isinstance(result.exception, MemoryError)
    if result.exit_code == 1:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert seconds < 30, f"{option} {value} took {seconds:.0f} s to be refused"


@pytest.mark.parametrize("template, option", [(t, o) for t, opts in CLAMPED.items() for o in opts])
@SETTINGS
@given(value=HUGE)
def test_a_huge_count_that_bounds_a_small_loop_is_clamped(template, option, value, places, tmp_path_factory):
    result, seconds = _invoke(template, option, value, places, tmp_path_factory.mktemp("out") / "o")
    assert result.exit_code in (0, 1), (result.exit_code, result.output)
    assert "Traceback" not in result.output and seconds < 30


def test_a_sweep_axis_of_huge_sizes_is_refused_before_any_point_trains(places, tmp_path):
    for axis in ("seq_len", "batch_size", "hidden_size", "embedding_size", "layers"):
        out = tmp_path / axis
        result = runner.invoke(app, ["sweep", places["corpus"], "--grid", f"{axis}=8,{10**12}", "--out", str(out),
                                     "--max-steps", "1", *TINY])
        assert result.exit_code == 1 and "grid point" in result.stderr, (axis, result.output)
        assert not out.exists()
