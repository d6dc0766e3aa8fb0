"""Truncated BPTT: contiguous streams, shifted targets, state carried and detached."""

import numpy as np
import pytest
import torch

from charlm.config import ModelConfig
from charlm.corpus.dataset import StreamBatches
from charlm.errors import CorpusError
from charlm.model import CharRNN, detach_state


def test_streams_are_contiguous_and_targets_shifted():
    ids = np.arange(1000) % 251
    b = StreamBatches(ids, batch_size=4, seq_len=10)
    L = 1000 // 4
    assert b.stream_length == L and b.steps_per_epoch == (L - 1) // 10
    xs, ys = zip(*(b.batch(i) for i in range(b.steps_per_epoch)))
    x = np.concatenate(xs, axis=1)   # (B, steps*k): each row is one stream read front to back
    y = np.concatenate(ys, axis=1)
    for s in range(4):
        assert x[s].tolist() == ids[s * L: s * L + x.shape[1]].tolist()
        assert y[s].tolist() == ids[s * L + 1: s * L + 1 + y.shape[1]].tolist()
    # the target of the last position of chunk i is the first input of chunk i+1
    assert (b.batch(0)[1][:, -1] == b.batch(1)[0][:, 0]).all()


def test_ranks_take_disjoint_slices_of_the_streams():
    ids = np.arange(800)
    r0 = StreamBatches(ids, batch_size=2, seq_len=5, rank=0, world_size=2)
    r1 = StreamBatches(ids, batch_size=2, seq_len=5, rank=1, world_size=2)
    assert r0.batch(0)[0][:, 0].tolist() == [0, 200]
    assert r1.batch(0)[0][:, 0].tolist() == [400, 600]


def test_too_short_for_one_chunk_is_a_clear_error():
    with pytest.raises(CorpusError, match="--seq-len"):
        StreamBatches(np.arange(50), batch_size=4, seq_len=16)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_is_carried_but_the_graph_stops_at_the_chunk_border(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=11, embedding_size=4, hidden_size=6).validate())
    x1 = torch.randint(0, 11, (3, 5))
    x2 = torch.randint(0, 11, (3, 5))
    _, state = model(x1)
    state = detach_state(state)
    assert all(s.grad_fn is None and not s.requires_grad for s in state)
    logits_carried, _ = model(x2, state)
    logits_fresh, _ = model(x2, model.init_state(3))
    assert not torch.allclose(logits_carried, logits_fresh)  # the forward pass remembers chunk 1
    # The gradient of chunk 2's loss cannot reach chunk 1: its embedding gets nothing from it.
    emb1 = model.embed(x1).detach().requires_grad_(True)
    out1, st = model.rnn(emb1)
    st = st if isinstance(st, tuple) else (st,)
    st = detach_state(st)
    out2, _ = model(x2, st)
    out2.sum().backward()
    assert emb1.grad is None


def test_training_carries_the_true_history_across_chunks(tmp_path, corpus_file):
    """With a negligible learning rate, the state saved after n steps equals running the model
    over each stream's first n*k tokens in one go: carried, never reset inside an epoch."""
    from charlm.checkpoint import model_from_checkpoint, read_checkpoint
    from charlm.config import TrainConfig
    from charlm.training import train

    cfg = TrainConfig(corpus=str(corpus_file), out=str(tmp_path / "run"), batch_size=3, seq_len=8,
                      lr=1e-12, warmup_steps=0, max_steps=5, eval_every=100, sample_length=0,
                      precision="fp32")   # compared below with an fp32 forward pass, to 1e-5
    run = train(cfg, ModelConfig(cell="lstm", embedding_size=4, hidden_size=6))
    ckpt = read_checkpoint(run / "last.pt")
    model, _ = model_from_checkpoint(ckpt)
    ids = np.asarray(np.memmap(run / "data" / "train.bin", dtype=np.uint8, mode="r"))
    b = StreamBatches(ids, 3, 8)
    x = torch.from_numpy(np.concatenate([b.batch(i)[0] for i in range(5)], axis=1))
    with torch.no_grad():
        _, state = model(x)
    saved = ckpt.hidden_state[0]
    for mine, theirs in zip(state, saved):
        assert torch.allclose(mine, theirs, atol=1e-5)
