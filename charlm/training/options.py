"""Option resolution, one function for the CLI and the library: defaults < checkpoint < TOML < flags.

It sits above the checkpoint module (config.py stays the bottom layer). On --resume the options
come from the run's last.pt, read once here: ``plan_launch`` returns a ``Launch`` value holding
the configs and that checkpoint, which the set-up restores from unless the file changed since.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import Checkpoint, check_resumable, read_checkpoint, resolve_checkpoint
from ..config import (DERIVED, ModelConfig, TrainConfig, check_contradictions, config_keys, load_toml, option_name,
                      split_options)
from ..errors import CheckpointError, ConfigError, RunDirError
from ..rundir import is_unstarted_run
from .finetune import refuse_other_tokenizer


def explicit_options(config: TrainConfig, model: Optional[ModelConfig] = None) -> dict[str, Any]:
    """The options a library caller set: the fields that differ from their defaults.

    A TrainConfig cannot say which fields were given, so a resume from the library treats a
    default value as "not given" and takes the checkpoint's (as the CLI does for an absent flag).
    """
    keys = config_keys()
    names = {field: name for name, (cls, field) in keys.items()}
    out: dict[str, Any] = {}
    for obj, default in ((config, TrainConfig()), (model, ModelConfig())):
        if obj is None:
            continue
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.name in names and keys[names[f.name]][0] is type(obj) and value != getattr(default, f.name):
                out[names[f.name]] = value
    return out


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read for this launch, with the file identity it was read at, so the set-up can
    use it instead of reading the file again, unless the file changed in between."""

    path: Path
    identity: tuple          # (size, mtime, inode) when it was read
    record: Checkpoint

    @classmethod
    def read(cls, path: Path) -> "LoadedCheckpoint":
        identity = _identity(path)
        return cls(path.resolve(), identity, read_checkpoint(path))

    def current(self, path: Path) -> bool:
        """Whether this is still what ``path`` holds."""
        try:
            return path.resolve() == self.path and _identity(path) == self.identity
        except OSError:
            return False


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class Launch:
    """What one launch trains: the resolved configs and, for a resume, the checkpoint the options
    came from (read once; ``charlm.training.train(..., resume_from=launch.resume_from)`` restores
    from it). ``model_config`` is None for a resume that names no model option."""

    model_config: Optional[ModelConfig]
    config: TrainConfig
    resume_from: Optional[LoadedCheckpoint] = None


def resolve_options(explicit: dict, config_file: Optional[str] = None) -> tuple[Optional[ModelConfig], TrainConfig]:
    """The configs of ``plan_launch``, for callers that do not restore the state themselves."""
    launch = plan_launch(explicit, config_file)
    return launch.model_config, launch.config


def plan_launch(explicit: dict, config_file: Optional[str] = None) -> Launch:
    """Merge option sources: defaults < the checkpoint (on --resume) < TOML file < explicit flags.

    For a resume that names no model option the model config is None, so the checkpoint's model
    is used as it is; a model option that is named must agree with the checkpoint.
    """
    file_options = load_toml(config_file) if config_file else {}
    options = {**file_options, **{k: v for k, v in explicit.items() if v is not None}}
    check_contradictions(options.get("resume"), options.get("force"), options.get("init_from"))
    if options.get("resume", False):
        return _resume_options(options)
    if options.get("init_from"):
        options = _init_from_options(options)
    try:
        return Launch(*split_options(options))
    except ConfigError as e:
        # A bad value that came from the file (not a flag): say which file, so it can be found.
        from_file = [k for k in file_options if explicit.get(k) is None]
        if any(f"--{k.replace('_', '-')} " in f"{e} " for k in from_file):
            raise ConfigError(f"{config_file}: {e}") from None
        raise


def _resume_options(options: dict) -> Launch:
    keys = config_keys()
    model_named = any(keys[k][0] is ModelConfig for k in options if k in keys)
    out = options.get("out")
    if out is None:
        raise ConfigError("--resume needs --out DIR naming the run to continue")
    ckpt_path = Path(out).expanduser() / "last.pt"
    if not ckpt_path.is_file():
        if not is_unstarted_run(Path(out).expanduser()):
            raise RunDirError(f"cannot resume: {out} has no last.pt (start it without --resume)")
        # Killed before its first checkpoint: start over with the options it was launched
        # with (its config.toml, when the crash left a whole one), under the ones given now.
        base: dict = {}
        try:
            if (Path(out).expanduser() / "config.toml").is_file():
                base = load_toml(Path(out).expanduser() / "config.toml")
        except ConfigError:
            pass
        for k in ("resume", "force", "out"):
            base.pop(k, None)
        return Launch(*split_options({**base, **options}))
    loaded = LoadedCheckpoint.read(ckpt_path)
    ckpt = loaded.record
    check_resumable(ckpt, ckpt_path)
    saved = {k: v for k, v in ckpt.train_config.items() if k in keys}
    saved.update({option_name(k): v for k, v in ckpt.model_config.items() if k not in DERIVED})
    # The device is the machine's, not the run's: a resume picks the best one present
    # (a GPU run continues on a CPU-only machine and the reverse) unless --device is given.
    # init_from is how the run began; the resumed run has its weights already.
    for k in ("resume", "force", "out", "device", "init_from"):
        saved.pop(k, None)
    # The stopping rule is the new launch's own business when it names one.
    if any(k in options for k in ("max_steps", "max_time", "epochs")):
        for k in ("max_steps", "max_time", "epochs"):
            saved.pop(k, None)
    try:
        model_config, train_config = split_options({**saved, **options})
    except TypeError as e:
        raise CheckpointError(f"cannot resume from {ckpt_path}: its options are damaged ({e})") from None
    return Launch(model_config if model_named else None, train_config, loaded)


def _init_from_options(options: dict) -> dict:
    """Fine-tuning: the source checkpoint's model options under the given ones (read once here;
    the set-up refuses a named architecture that differs from it)."""
    path = resolve_checkpoint(options["init_from"])
    ckpt = read_checkpoint(path)
    saved = ckpt.model_config
    kind = ckpt.tokenizer.get("kind")
    if isinstance(kind, str):   # a damaged record is the set-up's to report, with the whole check
        # Here a given "--tokenizer char" is told from the default, as the API cannot.
        refuse_other_tokenizer(path, kind, saved.get("vocab_size"), options.get("tokenizer"),
                               options.get("vocab_size"))
    base = {option_name(k): v for k, v in saved.items()
            if k not in DERIVED and option_name(k) in config_keys()}
    return {**base, **options}
