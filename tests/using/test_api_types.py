"""The Python API given arguments of the wrong type: one ConfigError line, never an
AttributeError or TypeError from deep inside, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import charlm
from charlm.config import TrainConfig
from charlm.errors import ConfigError

# Values no entry point takes where a config, a ModelConfig, a function or a text is expected.
NOT_A_CONFIG = st.one_of(st.integers(), st.floats(allow_nan=True), st.binary(max_size=4), st.none(),
                         st.lists(st.integers(), max_size=2), st.tuples(st.integers()), st.booleans())
NOT_A_FUNCTION = st.one_of(st.integers(), st.floats(), st.text(max_size=4), st.booleans(),
                           st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
NOT_A_MODEL = st.one_of(NOT_A_FUNCTION, st.just({"hidden_size": 8}), st.just(TrainConfig()))
NOT_A_TEXT = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=4),
                       st.lists(st.text(max_size=2), max_size=2), st.booleans())


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text
    return text


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("api") / "run"


@settings(max_examples=30, deadline=None)
@given(config=NOT_A_CONFIG)
def test_train_with_a_config_of_the_wrong_type(config, out):
    with pytest.raises(ConfigError) as e:
        charlm.train(config)
    assert "train() takes a TrainConfig" in _one_line(e)


@settings(max_examples=30, deadline=None)
@given(model=NOT_A_MODEL)
def test_train_with_a_model_config_of_the_wrong_type(model, out):
    with pytest.raises(ConfigError) as e:
        charlm.train(TrainConfig(out=str(out), max_steps=1, device="cpu"), model)
    assert "ModelConfig" in _one_line(e)
    assert not out.exists()


@settings(max_examples=30, deadline=None)
@given(callback=st.sampled_from(["on_event", "should_stop", "grad_probe"]), value=NOT_A_FUNCTION)
def test_train_with_a_callback_that_is_not_a_function(callback, value, out):
    with pytest.raises(ConfigError) as e:
        charlm.train(TrainConfig(out=str(out), max_steps=1, device="cpu"), **{callback: value})
    assert f"{callback} must be a function" in _one_line(e)
    assert not out.exists()


@pytest.fixture(scope="module")
def lm(tiny_run):
    return charlm.load(tiny_run, device="cpu")


@settings(max_examples=30, deadline=None)
@given(text=NOT_A_TEXT)
def test_score_with_a_text_of_the_wrong_type(lm, text):
    with pytest.raises(ConfigError) as e:
        lm.score(text)
    assert "score() takes the text as a str" in _one_line(e)


@settings(max_examples=20, deadline=None)
@given(top=st.one_of(st.text(max_size=3), st.none(), st.floats(), st.booleans()))
def test_score_with_top_of_the_wrong_type(lm, top):
    with pytest.raises(ConfigError) as e:
        lm.score("to be or not", top=top)
    assert "top must be" in _one_line(e)


@settings(max_examples=20, deadline=None)
@given(call=st.sampled_from(["evaluate progress", "export path", "sample records"]), value=NOT_A_FUNCTION)
def test_other_methods_with_arguments_of_the_wrong_type(lm, call, value):
    calls = {"evaluate progress": lambda: lm.evaluate("to be or not", progress=value),
             "export path": lambda: lm.export(value),
             "sample records": lambda: lm.sample(length=3, records=value)}
    if (call == "sample records" and isinstance(value, bool)) or (call == "export path" and isinstance(value, str)):
        return   # True and False are what records takes; a str is a path export would write
    with pytest.raises(ConfigError) as e:
        calls[call]()
    _one_line(e)
