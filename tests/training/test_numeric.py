"""Numeric faults: a non-finite loss or gradient is caught at once, the step is skipped on the device
(fused AdamW's found_inf), a few in a row roll back to last.pt with half the learning rate, and a
run that keeps diverging stops with a clear message. It is all in metrics.jsonl, and no
checkpoint with non-finite weights is ever written over a good one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import NumericError
from charlm.metrics import read_metrics
from charlm.training import train
from helpers import make_text

runner = CliRunner()


MODEL = ModelConfig(cell="rnn", hidden_size=8, embedding_size=8)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(make_text(2000), encoding="utf-8")
    return path


def config(corpus, out, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), out=str(out), batch_size=4, seq_len=8, max_steps=20,
                eval_every=4, warmup_steps=0, device="cpu", sample_length=0, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def stop_after(n):
    calls = {"n": -1}

    def hook():
        calls["n"] += 1
        return calls["n"] >= n
    return hook


def inject_nan_loss(monkeypatch, bad_calls: set[int] | None = None, from_call: int | None = None):
    """Make the training loss NaN on the given calls (1-based; evaluation is not counted): the
    loss keeps its graph, so the gradients are NaN too, as in a real fault."""
    real = F.cross_entropy
    calls = {"n": 0}

    def faulty(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_inference_mode_enabled() or not loss.requires_grad:
            return loss
        calls["n"] += 1
        n = calls["n"]
        if (bad_calls and n in bad_calls) or (from_call is not None and n >= from_call):
            return loss * float("nan")
        return loss
    monkeypatch.setattr(F, "cross_entropy", faulty)
    return calls


def chunks(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]


def notices(run):
    return [r["message"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "notice"]


def all_finite(path) -> bool:
    ck = load_checkpoint(path)
    return all(bool(torch.isfinite(v).all()) for v in ck["model"].values())


def test_a_bad_step_is_skipped_exactly(tmp_path, corpus, monkeypatch):
    """Two NaN steps (fewer than max_bad_steps) change nothing: weights, Adam moments and step
    counters, and the carried state, are those of the last good step."""
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    train(config(corpus, clean), MODEL, should_stop=stop_after(4))
    inject_nan_loss(monkeypatch, bad_calls={5, 6})
    train(config(corpus, faulty), MODEL, should_stop=stop_after(6))
    recs = chunks(faulty)
    assert [r["skipped"] for r in recs] == [False] * 4 + [True, True]
    assert all(r["loss"] is None for r in recs[4:])  # recorded as null (JSON has no NaN)
    a, b = load_checkpoint(clean / "last.pt"), load_checkpoint(faulty / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"optimizer {k} moved on a skipped step"
    for ha, hb in zip(a["hidden_state"][0], b["hidden_state"][0]):
        assert torch.equal(ha, hb)
    assert not any("rolled back" in m for m in notices(faulty))


def test_bad_steps_in_a_row_roll_back_with_half_the_lr(tmp_path, corpus, monkeypatch):
    run = tmp_path / "run"
    inject_nan_loss(monkeypatch, bad_calls={6, 7, 8})   # steps 6-8; last.pt is from step 4
    train(config(corpus, run, max_bad_steps=3), MODEL)
    msgs = notices(run)
    assert any("3 non-finite steps in a row: rolled back to step 4" in m and "scaled by 0.5" in m
               for m in msgs), msgs
    recs = chunks(run)
    steps = [r["step"] for r in recs]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8] + list(range(5, 21))  # steps 5.. replayed after the rollback
    first5, again5 = recs[4], recs[8]
    assert again5["step"] == 5 and math.isclose(again5["lr"], first5["lr"] * 0.5)
    assert load_checkpoint(run / "last.pt")["progress"]["lr_scale"] == 0.5
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 20
    for name in ("last.pt", "best.pt"):
        assert all_finite(run / name)


def test_persistent_divergence_stops_with_a_clear_message(tmp_path, corpus, monkeypatch):
    run = tmp_path / "run"
    inject_nan_loss(monkeypatch, from_call=6)
    with pytest.raises(NumericError, match="even after 3 rollbacks"):
        train(config(corpus, run), MODEL)
    msgs = notices(run)
    assert sum("rolled back to step 4" in m for m in msgs) == 3
    assert any("training diverged" in m for m in msgs)
    ck = load_checkpoint(run / "last.pt")
    assert ck["progress"]["step"] == 4 and all_finite(run / "last.pt")


def test_nan_weights_are_never_saved(tmp_path, corpus, monkeypatch):
    """Weights turned NaN by a faulty update: the evaluation's save refuses them, last.pt keeps
    the good step, and the rollback finds it there."""
    run = tmp_path / "run"
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def poisoning_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:          # after step 5, say a bit flip in the optimizer
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    written = []

    def on_event(e):  # every checkpoint, checked the moment it is written
        if type(e).__name__ == "CheckpointSaved":
            written.append((e.step, all_finite(e.path)))
    # max_bad_steps 5: the evaluation at step 8 comes while the weights are NaN.
    train(config(corpus, run, max_bad_steps=5, max_steps=12), MODEL, on_event=on_event)
    msgs = notices(run)
    assert any("not saving last.pt: the weights are not finite" in m for m in msgs), msgs
    assert any("rolled back to step 4" in m for m in msgs), msgs
    assert written and all(ok for _, ok in written), written
    for path in run.glob("*.pt"):
        assert all_finite(path), path


def test_huge_learning_rate_on_a_tanh_rnn(tmp_path, corpus):
    """The real thing, through the CLI: --lr 1e30 with no clipping diverges at once."""
    run = tmp_path / "run"
    r = runner.invoke(app, ["--quiet", "train", str(corpus), "--out", str(run), "--model", "rnn",
                            "--hidden-size", "8", "--embedding-size", "8", "--batch-size", "4",
                            "--seq-len", "8", "--max-steps", "30", "--eval-every", "4",
                            "--warmup-steps", "0", "--lr", "1e30", "--grad-clip", "0",
                            "--device", "cpu", "--sample-length", "0"])
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    assert "training diverged" in err and "lower --lr" in err
    recs = chunks(run)
    assert any(rec["skipped"] for rec in recs)
    assert sum("rolled back" in m for m in notices(run)) == 3
    for path in run.glob("*.pt"):
        assert all_finite(path), path


def test_three_rollbacks_to_the_same_poisoned_checkpoint_blame_the_checkpoint(tmp_path, corpus):
    """A last.pt with finite but enormous head weights (its logits overflow at the first step after
    it, whatever the learning rate; was: "lower --lr", which cannot help): the message names the
    checkpoint and does not advise a lower learning rate."""
    run = tmp_path / "run"
    train(config(corpus, run), MODEL, should_stop=stop_after(4))
    ck = load_checkpoint(run / "last.pt")
    ck["model"]["head.weight"] = torch.full_like(ck["model"]["head.weight"], 3e38)   # finite, poisonous
    torch.save(ck, run / "last.pt")
    with pytest.raises(NumericError, match="even after 3 rollbacks") as caught:
        train(config(corpus, run, resume=True), None)
    message = str(caught.value)
    assert "each time at the first step after the checkpoint of step 4" in message
    assert "a lower --lr cannot mend" in message and "lower --lr (now" not in message
    assert len(message.splitlines()) == 1


def test_divergence_that_a_lower_lr_could_mend_still_says_so(tmp_path, corpus, monkeypatch):
    """Replays whose first step after the checkpoint is good and fail later: the learning rate may
    be the cause, and the message keeps its advice."""
    run = tmp_path / "run"
    real = F.cross_entropy
    calls = {"n": 0, "since": 0}

    def faulty(*args, **kwargs):       # after step 4, every step but the first of each replay is NaN
        loss = real(*args, **kwargs)
        if torch.is_inference_mode_enabled() or not loss.requires_grad:
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] >= 6 and calls["n"] not in (9, 12, 15) else loss
    monkeypatch.setattr(F, "cross_entropy", faulty)
    with pytest.raises(NumericError, match=r"lower --lr \(now"):
        train(config(corpus, run), MODEL)
