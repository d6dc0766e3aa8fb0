"""The Kneser-Ney n-gram baseline (charlm.lab.ngram, `charlm ngram`): a distribution over the whole
vocabulary for every history, a value computed by hand, evaluate's bits-per-character accounting,
and the pruning that bounds its tables without breaking the normalisation."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from charlm.errors import ConfigError, CorpusError
from charlm.evaluation import EvalResult
from charlm.lab.ngram import KneserNey, bits_per_char, check_order, measure

from helpers import make_text


@pytest.mark.parametrize("prune_above", [1, 20])
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_probabilities_sum_to_one_for_every_history(order, prune_above):
    rng = np.random.default_rng(order)
    ids = rng.integers(0, 4, 400)                    # token 4 of the vocabulary is never seen
    model = KneserNey(ids, 5, order, prune_above=prune_above)
    for length in range(0, 4):
        for history in itertools.product(range(5), repeat=length):
            p = model.distribution(np.array(history, dtype=np.int64))
            assert p.shape == (5,) and (p > 0).all()
            assert abs(p.sum() - 1) < 1e-12, (history, p.sum())


def test_scoring_a_text_agrees_with_the_distribution():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, 500)
    model = KneserNey(ids, 6, 4, prune_above=2)
    text = rng.integers(0, 6, 40)
    lp = model.logprobs(text)                                  # (order, N - 1)
    for k in range(1, 5):
        for t in range(k, 40):                                 # a full history of k - 1 tokens
            p = model.distribution(text[:t], order=k)
            assert lp[k - 1, t - 1] == pytest.approx(math.log(p[text[t]]), abs=1e-12)


def test_a_value_computed_by_hand():
    # Training text "abab" (a = 0, b = 1), vocabulary {a, b, c}, order 2, nothing pruned.
    # Bigrams: ab twice, ba once: n1 = 1, n2 = 1, so D2 = 1 / (1 + 2) = 1/3.
    # Continuation counts of the unigrams (distinct left neighbours): a 1 (b), b 1 (a); total 2;
    # n1 = 2, n2 = 0 gives D1 = 1, clipped to 0.95; back-off mass 0.95 * 2 types = 1.9 to uniform 1/3.
    #   p1(b) = (1 - 0.95 + 1.9 / 3) / 2
    #   p2(b | a) = (2 - 1/3 + (1/3) * 1 type * p1(b)) / c(a .) = 2
    model = KneserNey(np.array([0, 1, 0, 1]), 3, 2, prune_above=20)
    p1_b = (1 - 0.95 + 1.9 / 3) / 2
    p2 = (2 - 1 / 3 + (1 / 3) * p1_b) / 2
    assert model.raw[2].discount == pytest.approx(1 / 3) and model.cont[1].discount == 0.95
    assert model.distribution(np.array([0]))[1] == pytest.approx(p2, abs=1e-12)          # 0.890278
    assert model.distribution(np.array([0]))[2] == pytest.approx((1 / 3) * (1.9 / 3 / 2) / 2, abs=1e-12)
    assert model.logprobs(np.array([0, 1]))[1, 0] == pytest.approx(math.log(p2), abs=1e-12)
    # An unseen history passes the lower order through: p(b | c) = p1(b).
    assert model.distribution(np.array([2]))[1] == pytest.approx(p1_b, abs=1e-12)


def test_pruning_keeps_the_tables_small_and_the_model_normalised():
    text = make_text(20_000, seed=3)
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    full, pruned = KneserNey(ids, len(chars), 8, prune_above=20), KneserNey(ids, len(chars), 8, prune_above=3)
    assert pruned.raw[8].pruned > 0 and len(pruned.raw[8].grams) < len(full.raw[8].grams)
    assert pruned.nbytes < full.nbytes
    for h in (ids[100:107], ids[5000:5007], np.array([0, 1, 2, 3, 4, 5, 6])):
        assert abs(pruned.distribution(h).sum() - 1) < 1e-12
    held = np.array([chars.index(c) for c in make_text(3000, seed=4)])
    # A smoothed model of a repetitive text: the higher orders beat the unigram by a lot.
    s_full, _, _ = measure(ids, held, len(held), len(chars), 8, prune_above=20)
    s_pruned, _, _ = measure(ids, held, len(held), len(chars), 8, prune_above=3)
    assert s_full.orders[0]["bits_per_char"] > s_full.orders[s_full.best_order - 1]["bits_per_char"] + 1
    assert abs(s_pruned.orders[7]["bits_per_char"] - s_full.orders[7]["bits_per_char"]) < 0.1


def test_bits_per_char_is_evaluates_accounting():
    nats = np.array([0.5, 1.0, 2.0])
    assert bits_per_char(nats, 4, 8) == EvalResult(nats=3.5, tokens=3, chars=8 * 3 / 4).bits_per_char
    study, _, lp = measure(np.array([0, 1] * 50), np.array([0, 1, 0, 1]), 4, 2, 3)
    assert study.orders[2]["bits_per_char"] == pytest.approx(-lp[2].sum() / 3 / math.log(2))
    assert study.best_order in (2, 3) and study.to_json()["schema"] == "charlm.ngram/1"
    assert study.csv_text().splitlines()[0].startswith("order,bits_per_char")


def test_training_text_reads_only_the_tail_it_keeps(tmp_path, monkeypatch):
    from charlm.lab.ngram import training_text

    monkeypatch.setattr("charlm.corpus.text.BLOCK_BYTES", 4096)         # many blocks, as a big corpus
    path = tmp_path / "t.txt"
    text = make_text(300_000, seed=7)
    path.write_text(text, encoding="utf-8")
    got, what = training_text(None, str(path), max_chars=70_000)
    assert got == text[-70_000:] and "its last 70,000 characters" in what
    got, what = training_text(None, str(path), max_chars=10**9)
    assert got == text and "its last" not in what


def test_bad_options_are_one_line():
    for bad in (0, 21, 2.5, True):
        with pytest.raises(ConfigError, match="--order"):
            check_order(bad)
    with pytest.raises(CorpusError):
        KneserNey(np.array([1]), 3, 2)
    with pytest.raises(ConfigError, match="vocabulary"):
        KneserNey(np.array([0, 5]), 3, 2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from charlm.config import ModelConfig
    from charlm.threads import torch_threads
    from charlm.training import train

    from helpers import tiny_config

    tmp = tmp_path_factory.mktemp("ngram")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(8000), encoding="utf-8")
    with torch_threads(1):
        return train(tiny_config(corpus, tmp / "run", max_steps=5, eval_every=5),
                     ModelConfig(cell="gru", hidden_size=16, embedding_size=8))


def test_cli_ngram(tiny_run, tmp_path):
    from charlm.cli import app

    res = CliRunner().invoke(app, ["ngram", str(tiny_run), "--order", "6", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [o["order"] for o in doc["orders"]] == [1, 2, 3, 4, 5, 6]
    assert doc["train"]["tokens"] == 7200 and doc["eval"]["chars"] == 800      # the run's 0.9 / 0.1 split
    res = CliRunner().invoke(app, ["ngram", str(tiny_run), "--order", "3", "--max-train-tokens", "1000",
                                   "--json", "-"])
    doc = json.loads(res.stdout)
    assert doc["train"]["tokens"] == 1000 and "its last 1,000 characters" in doc["train"]["inputs"]
    res = CliRunner().invoke(app, ["ngram", str(tiny_run), "--order", "4"])
    assert res.exit_code == 0 and "◀" in res.output
    res = CliRunner().invoke(app, ["ngram", str(tiny_run), "--order", "30"])
    assert res.exit_code == 1 and "--order" in res.output and "Traceback" not in res.output
