"""Generation's one-token step (CharRNN.stepper) must compute exactly what forward computes."""

import pytest
import torch

from charlm.config import ModelConfig, SampleConfig
from charlm.model import CharRNN
from charlm.sampling import sample_text
from charlm.corpus.tokenizers import CharTokenizer


@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepper_matches_forward(cell, column_major):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=11, embedding_size=8, hidden_size=16, layers=2)).eval()
    ids = torch.randint(0, 11, (3, 7))                   # 3 sequences, 7 steps
    with torch.no_grad():
        logits, state = model(ids[:, :2])                 # a prime through forward
        want, _ = model(ids[:, 2:], state)                # the rest through forward ...
        step, s = model.stepper(column_major), model.split_state(state)
        got = []
        for t in range(2, 7):                             # ... and one step at a time
            out, s = step(ids[:, t], s)
            got.append(out)
    torch.testing.assert_close(torch.stack(got, dim=1), want, rtol=1e-5, atol=1e-5)
    _, full_state = model(ids)
    for a, b in zip(model.join_state(s), full_state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_generation_never_samples_unk_and_repeats_with_a_seed():
    torch.manual_seed(0)
    tok = CharTokenizer(list("abc\n"))
    model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, embedding_size=4, hidden_size=8))
    with torch.no_grad():
        model.head.bias[0] = 5.0                           # <unk> the likeliest id: still never drawn
    cfg = SampleConfig(length=300, seed=3, num_samples=2)
    first = sample_text(model, tok, cfg)                   # the generator the CLI and the API use
    again = sample_text(model, tok, cfg)
    assert [len(t) for t in first] == [300, 300] and first == again
    assert all(set(t) <= set("abc\n") for t in first)      # only real characters: never <unk>
    assert first[0] != first[1]                            # sample i has its own seed
