"""charlm.threads: the CPUs a process may use (fake cgroup folders) and the `auto` chooser (a fake
clock), then --threads on every command that computes, and the notices a training run records."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from charlm.cli import app
from charlm.errors import ConfigError
from charlm.threads import ThreadChooser, cgroup_cpu_limit, parse_threads, plan_threads, usable_cpus

from helpers import TINY

runner = CliRunner()


def _write(folder, files: dict) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),                                   # v2, no limit
    ({"cpu.max": "200000 100000\n"}, 2),                                   # v2, 2 CPUs
    ({"cpu.max": "150000 100000\n"}, 2),                                   # 1.5 CPUs rounds up
    ({"cpu.max": "50000 100000\n"}, 1),                                    # half a CPU is one
    ({"cpu.max": "garbage\n"}, None),
    ({"cpu.max": "x y\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),       # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.cfs_quota_us": "100000\n", "cpu.cfs_period_us": "100000\n"}, 1),   # controller at the root
    ({"cpu/cpu.cfs_quota_us": "abc\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n"}, None),                          # period missing
    ({}, None),                                                             # no cgroup at all
])
def test_cgroup_cpu_limit(tmp_path, files, expected):
    _write(tmp_path, files)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_usable_cpus_is_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert usable_cpus(tmp_path / "missing") == 4
    _write(tmp_path, {"cpu.max": "200000 100000"})
    assert usable_cpus(tmp_path) == 2
    _write(tmp_path, {"cpu.max": "900000 100000"})
    assert usable_cpus(tmp_path) == 4            # a quota above the affinity does not add CPUs
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    assert usable_cpus(tmp_path / "missing") == 1   # at least one


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", None), ("2", 2), (3, 3), (" 1 ", 1)])
def test_parse_threads(value, expected):
    assert parse_threads(value) == expected


@pytest.mark.parametrize("value", ["0", 0, -1, "two", "1.5", True, 2.0, ""])
def test_parse_threads_refuses(value):
    with pytest.raises(ConfigError, match="--threads must be 'auto' or a whole number >= 1"):
        parse_threads(value)


class FakeClock:
    """Time moves only when the test says: each step costs what the current thread count costs."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drive(chooser: ThreadChooser, clock: FakeClock, cost, steps: int) -> list[tuple[int, str]]:
    """Run steps; cost(count, time) is the step time. Returns (step, message) for each notice."""
    notes = []
    for step in range(steps):
        message = chooser.tick()
        if message:
            notes.append((step, message))
        clock.t += cost(chooser.current, clock.t)
    return notes


def test_chooser_keeps_the_faster_count_and_rechecks_on_schedule():
    clock, calls = FakeClock(), []
    chooser = ThreadChooser((1, 2, 2), steps=5, recheck_steps=3, recheck_every=45.0, clock=clock,
                            set_threads=calls.append)
    assert chooser.candidates == (1, 2)                   # deduplicated
    # Idle machine: 2 threads take 0.1 s a step, 1 thread 0.2 s; the first step of each warms up.
    notes = drive(chooser, clock, lambda n, t: 0.1 if n == 2 else 0.2, 10)
    assert calls == [1, 2] and chooser.current == 2
    notes += drive(chooser, clock, lambda n, t: 0.1 if n == 2 else 0.2, 1)
    assert chooser.chosen == 2 and calls == [1, 2]
    assert len(notes) == 1 and "threads auto: 2" in notes[0][1]
    assert chooser.next_trial == pytest.approx(0.2 * 5 + 0.1 * 5 + 45.0)


def test_chooser_adapts_when_a_neighbour_starts_and_recovers_when_it_ends():
    clock, calls = FakeClock(), []
    chooser = ThreadChooser((1, 2), clock=clock, set_threads=calls.append)
    busy = lambda t: 60.0 <= t < 200.0                    # a neighbour from 60 s to 200 s
    cost = lambda n, t: (0.5 if busy(t) else 0.05) if n == 2 else 0.1
    notes = drive(chooser, clock, cost, 3000)
    messages = [m for _, m in notes]
    assert "threads auto: 2 " in messages[0]
    assert any("2 -> 1, the machine got busier" in m for m in messages)
    assert "1 -> 2, the machine got quieter" in messages[-1]
    assert len(messages) == 3                              # a recheck that changes nothing is silent
    # Rechecks: at most recheck_every apart (plus the trial itself), a handful of steps each.
    assert chooser.chosen == 2 and chooser.next_trial > clock.t - 45.0 - 6 * 0.5


def test_chooser_with_one_candidate_only_sets_it():
    clock, calls = FakeClock(), []
    chooser = ThreadChooser((3,), clock=clock, set_threads=calls.append)
    assert drive(chooser, clock, lambda n, t: 1.0, 200) == []
    assert calls == [3]


def test_plan_threads_pins_and_measures_only_in_time_budgeted_runs(monkeypatch):
    monkeypatch.setattr("charlm.threads.auto_candidates", lambda: (1, 2))
    chooser, note = plan_threads("2", time_budget=True)
    assert chooser.candidates == (2,) and note == "threads: 2 (--threads 2)"
    chooser, note = plan_threads("auto", time_budget=True)
    assert chooser.candidates == (1, 2) and "timing 1 and 2 threads" in note
    chooser, note = plan_threads("auto", time_budget=False)
    assert chooser.candidates == (2,) and "step budget" in note
    monkeypatch.setattr("charlm.threads.auto_candidates", lambda: (1,))
    assert plan_threads("auto", time_budget=True)[0].candidates == (1,)


def _notices(run_dir) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e["message"] for e in map(json.loads, lines) if e["type"] == "notice"]


def test_train_records_the_thread_notices(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr("charlm.threads.auto_candidates", lambda: (1, 2))
    # One step per candidate and 6 s: the first trial ends within the budget even when a loaded
    # machine spends seconds setting the run up.
    monkeypatch.setattr("charlm.threads.ThreadChooser.steps", 1)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(out), *TINY, "--max-time", "6",
                            "--eval-every", "1000"])
    assert r.exit_code == 0, r.output
    notices = _notices(out)
    assert "threads auto: timing 1 and 2 threads, again every 45 s" in notices
    assert any(n.startswith("threads auto: 1 (") or n.startswith("threads auto: 2 (") for n in notices)
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(tmp_path / "pinned"), *TINY,
                            "--max-steps", "3", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "threads: 1 (--threads 1)" in _notices(tmp_path / "pinned")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from helpers import make_text

    folder = tmp_path_factory.mktemp("threads")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    r = runner.invoke(app, ["train", str(corpus), "--out", str(folder / "run"), *TINY, "--max-steps", "3"])
    torch.set_num_threads(n)
    assert r.exit_code == 0, r.output
    return folder / "run", corpus


@pytest.mark.parametrize("value", ["1", "auto"])
def test_commands_accept_threads(tiny_run, value):
    run, corpus = tiny_run
    for args in (["evaluate", str(run), str(corpus)], ["sample", str(run), "--length", "20", "--seed", "1"],
                 ["score", str(run), "the cat sat"]):
        r = runner.invoke(app, [*args, "--threads", value])
        assert r.exit_code == 0, (args, r.output)


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_threads_are_one_line_errors(tiny_run, corpus_file, tmp_path, value):
    run, corpus = tiny_run
    for args in (["train", str(corpus_file), "--out", str(tmp_path / "x"), *TINY, "--max-steps", "1"],
                 ["evaluate", str(run), str(corpus)], ["sample", str(run)], ["score", str(run), "abc"],
                 ["inspect-context", str(run)]):
        r = runner.invoke(app, [*args, "--threads", value])
        assert r.exit_code in (1, 2), (args, r.output)
        assert "Traceback" not in r.output and "--threads must be" in r.output, r.output
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# The schedule follows the budget: fractions of a time budget, the step settings as bounds


def test_warmup_is_a_fraction_of_a_time_budget():
    from charlm.config import TrainConfig
    from charlm.training.step import WARMUP_FRACTION, lr_at

    cfg = TrainConfig(lr=1.0, min_lr_ratio=1.0, warmup_steps=50).validate()   # no decay: warm-up alone
    peak_at = WARMUP_FRACTION * 100.0
    assert lr_at(cfg, 3, peak_at / 2, None, 100.0) == pytest.approx(0.5)      # half-way by the clock
    assert lr_at(cfg, 3, peak_at, None, 100.0) == 1.0                          # the peak at 2% of the time
    assert lr_at(cfg, 50, 0.0, None, 100.0) == 1.0                             # or at warmup_steps, if sooner
    # A step budget (alone or beside max_time) keeps the step warm-up, bit for bit as before.
    for step in (0, 3, 10, 49):
        expected = 1.0 * min(1.0, (step + 1) / 51)
        assert lr_at(cfg, step, 50.0, 1000, None) == expected
        assert lr_at(cfg, step, 50.0, 1000, 100.0) == expected


def test_step_budget_lr_is_unchanged():
    """The exact formula of the step-budgeted schedule, as it was before time budgets changed."""
    import math

    from charlm.config import TrainConfig
    from charlm.training.step import lr_at

    cfg = TrainConfig().validate()
    for step in (0, 1, 25, 50, 300, 999):
        warm = min(1.0, (step + 1) / (cfg.warmup_steps + 1))
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / 1000))
        assert lr_at(cfg, step, 12.5, 1000, None) == cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def test_eval_cadence_follows_a_time_budget():
    from charlm.config import TrainConfig
    from charlm.training.step import EvalCadence

    cfg = TrainConfig(eval_every=100).validate()
    steps_only = EvalCadence.of(cfg, 1000, None, 0.0)
    assert [s for s in range(1, 1001) if steps_only.due(s, s * 10.0)] == list(range(100, 1001, 100))
    timed = EvalCadence.of(cfg, None, 60.0, 0.0)          # every 10 s, or every 100 steps if sooner
    slow = [s for s in range(1, 31) if timed.due(s, s * 2.0)]          # 2 s a step: by the clock
    assert slow == [5, 10, 15, 20, 25, 30]
    fast = EvalCadence.of(cfg, None, 60.0, 0.0)
    assert [s for s in range(1, 301) if fast.due(s, s * 0.01)] == [100, 200, 300]   # by eval_every
    resumed = EvalCadence.of(cfg, None, 60.0, 25.0)       # a resume goes on from the budget's clock
    assert resumed.next_time == 30.0
    assert resumed.evaluated(100) and not resumed.evaluated(7)
    assert resumed.due(7, 31.0) and resumed.evaluated(7)


def test_the_clock_and_the_step_count_give_one_evaluation_not_two_a_few_steps_apart():
    """A time-budgeted run evaluates by both schedules; where they meet a few steps apart (here
    the clock at step 99, the count at 100) the table gets one row, whichever came first."""
    from charlm.config import TrainConfig
    from charlm.training.step import EvalCadence

    cfg = TrainConfig(eval_every=100).validate()
    cadence = EvalCadence.of(cfg, None, 60.0, 0.0)        # every 10 s
    # 0.102 s a step: the clock passes 10 s at step 99, 20 s at 197, 30 s at 295, 40 s at 393;
    # the count's 100, 200 and 300 are within 5 steps of those, its 400 is not.
    due = [s for s in range(1, 401) if cadence.due(s, s * 0.102)]
    assert due == [99, 197, 295, 393, 400]
    every_step = EvalCadence.of(TrainConfig(eval_every=1).validate(), None, 60.0, 0.0)
    assert all(every_step.due(s, s * 3.0) for s in range(1, 50))   # --eval-every 1 is every step
