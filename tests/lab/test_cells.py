"""What the cells hold (charlm.lab.cells, `charlm inspect-cells`): the recomputed gates are the
fused module's, a hand-built bracket counter is found and probed perfectly while an untrained
model is not, forced gates saturate fully, and the page keeps hostile text as text."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm.config import ModelConfig
from charlm.corpus.tokenizers import CharTokenizer
from charlm.errors import ConfigError
from charlm.lab.cells import (SCHEMA, gate_fractions, inspect_cells, page_html, parse_features, text_features,
                              trace)
from charlm.model import CharRNN

from helpers import make_text


def _model(cell: str, vocab: int = 10, hidden: int = 8, layers: int = 2, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(cell=cell, vocab_size=vocab, hidden_size=hidden, embedding_size=6,
                               layers=layers)).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm"])
def test_trace_is_the_fused_module(cell):
    model = _model(cell)
    ids = np.random.default_rng(0).integers(0, 10, 300)
    tr = trace(model, ids)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids)[None])                      # the fused forward
    logp = torch.log_softmax(logits[0], -1)
    nats = -logp[:-1].gather(1, torch.from_numpy(ids[1:])[:, None])[:, 0]
    np.testing.assert_allclose(tr.nats, nats.numpy(), atol=1e-4)
    assert tr.gate_error < 1e-5                                            # h from our gates = fused h
    assert [sorted(g) for g in tr.gates] == [sorted({"lstm": ["input", "forget", "output"],
                                                     "gru": ["reset", "update"], "rnn": [],
                                                     "mingru": ["update"], "minlstm": ["forget", "input"]}[cell])] * 2
    assert len(tr.cells) == 2 and tr.cells[0].shape == (300, 8)
    np.testing.assert_allclose(tr.top_p.sum(1) <= 1 + 1e-5, True)


def _counter(text_chars: str, opener: str, closer: str, hidden: int = 8) -> tuple[CharRNN, CharTokenizer]:
    """An LSTM built by hand whose cell 0 counts opener minus closer: input and forget gates
    pinned open (sigmoid(30) is 1.0 in float32), candidate g = tanh(+-30) = +-1 at the two
    brackets and 0 elsewhere, no recurrent weights; every other unit stays 0."""
    tok = CharTokenizer(sorted(set(text_chars)))
    V, H = tok.vocab_size, hidden
    model = CharRNN(ModelConfig(cell="lstm", vocab_size=V, embedding_size=V, hidden_size=H, layers=1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight.copy_(torch.eye(V))                             # one-hot inputs
        model.rnn.bias_ih_l0[:2 * H] = 30.0                                # i = f = 1
        model.rnn.weight_ih_l0[2 * H, tok.stoi[opener]] = 30.0
        model.rnn.weight_ih_l0[2 * H, tok.stoi[closer]] = -30.0
    return model, tok


def _brackets(n: int, seed: int = 0) -> str:
    """Letters with nested brackets whose runs are long: the depth must be remembered."""
    rng = np.random.default_rng(seed)
    out, depth = [], 0
    while len(out) < n:
        out += list(rng.choice(list("abcde "), rng.integers(20, 80)))
        if depth == 0 or (depth < 3 and rng.random() < 0.5):
            out.append("(")
            depth += 1
        else:
            out.append(")")
            depth -= 1
    return "".join(out) + ")" * depth


def test_a_hand_built_bracket_counter_is_found_and_probed_perfectly():
    text = _brackets(3000)
    model, tok = _counter(text, "(", ")")
    study = inspect_cells(model, tok, text, chars=len(text), order=0)
    row = next(f for f in study.features if f["feature"] == "depth paren")
    assert row["cells"][0]["cell"] == "L0:0" and row["cells"][0]["r"] == pytest.approx(1.0, abs=1e-6)
    assert row["probe"]["measure"] == "R2" and row["probe"]["score"] > 0.9999
    # The untrained LSTM of the same shape reads the same characters but has no count.
    assert row["control_probe"]["score"] < 0.5
    assert next(f for f in study.features if f["feature"] == "depth brace")["constant"]


def test_the_untrained_control_is_near_chance_where_memory_is_needed():
    # Spans <...> of 60-200 letters: inside or not is decided by a marker far back.
    rng = np.random.default_rng(1)
    parts = []
    while sum(map(len, parts)) < 6000:
        parts.append("".join(rng.choice(list("abcd"), rng.integers(60, 200))))
        parts.append("<" + "".join(rng.choice(list("abcd"), rng.integers(60, 200))) + ">")
    text = "".join(parts)
    model, tok = _counter(text, "<", ">", hidden=16)
    study = inspect_cells(model, tok, text, features=["span=<[^>]*>"], chars=len(text), order=0)
    row = next(f for f in study.features if f["feature"] == "span")
    assert row["kind"] == "flag" and row["probe"]["score"] > 0.99
    assert row["control_probe"]["score"] < row["control_probe"]["chance"] + 0.08


@pytest.mark.parametrize("cell,bias,side", [("lstm", 30.0, "right"), ("gru", -30.0, "left"),
                                            ("mingru", 30.0, "right"), ("minlstm", -30.0, "left")])
def test_forced_biases_saturate_every_gate(cell, bias, side):
    model = _model(cell, layers=1)
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if "weight" in name:
                p.zero_()
            elif "bias" in name:
                p.fill_(bias / 2 if "bias_" in name else bias)             # nn.LSTM/GRU add two biases
    tr = trace(model, np.random.default_rng(0).integers(0, 10, 200))
    for gate, f in gate_fractions(tr)[0].items():
        assert (f[side] == 1.0).all(), gate
        assert (f["left" if side == "right" else "right"] == 0.0).all()


def test_chars_are_capped_by_the_units_they_multiply(monkeypatch):
    text = make_text(400)
    tok = CharTokenizer(sorted(set(text)))
    model = CharRNN(ModelConfig(cell="gru", vocab_size=tok.vocab_size, hidden_size=512, embedding_size=8, layers=3))
    with pytest.raises(ConfigError, match="--chars 19,531 or fewer"):
        inspect_cells(model, tok, text, chars=20_000, order=0)
    # The default fits itself to the model: here 8 units and room for 8,000 character-units.
    monkeypatch.setattr("charlm.lab.cells.MAX_CHAR_UNITS", 8_000)
    small = _model("gru", vocab=tok.vocab_size, hidden=8, layers=1)
    assert inspect_cells(small, tok, text * 5, order=0).chars == 1000


def test_a_tanh_rnn_has_no_gates_and_a_transformer_is_refused():
    text = make_text(400)
    tok = CharTokenizer(sorted(set(text)))
    model = _model("rnn", vocab=tok.vocab_size, layers=1)
    study = inspect_cells(model, tok, text, chars=400, order=0)
    assert study.gates == [] and study.to_json()["gates"] == []
    model.config = type("Config", (), {"cell": "transformer"})()           # what main's new model says
    with pytest.raises(ConfigError, match="recurrent"):
        trace(model, np.zeros(4, dtype=np.int64))


def test_features_of_a_small_text():
    text = 'def f(a):\n    s = "x(]"\n\tif a[0]:\n        return 1\n'
    f = {k: v[1] for k, v in text_features(text, parse_features(["num=[0-9]+"])).items()}
    at = lambda i: {k: float(v[i]) for k, v in f.items()}
    assert at(text.index("a"))["depth paren"] == 1 and at(text.index(")"))["depth paren"] == 0
    assert at(text.index("x"))["in string"] == 1 and at(text.index("s"))["in string"] == 0
    assert at(text.index("x") + 1)["depth paren"] == 0                  # brackets in strings do not count
    assert at(text.index("s"))["indent"] == 4 and at(text.index("i"))["indent"] == 4   # a tab is 4
    assert at(text.index("r"))["indent"] == 8 and at(text.index("r"))["line position"] == 9
    assert at(text.index("\n"))["line position"] == 0 and at(0)["line position"] == 1
    assert at(text.index("0"))["num"] == 1 and at(text.index("0"))["depth square"] == 1
    for bad in (["x"], ["=a"], ["a=("], ["a=x", "a=y"], [f"f{i}=x" for i in range(17)]):
        with pytest.raises(ConfigError):
            parse_features(bad)


def _tiny_study(text: str, chars: int = 2000, **kw):
    tok = CharTokenizer(sorted(set(text)))
    model = _model("gru", vocab=tok.vocab_size, hidden=8, layers=1)
    train = tok.encode(make_text(3000, seed=5).replace(" ", "  "))
    train = train[train > 0]
    return inspect_cells(model, tok, text, chars=chars, order=4, train_ids=train, **kw)


def test_hostile_text_gives_a_valid_page():
    evil = '<script>alert(1)</script></span><!-- & &amp; "\'\x00\x01\x1b\u2028 ünï ' + "\n"
    text = evil + "x" * 10_000_000                                        # then 10 MB of one line
    study = _tiny_study(text, chars=3000)
    assert study.cut and study.chars == 3000
    page = page_html(study, cells=[3], html_chars=500)
    # Exactly two script elements (the JSON data and the code), and nothing of the corpus in markup.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "alert(1)" in page and "<script>alert" not in page and "</span>" not in page and "<!--" not in page
    assert "http" not in page.replace("http-equiv", "")                  # no network, no external file
    assert page.isascii()                                                 # the text travels escaped
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1))
    assert data["text"] == study.text[:500] and len(data["modes"]) >= 3
    assert all(len(m["values"]) == 500 for m in data["modes"]) and len(data["top"]) == 500
    assert "first 500 of 3,000" in data["note"] and "cut" in data["note"]
    with pytest.raises(ConfigError, match="--cell"):
        page_html(study, cells=[10_000])


def test_study_json_csv_and_saved_bits():
    text = ('def f(a, b):\n    return [a, (b + "x")]\n' * 60)
    study = _tiny_study(text)
    doc = study.to_json()
    assert doc["schema"] == SCHEMA and doc["ngram"]["order"] == 4 and 1 <= doc["ngram"]["best_order"] <= 4
    assert {c["class"] for c in doc["saved_by_class"]} >= {"letter", "close bracket", "quote", "newline"}
    assert {d["kind"] for d in doc["saved_by_distance"]} == {"bracket", "quote"}
    assert len(study.saved) == study.chars - 1
    json.dumps(doc, allow_nan=False)
    assert study.csv_text().splitlines()[0] == "section,item,measure,trained,control"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from charlm.threads import torch_threads
    from charlm.training import train

    from helpers import tiny_config

    tmp = tmp_path_factory.mktemp("cells")
    corpus = tmp / "code.txt"
    corpus.write_text('def f(a, b):\n    return [a, (b + "x")]\n' * 200, encoding="utf-8")
    with torch_threads(1):
        return train(tiny_config(corpus, tmp / "run", max_steps=5, eval_every=5),
                     ModelConfig(cell="lstm", hidden_size=16, embedding_size=8))


def test_cli_table_json_csv_plot_html(tiny_run, tmp_path, monkeypatch):
    from charlm.cli import app

    monkeypatch.chdir(tmp_path)
    args = ["inspect-cells", str(tiny_run), "--chars", "800", "--order", "5", "--feature", "ret=return"]
    res = CliRunner().invoke(app, args + ["--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"]["cell"] == "lstm" and [g["gate"] for g in doc["gates"]] == ["input", "forget", "output"]
    assert any(f["feature"] == "ret" for f in doc["features"])
    res = CliRunner().invoke(app, args + ["--csv", "c.csv", "--html", "p.html", "--cell", "2"])
    assert res.exit_code == 0, res.output
    assert "gate saturation" in res.stdout and "where the model wins" in res.stdout
    assert (tmp_path / "c.csv").read_text().startswith("section,item")
    assert (tmp_path / "p.html").read_text().startswith("<!DOCTYPE html>")
    for bad, word in ((["--order", "21"], "--order"), (["--chars", "5"], "--chars"),
                      (["--feature", "x=("], "regular expression"), (["--html", "p.txt"], "--html")):
        res = CliRunner().invoke(app, args + bad)
        assert res.exit_code in (1, 2) and word in res.output and "Traceback" not in res.output, res.output
    pytest.importorskip("matplotlib")
    res = CliRunner().invoke(app, args + ["--plot", "c.png"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------
# The page in a real browser (slow tier; skipped without chromium and selenium)

def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no chromium and chromedriver on PATH")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,700"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except Exception as e:                                                  # a browser that cannot start here
        pytest.skip(f"chromium did not start: {str(e).splitlines()[0]}")


@pytest.mark.slow
def test_the_page_renders_in_chromium(tmp_path):
    text = ('<script>document.title = "owned"</script></span> x = f(a[1], "s")\n' * 30)
    study = _tiny_study(text, chars=1500)
    page = tmp_path / "cells.html"
    page.write_text(page_html(study, html_chars=1000), encoding="utf-8")
    browser = _browser()
    try:
        browser.get(page.as_uri())
        shown = browser.find_element("id", "text")
        assert shown.text.startswith('<script>document.title = "owned"</script></span> x = f(')
        assert browser.title != "owned"
        spans = shown.find_elements("tag name", "span")
        assert len(spans) == 1000
        colours = browser.execute_script(
            "return Array.from(document.querySelectorAll('#text span')).map(s => s.style.backgroundColor)")
        assert sum(c not in ("", "transparent", "rgba(0, 0, 0, 0)") for c in colours) > 500
        # Every colouring paints, and hovering shows the model's guesses.
        options = browser.find_elements("css selector", "#mode option")
        assert len(options) >= 3
        for option in options:
            option.click()
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).move_to_element(spans[40]).perform()
        tip = browser.find_element("id", "tip")
        assert tip.is_displayed() and "model's guesses" in tip.text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        assert browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        browser.quit()
