"""The transformer: causal, its memory equal to one long forward under the chunked mask, its
generation cache equal to recomputing the window, records that cut attention, bad options refused."""

import pytest
import torch

from charlm.config import ModelConfig
from charlm.errors import ConfigError
from charlm.model import build_model, detach_state
from charlm.transformer import CharTransformer, rotary

V = 11


def tiny(memory=0, window=8, layers=2, width=16, heads=2, dtype=torch.float64, seed=0) -> CharTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(cell="transformer", vocab_size=V, hidden_size=width, layers=layers, heads=heads,
                         memory=memory, window=window).validate()
    model = build_model(config).to(dtype).eval()
    assert isinstance(model, CharTransformer)
    return model


def chunked(model, ids, T):
    """Logits of ids (B, N) read in chunks of T with the memory carried and detached, as training does."""
    state, out = None, []
    for i in range(0, ids.size(1), T):
        logits, state = model(ids[:, i:i + T], state)
        state = detach_state(state)
        out.append(logits)
    return torch.cat(out, dim=1)


def long_forward(model, emb, allowed):
    """One forward over embeddings (B, N, D) where query p sees key q iff allowed[p, q]."""
    N = emb.size(1)
    cos, sin = rotary(N, model.config.hidden_size // model.config.heads, emb.device, emb.dtype)
    empty = emb.new_zeros(emb.size(0), 0, emb.size(2))
    h = emb
    for block in model.blocks:
        h, _, _ = block(h, empty, empty, allowed[None, None], cos, sin)
    return model.head(model.norm(h))


def chunk_mask(N, T, M):
    """Query p (chunk c = p // T) sees keys q with c*T - M <= q <= p: its chunk so far and the M before."""
    p = torch.arange(N)[:, None]
    q = torch.arange(N)[None]
    return (q <= p) & (q >= (p // T) * T - M)


@pytest.mark.parametrize("memory", [0, 5, 8, 13])
def test_no_logit_depends_on_a_later_token(memory):
    model = tiny(memory=memory)
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
    base = chunked(model, ids, 8)
    for p in (3, 17, 39):
        changed = ids.clone()
        changed[:, p] = (changed[:, p] + 1) % V
        other = chunked(model, changed, 8)
        assert torch.equal(other[:, :p], base[:, :p])          # every earlier position untouched
        assert not torch.equal(other[:, p], base[:, p])


@pytest.mark.parametrize("memory", [0, 3, 8, 20])
def test_chunks_with_memory_equal_one_long_forward_under_the_chunked_mask(memory):
    """Outputs in float64; and the gradient of the last chunk's loss reaches its own inputs exactly
    as in the long forward, and no input before it: the memory enters through the forward only."""
    T, N = 8, 32
    model = tiny(memory=memory)
    ids = torch.randint(0, V, (3, N), generator=torch.Generator().manual_seed(2))
    want = long_forward(model, model.embed(ids), chunk_mask(N, T, memory))
    torch.testing.assert_close(chunked(model, ids, T), want, rtol=0, atol=1e-10)

    # Gradients with respect to the embeddings, for the loss of the last chunk only.
    emb = model.embed(ids).detach().requires_grad_(True)
    long_logits = long_forward(model, emb, chunk_mask(N, T, memory))
    long_logits[:, -T:].sum().backward()
    # The chunks read the same embeddings: each chunk's embedding lookup returns its slice of emb2.
    emb2 = emb.detach().clone().requires_grad_(True)
    state, original = None, model.embed.forward
    try:
        for i in range(0, N, T):
            model.embed.forward = lambda x, i=i: emb2[:, i:i + T]
            logits, state = model(ids[:, i:i + T], state)
            state = detach_state(state)
    finally:
        model.embed.forward = original
    logits.sum().backward()
    torch.testing.assert_close(emb2.grad[:, -T:], emb.grad[:, -T:], rtol=0, atol=1e-10)
    assert torch.count_nonzero(emb2.grad[:, :-T]) == 0          # cut at the chunk border
    if memory:
        assert torch.count_nonzero(emb.grad[:, :-T]) > 0         # the long forward reaches back


@pytest.mark.parametrize("memory", [0, 6])
def test_the_generation_cache_equals_recomputing_the_window(memory):
    """One token at a time through the cache equals reading all at once, and both equal a long
    forward where every token sees the window + memory - 1 tokens before it."""
    model = tiny(memory=memory, window=8)
    ids = torch.randint(0, V, (2, 50), generator=torch.Generator().manual_seed(3))
    whole, _ = model.read(ids, model.step_state(2))
    step, cache, out = model.stepper(), model.step_state(2), []
    for t in range(ids.size(1)):
        logits, cache = step(ids[:, t], cache)
        out.append(logits)
    torch.testing.assert_close(torch.stack(out, dim=1), whole, rtol=0, atol=1e-10)
    N, reach = ids.size(1), model.reach
    p, q = torch.arange(N)[:, None], torch.arange(N)[None]
    want = long_forward(model, model.embed(ids), (q <= p) & (q > p - reach))
    torch.testing.assert_close(whole, want, rtol=0, atol=1e-10)


def test_a_record_start_sees_nothing_before_it():
    model = tiny(memory=8)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(4))
    _, state = model(ids[:, :8])                                  # a full memory
    reset = torch.zeros(2, 8, dtype=torch.bool)
    reset[0, 3] = True                                            # stream 0: a record starts at 3
    logits, after = model(ids[:, 8:], state, reset)
    fresh, _ = model(ids[:1, 11:16])                              # the record read from nothing
    torch.testing.assert_close(logits[0, 3:], fresh[0], rtol=0, atol=1e-10)
    assert after[2][:, 0].tolist() == [[0.0] * 3 + [1.0] * 5] * 2  # only the record's tokens kept
    assert after[2][:, 1].sum() == 2 * 8                          # stream 1 keeps all
    # A stream whose state was reset (an epoch start) equals a fresh one.
    zero = model.init_state(2)
    torch.testing.assert_close(model(ids[:, 8:], zero)[0], model(ids[:, 8:])[0], rtol=0, atol=0)


@pytest.mark.parametrize("kw,fragment", [
    ({"hidden_size": 30, "heads": 4}, "multiple of 2 x --heads"),
    ({"heads": 0}, "--heads must be a positive"),
    ({"memory": -1}, "--memory must be a whole number"),
    ({"memory": 10**9}, "--memory must be a whole number"),
    ({"cell": "gru", "memory": 4}, "--memory is a transformer's"),
])
def test_bad_options_are_one_line(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelConfig(**{"cell": "transformer", **kw}).validate()


def test_bf16_autocast_chunks_keep_a_float32_memory():
    model = tiny(memory=4, dtype=torch.float32)
    ids = torch.randint(0, V, (2, 16))
    state = model.init_state(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, new = model(ids[:, :8], state)
        logits, new = model(ids[:, 8:], tuple(s.float() for s in new))
    assert torch.isfinite(logits.float()).all() and all(s.dtype == torch.float32 for s in (new[2],))
