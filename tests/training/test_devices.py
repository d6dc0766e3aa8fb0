"""The GPU path, from the CPU side: device selection, precision validation, data on the device,
checkpoint portability between devices, and the fp16 loss-scaling step (run with CPU autocast).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm import devices
from charlm.checkpoint import load_checkpoint, load_model, save_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.corpus.dataset import StreamBatches
from charlm.errors import DeviceError
from charlm.metrics import read_metrics
from charlm.training import resolve_options, train
from helpers import make_text, tiny_config

runner = CliRunner()
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU messages")
MODEL = ModelConfig(cell="lstm", hidden_size=16, embedding_size=8)


def tiny(corpus, out, **kw) -> TrainConfig:
    return tiny_config(corpus, out, **{**dict(seq_len=8, max_steps=12, eval_every=6, min_lr_ratio=1.0,
                                              precision="fp32", seed=2), **kw})


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(make_text(1500, seed=4), encoding="utf-8")
    return path


# --- device selection and precision validation ---------------------------------------------

@needs_no_cuda
def test_device_cuda_without_gpu_is_one_line_exit_1(corpus, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(corpus), "--device", "cuda", "--out", str(out),
                                 "--max-steps", "2"], env={"NO_COLOR": "1", "COLUMNS": "300"})
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--device" in lines[0]
    assert not out.exists()


@needs_no_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_the_cpu_lacks_is_refused_before_anything_is_written(corpus, tmp_path, monkeypatch,
                                                                              precision):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(corpus), "--precision", precision, "--out", str(out),
                                 "--max-steps", "2"], env={"NO_COLOR": "1", "COLUMNS": "300"})
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1
    expected = "needs a CUDA GPU" if precision == "fp16" else "needs native bf16 instructions"
    assert f"--precision {precision} " in lines[0] and expected in lines[0] and "fp32" in lines[0]
    assert not out.exists()


def test_unknown_precision_is_a_usage_error(corpus, tmp_path):
    result = runner.invoke(app, ["train", str(corpus), "--precision", "fp8", "--out",
                                 str(tmp_path / "r")], env={"NO_COLOR": "1", "COLUMNS": "300"})
    assert result.exit_code == 1
    assert "--precision must be one of auto, fp32, fp16, bf16" in result.output


def test_check_precision(monkeypatch):
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert devices.check_precision(cpu, "fp32") is None
    with pytest.raises(DeviceError, match="needs a CUDA GPU"):
        devices.check_precision(cpu, "fp16")
    for p in ("fp16", "bf16"):
        with pytest.raises(DeviceError, match="needs a CUDA GPU"):
            devices.check_precision(mps, p)
    with pytest.raises(DeviceError, match="unknown precision"):
        devices.check_precision(cpu, "fp64")
    # bf16 on a CPU: only with native bf16 instructions, where oneDNN does not emulate them.
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.check_precision(cpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(DeviceError, match="needs native bf16 instructions"):
        devices.check_precision(cpu, "bf16")
    assert devices.grad_scaler(cpu, None) is None
    assert devices.grad_scaler(cpu, torch.bfloat16) is None   # bf16 has fp32's range: no scaling


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.resolve_precision(torch.device("cpu"), "auto") == ("bf16" if native else "fp32")
    assert devices.check_precision(torch.device("cpu"), "auto") == (torch.bfloat16 if native else None)
    for other in ("cuda", "mps"):   # mixed precision there is asked for by name
        assert devices.resolve_precision(torch.device(other), "auto") == "fp32"
    for name in ("fp32", "fp16", "bf16"):
        assert devices.resolve_precision(torch.device("cpu"), name) == name


@pytest.mark.skipif(not devices.cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_cpu_bf16_run_learns_records_its_precision_and_resumes_exactly(corpus, tmp_path):
    """The default on such a CPU: bf16 autocast trains, the checkpoint says bf16, the weights and
    the carried state stay fp32, and a resumed run equals the uninterrupted one bit for bit."""
    whole = train(tiny(corpus, tmp_path / "whole", precision="auto"), MODEL)
    train(tiny(corpus, tmp_path / "part", precision="auto", max_steps=6), MODEL)
    model_config, config = resolve_options({"out": str(tmp_path / "part"), "resume": True, "max_steps": 12})
    part = train(config, model_config)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(part / "last.pt")
    assert a["precision"] == b["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in a["model"].values())
    assert all(t.dtype == torch.float32 for h in a["hidden_state"] for t in h)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    chunks = [r["loss"] for r in read_metrics(whole / "metrics.jsonl") if r["type"] == "chunk"]
    assert sum(chunks[-3:]) < sum(chunks[:3])


def test_auto_device_and_description():
    dev = devices.resolve_device("auto")
    assert dev.type in ("cuda", "mps", "cpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.describe_device(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(DeviceError, match="unknown device"):
        devices.resolve_device("tpu")


# --- data on the device ----------------------------------------------------------------------

def test_device_batches_resident_matches_host_chunks():
    ids = np.arange(4 * 50, dtype=np.uint16) % 37
    batches = StreamBatches(ids, batch_size=2, seq_len=7, rank=1, world_size=2)
    host = devices.DeviceBatches(batches, torch.device("cpu"))
    assert host.mode == "host"
    resident = devices.DeviceBatches(batches, torch.device("cpu"), mode="resident")
    assert resident.ids.dtype == torch.int32 and resident.ids.shape == (2, 50)
    for i in range(batches.steps_per_epoch):
        (xh, yh), (xr, yr) = host.batch(i), resident.batch(i)
        assert xr.dtype == yr.dtype == torch.int64 and xr.shape == (2, 7)
        assert torch.equal(xh, xr) and torch.equal(yh, yr)
        assert torch.equal(xr[:, 1:], yr[:, :-1])   # targets are the inputs one step ahead


# --- RNG states across devices ---------------------------------------------------------------

def test_rng_state_tolerates_a_missing_or_foreign_cuda_entry():
    cpu = torch.device("cpu")
    torch.manual_seed(11)
    state = devices.rng_state(cpu)
    assert set(state) == {"torch"}
    expected = torch.rand(3)
    # A GPU-written state on a CPU: the 'cuda' entry is ignored.
    devices.set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, cpu)
    assert torch.equal(torch.rand(3), expected)
    # A CPU-written state for a GPU run: no 'cuda' entry, the CPU generator is still restored
    # (and nothing touches CUDA, so this runs on a machine without one).
    devices.set_rng_state(state, torch.device("cuda"))
    assert torch.equal(torch.rand(3), expected)


# --- checkpoints across devices ----------------------------------------------------------------

def test_load_model_maps_to_the_requested_device(corpus, tmp_path):
    run = train(tiny(corpus, tmp_path / "run", max_steps=3), MODEL)
    model, tok, ckpt = load_model(run / "last.pt", "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    model, _, _ = load_model(run / "last.pt", torch.device("meta"))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert not model.training


def _as_if_written_on_a_gpu(src, dst):
    """The parts of a checkpoint that differ when a CUDA fp16 run writes it."""
    ck = load_checkpoint(src)
    ck["rng"] = [{**r, "cuda": torch.zeros(16, dtype=torch.uint8)} for r in ck["rng"]]
    ck["device"] = "cuda:0"
    ck["precision"] = "fp16"
    ck["train_config"] = {**ck["train_config"], "device": "cuda", "precision": "fp16"}
    ck["grad_scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                         "growth_interval": 2000, "_growth_tracker": 7}
    ck.pop("format"), ck.pop("format_version")
    save_checkpoint(ck, dst)


def test_gpu_fp16_checkpoint_resumes_and_samples_on_cpu(corpus, tmp_path):
    """A checkpoint from a CUDA fp16 run continues on a CPU-only machine, exactly as the same
    checkpoint written on the CPU would: the cuda RNG entry and the loss scale are ignored, the
    run goes on in fp32 and says so."""
    import shutil

    cpu_run = train(tiny(corpus, tmp_path / "cpu", max_steps=6), MODEL)
    gpu_run = tmp_path / "gpu"
    shutil.copytree(cpu_run, gpu_run)
    _as_if_written_on_a_gpu(cpu_run / "last.pt", gpu_run / "last.pt")

    for run in (cpu_run, gpu_run):
        # As `charlm train --out RUN --resume --max-steps 12` resolves it: the saved --device cuda
        # is the old machine's and is not reused.
        model_config, config = resolve_options({"out": str(run), "resume": True, "max_steps": 12})
        assert config.device == "auto" and config.precision == ("fp16" if run == gpu_run else "fp32")
        train(config, model_config)

    a, b = load_checkpoint(cpu_run / "last.pt"), load_checkpoint(gpu_run / "last.pt")
    assert b["progress"]["step"] == 12 and b["precision"] == "fp32" and b["grad_scaler"] is None
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    notices = [r["message"] for r in read_metrics(gpu_run / "metrics.jsonl") if r["type"] == "notice"]
    assert any("continuing in fp32" in m for m in notices)

    import charlm

    lm = charlm.load(gpu_run, device="cpu")
    assert len(lm.sample(length=20, seed=1)) > 0


# --- the fp16 step: GradScaler beside the fused optimizer's found_inf --------------------------

def test_fp16_overflow_skips_the_step_without_counting_as_divergence(corpus, tmp_path, monkeypatch):
    """The training loop's fp16 path, run on the CPU with CPU autocast (the CUDA-only checks
    patched out; a GRU, as oneDNN has no fp16 LSTM). A huge initial loss scale overflows the fp16 gradients of the first steps: the
    update is skipped on the device (found_inf), the scaler backs off, no rollback happens, and
    training goes on and learns."""
    import importlib

    train_module = importlib.import_module("charlm.training.setup")  # (charlm.train is also a function)

    made = []

    def scaler(device, dtype):
        s = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60, backoff_factor=2.0 ** -25)
        made.append(s)
        return s

    monkeypatch.setattr(train_module, "check_precision", lambda device, precision: torch.float16)
    monkeypatch.setattr(train_module, "grad_scaler", scaler)
    run = train(tiny(corpus, tmp_path / "fp16", max_steps=30, eval_every=10, lr=1e-2,
                     precision="fp16"), ModelConfig(cell="gru", hidden_size=16, embedding_size=8))

    chunks = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]
    notices = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "notice"]
    assert chunks[0]["skipped"] and not chunks[-1]["skipped"]
    assert sum(c["skipped"] for c in chunks) >= 1
    assert not any("rolled back" in n["message"] for n in notices)
    assert made[0].get_scale() < 2.0 ** 60
    ck = load_checkpoint(run / "last.pt")
    assert ck["grad_scaler"]["scale"] == made[0].get_scale()
    assert ck["precision"] == "fp16"
    trained = [c["loss"] for c in chunks if not c["skipped"]]
    assert sum(trained[-5:]) / 5 < sum(trained[:5]) / 5
    # The optimizer counted only the steps it took.
    steps = {float(s["step"]) for s in ck["optimizer"]["state"].values()}
    assert steps == {float(30 - sum(c["skipped"] for c in chunks))}
