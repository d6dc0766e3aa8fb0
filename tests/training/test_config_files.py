"""`charlm train --config run.toml`: flat keys and sections, flags override the file, clear errors
naming the key and the file, and --print-config output that load_toml reads back."""

import json

import pytest
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig, load_toml, split_options, to_toml
from charlm.errors import ConfigError

runner = CliRunner()


def print_config(*args):
    result = runner.invoke(app, ["train", *map(str, args), "--print-config"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_flat_keys_like_the_long_options(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('hidden_size = 256\nmodel = "gru"\nseq-len = 32\nlr = 1\ntensorboard = true\n')
    options = load_toml(cfg)
    assert options == {"hidden_size": 256, "model": "gru", "seq_len": 32, "lr": 1.0, "tensorboard": True}
    assert isinstance(options["lr"], float)  # an integer is fine where a float is expected
    out = print_config("--config", cfg)
    assert "hidden_size = 256" in out and 'model = "gru"' in out and "seq_len = 32" in out


def test_sections_and_flags_override_the_file(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\nhidden_size = 256\nlayers = 2\n\n[train]\nbatch_size = 8\nmax_steps = 100\n')
    out = print_config("--config", cfg, "--hidden-size", "64", "--max-steps", "5")
    resolved = load_toml_text(tmp_path, out)
    assert resolved["hidden_size"] == 64          # the flag wins
    assert resolved["layers"] == 2                # the file's value stays
    assert resolved["batch_size"] == 8
    assert resolved["max_steps"] == 5
    assert resolved["seq_len"] == TrainConfig().seq_len  # the default where neither says


def load_toml_text(tmp_path, text):
    path = tmp_path / "printed.toml"
    path.write_text(text)
    return load_toml(path)


def test_print_config_round_trips(tmp_path):
    out = print_config(str(tmp_path / "corpus.txt"), "--model", "rnn", "--hidden-size", "48", "--lr", "0.01",
                       "--max-time", "30", "--tokenizer", "bpe", "--vocab-size", "500", "--normalize", "nfd")
    options = load_toml_text(tmp_path, out)
    model, train = split_options(options)
    assert model == ModelConfig(cell="rnn", hidden_size=48)
    assert train.corpus == str(tmp_path / "corpus.txt") and train.lr == 0.01 and train.max_time == 30
    assert (train.tokenizer, train.vocab_size, train.normalize) == ("bpe", 500, "nfd")
    # ...and printing it again gives the same text: a fixed point.
    assert to_toml(model, train) == out
    # the printed file is itself a valid --config
    assert print_config("--config", tmp_path / "printed.toml") == out


@pytest.mark.parametrize("text, fragments", [
    ("hiden_size = 256\n", ["unknown key 'hiden_size'", "did you mean 'hidden_size'"]),
    ("[model]\ncell_type = 'lstm'\n", ["unknown key 'cell_type'"]),
    ('hidden_size = "big"\n', ["key 'hidden_size' must be int", "str"]),
    ("[train]\nlr = 'fast'\n", ["key 'lr' must be float"]),
    ("seq_len = 3.5\n", ["key 'seq_len' must be int"]),
    ("tensorboard = 1\n", ["key 'tensorboard' must be bool"]),
    ("hidden_size = \n", ["is not valid TOML"]),
])
def test_bad_files_name_the_key_and_the_file(tmp_path, text, fragments):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_toml(cfg)
    for f in [str(cfg), *fragments]:
        assert f in str(e.value)
    result = runner.invoke(app, ["train", "--config", str(cfg), "--print-config"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert str(cfg) in result.stderr.replace("\n", "") and fragments[0] in result.stderr.replace("\n", "")


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.toml"), "--print-config"])
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_training_from_a_config_file(tmp_path, corpus_file):
    """The file drives a real run; its config.toml records the resolved options."""
    out = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'corpus = "{corpus_file.as_posix()}"\nout = "{out.as_posix()}"\n'
                   f'[model]\nmodel = "gru"\nhidden_size = 12\nembedding_size = 8\n'
                   f'[train]\nbatch_size = 4\nseq_len = 16\nmax_steps = 3\neval_every = 10\nsample_length = 0\n')
    result = runner.invoke(app, ["train", "--config", str(cfg), "--layers", "2"])
    assert result.exit_code == 0, result.output
    saved = load_toml(out / "config.toml")
    assert (saved["model"], saved["hidden_size"], saved["layers"], saved["max_steps"]) == ("gru", 12, 2, 3)
    info = json.loads(runner.invoke(app, ["info", str(out), "--json", "-"]).stdout)
    assert (info["model"], info["hidden_size"], info["layers"], info["step"]) == ("gru", 12, 2, 3)


def test_bad_values_from_the_file_name_the_file(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("max_steps = -3\n[model]\ndropout = 0.2\n")
    result = runner.invoke(app, ["train", "--config", str(cfg), "--print-config"])
    err = result.stderr.replace("\n", "")
    assert result.exit_code == 1 and str(cfg) in err and "--max-steps must be a positive whole number" in err
    # the same mistake made with a flag is the flag's, not the file's
    result = runner.invoke(app, ["train", "--config", str(cfg), "--max-steps", "0", "--print-config"])
    assert result.exit_code == 1 and str(cfg) not in result.stderr and "--max-steps" in result.stderr


def test_every_train_option_is_settable_in_a_file():
    import typer

    from charlm.config import config_keys

    train_cmd = typer.main.get_command(app).commands["train"]
    names = {p.name for p in train_cmd.params} - {"config", "print_config", "help"}
    assert names and names <= set(config_keys()), names - set(config_keys())


def test_train_options_come_from_the_dataclasses():
    """Every field is a flag whose help is the field's docstring and whose default is the field's."""
    import typer
    from rich.markup import escape

    from charlm.config import field_help, train_options

    train_cmd = typer.main.get_command(app).commands["train"]
    params = {p.name: p for p in train_cmd.params}
    options = train_options()
    assert {o.name for o in options} == set(params) - {"config", "print_config", "help"}
    for o in options:
        p = params[o.name]
        assert p.default is None                     # "not given": the file and the checkpoint may say
        doc = field_help(o.owner)[o.field]
        assert doc and " ".join(p.help.split()).startswith(" ".join(escape(doc).split()))
        if o.default is not None and not isinstance(o.default, bool):
            # A string default is shown escaped: record_sep's newline reads \n, not a blank.
            shown = format(o.default, "g") if isinstance(o.default, float) else str(o.default).encode("unicode_escape").decode()
            recipes = "".join(f"; {model}: {format(v, 'g') if isinstance(v, float) else v}"
                              for model, v in o.recipes.items())   # a model's own default beside it
            assert p.help.endswith(f"\\[default: {shown}{recipes}]"), p.help
    names = {o.name for o in options}
    assert "model" in names and "cell" not in names and "vocab_size" in names   # ModelConfig.vocab_size is not
    assert [o.name for o in options][:2] == ["model", "embedding_size"]
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    # The shown default is the dataclass's, whatever it is tuned to (a literal here went stale once).
    assert f"Units per recurrent layer (H); for a transformer, its width (the embedding's too). [default: {ModelConfig().hidden_size}; transformer: 128]" in " ".join(help_text.split())
    assert "--max-bad-steps" in help_text and "[default: 0.1]" in help_text


def test_a_new_field_is_a_flag_with_no_other_edit(monkeypatch):
    """Add a field to TrainConfig: the train command grows the flag, its help and its default."""
    import dataclasses

    import charlm.config as config
    from charlm.cli.train import _parameter

    fields = [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(config.TrainConfig)]
    Bigger = dataclasses.make_dataclass("TrainConfig", fields + [("label_smoothing", float, 0.25)])
    Bigger.__module__ = config.__name__     # its annotations are names in charlm.config
    monkeypatch.setattr(config, "_HELP", {Bigger: {"label_smoothing": "Smooth the targets."}})
    monkeypatch.setattr(config, "TrainConfig", Bigger)
    option = next(o for o in config.train_options() if o.name == "label_smoothing")
    assert (option.type, option.default, option.help) == (float, 0.25, "Smooth the targets.")
    info = _parameter(option).annotation.__metadata__[0]
    assert info.help == "Smooth the targets. \\[default: 0.25]"


def test_unknown_option_names_in_a_dict_suggest_the_right_one(tmp_path):
    import charlm

    for call in (lambda: split_options({"hiden_size": 16}),
                 lambda: charlm.train({"hiden_size": 16, "out": str(tmp_path / "r")})):
        with pytest.raises(ConfigError, match=r"^unknown option 'hiden_size' \(did you mean 'hidden_size'\?\)$"):
            call()
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="unknown option 'zzz'$"):
        split_options({"zzz": 1})


def test_non_utf8_and_binary_config_files(tmp_path):
    for name, data in (("latin1.toml", 'corpus = "café"\n'.encode("latin-1")), ("bin.toml", bytes(range(256)))):
        (tmp_path / name).write_bytes(data)
        result = runner.invoke(app, ["train", "--config", str(tmp_path / name), "--print-config"])
        assert result.exit_code == 1 and "is not a UTF-8 TOML file" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["hidden_size", "seq_len", "lr", "max_steps"]),
       places=st.lists(st.sampled_from(["", "model", "train", "data", "optim"]), min_size=2, max_size=2),
       dashed=st.booleans())
def test_a_key_set_twice_in_a_file_is_one_line_not_a_silent_choice(tmp_path_factory, key, places, dashed):
    """The top level and a section, two sections, or one place under both spellings."""
    value = {"lr": "0.01"}.get(key, "8")
    spellings = [key, key.replace("_", "-") if dashed else key]
    tables: dict[str, list[str]] = {}
    for place, spelling in zip(places, spellings):
        tables.setdefault(place, []).append(f"{spelling} = {value}")
    if len(tables) == 1 and spellings[0] == spellings[1]:
        return   # the same key twice in one table: invalid TOML, reported as such
    text = "\n".join(tables.pop("", [])) + "\n"
    text += "".join(f"[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items())
    cfg = tmp_path_factory.mktemp("dup") / "twice.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_toml(cfg)
    assert "is set twice" in str(e.value) and "\n" not in str(e.value)


def test_resume_and_force_together_are_one_line_whatever_the_run(tmp_path):
    cfg = tmp_path / "rf.toml"
    cfg.write_text(f'resume = true\nforce = true\nout = "{(tmp_path / "nope").as_posix()}"\n')
    for args in (["--config", str(cfg)], ["--resume", "--force", "--out", str(tmp_path / "nope")]):
        r = runner.invoke(app, ["train", *args])
        assert r.exit_code == 1 and "--resume and --force contradict each other" in r.stderr, r.output
    assert not (tmp_path / "nope").exists()
