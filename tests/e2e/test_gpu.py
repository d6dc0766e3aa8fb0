"""The CUDA path, on a machine with a GPU (benchmarks/gpu_check.sh runs these; skipped elsewhere).

Mixed precision trains and learns, bf16 either really runs or is refused with a clear message,
checkpoints move between GPU and CPU in both directions, the ids live on the device, and the
loop does not synchronise with the host once per step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from charlm import devices
from charlm.checkpoint import load_checkpoint, load_model
from charlm.config import ModelConfig, TrainConfig
from charlm.corpus.dataset import StreamBatches
from charlm.errors import DeviceError
from charlm.metrics import read_metrics
from charlm.training import resolve_options, train
from helpers import make_text

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MODEL = ModelConfig(cell="lstm", hidden_size=64, embedding_size=16, layers=2)


def config(corpus, out, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), out=str(out), batch_size=8, seq_len=32, max_steps=64,
                eval_every=32, warmup_steps=0, min_lr_ratio=1.0, device="cuda", sample_length=0,
                seed=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(make_text(40000, seed=4), encoding="utf-8")
    return path


def chunks(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trains_and_learns_on_cuda(corpus, tmp_path, precision):
    run = train(config(corpus, tmp_path / precision, precision=precision), MODEL)
    losses = [c["loss"] for c in chunks(run) if not c["skipped"]]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.3
    ck = load_checkpoint(run / "last.pt")
    assert ck["device"].startswith("cuda") and ck["precision"] == precision
    assert "cuda" in ck["rng"][0]
    assert (ck["grad_scaler"] is not None) == (precision == "fp16")
    assert all(v.device.type == "cpu" for v in ck["model"].values())
    start = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "start"][0]
    assert start["device"].startswith("cuda:") and "cuDNN" in start["device"]


def test_bf16_runs_in_bf16_or_is_refused(corpus, tmp_path):
    ok, why = devices.bf16_rnn_support(torch.device("cuda"))
    if ok:
        run = train(config(corpus, tmp_path / "bf16", precision="bf16", max_steps=16), MODEL)
        assert load_checkpoint(run / "last.pt")["precision"] == "bf16"
    else:
        with pytest.raises(DeviceError, match="--precision bf16 is not available"):
            train(config(corpus, tmp_path / "bf16", precision="bf16", max_steps=16), MODEL)
        assert why


def test_gpu_checkpoint_samples_and_resumes_on_cpu(corpus, tmp_path):
    run = train(config(corpus, tmp_path / "g", precision="fp16", max_steps=16, eval_every=8), MODEL)
    model, tok, _ = load_model(run / "last.pt", "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    model_config, cfg = resolve_options({"out": str(run), "resume": True, "max_steps": 24,
                                         "device": "cpu"})
    train(cfg, model_config)
    ck = load_checkpoint(run / "last.pt")
    assert ck["progress"]["step"] == 24 and ck["device"] == "cpu" and ck["precision"] == "fp32"


def test_cpu_checkpoint_resumes_on_gpu(corpus, tmp_path):
    run = train(config(corpus, tmp_path / "c", device="cpu", max_steps=8, eval_every=4), MODEL)
    model_config, cfg = resolve_options({"out": str(run), "resume": True, "max_steps": 16,
                                         "device": "cuda"})
    train(cfg, model_config)
    ck = load_checkpoint(run / "last.pt")
    assert ck["progress"]["step"] == 16 and ck["device"].startswith("cuda")


@pytest.mark.parametrize("mode", ["resident", "pinned"])
def test_device_batches_on_cuda(mode):
    ids = np.arange(8 * 300, dtype=np.uint16) % 91
    batches = StreamBatches(ids, batch_size=4, seq_len=16, rank=0, world_size=2)
    cuda = devices.DeviceBatches(batches, torch.device("cuda"), mode=mode)
    host = devices.DeviceBatches(batches, torch.device("cpu"))
    for i in range(batches.steps_per_epoch):
        (xc, yc), (xh, yh) = cuda.batch(i), host.batch(i)
        assert xc.is_cuda and xc.dtype == torch.int64
        assert torch.equal(xc.cpu(), xh) and torch.equal(yc.cpu(), yh)
    assert devices.DeviceBatches(batches, torch.device("cuda")).mode == "resident"


def test_no_host_sync_per_step(corpus, tmp_path):
    """The extra steps of a longer run add only the read-backs at report intervals (one per 16
    steps), not one synchronisation per step."""

    def syncs(steps, name):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train(config(corpus, tmp_path / name, max_steps=steps, eval_every=1000,
                             precision="fp16"), MODEL)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    short, long = syncs(32, "short"), syncs(96, "long")
    assert long - short <= (96 - 32) // 16 + 2, (short, long)


def test_flatten_parameters_keeps_weights_contiguous(corpus, tmp_path):
    run = train(config(corpus, tmp_path / "f", max_steps=4), MODEL)
    model, _, _ = load_model(run / "last.pt", "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "RNN module weights are not part of single contiguous chunk"
        model(torch.zeros(2, 5, dtype=torch.long, device="cuda"))
