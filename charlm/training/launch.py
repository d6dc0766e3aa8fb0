"""What one launch does, decided once: the options, new / fill / resume, and the checkpoint.

``plan_launch`` (the CLI, and the library given option names or a TOML file) and ``plan_configs``
(the library given dataclasses) both end in one ``Launch`` value. Everything that can be known
from the options and the disk is settled here, once, before anything is written:

- the options: defaults < the checkpoint (on --resume) < TOML file < explicit flags;
- a torchrun restart (``--max-restarts``) of a run that has a last.pt becomes a resume, since the
  restarted workers get the first command line, which has no --resume (and perhaps --force);
- what happens to the run folder (``decide``): "new" (it does not exist, or --out was left out),
  "fill" (an empty folder, a run killed before its first checkpoint, or a run replaced with
  --force) or "resume"; every refusal ("already exists", "has no last.pt", "--resume needs
  --out", "not a charlm run") is said here and nowhere else;
- on a resume, last.pt is read once, here, and checked against the options; the set-up restores
  from ``Launch.checkpoint`` and never reads the file again.

What is left for the set-up (setup.py) is what needs the machine (the device, its precision, the
process group), the corpus, and the writing. The set-up takes the run's lock and checks that the
folder is still as it was planned (``rundir.open_run_dir``): another process may have changed
it in between.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

from .. import distributed
from ..checkpoint import Checkpoint, check_resumable, read_checkpoint, resolve_checkpoint
from ..config import (DERIVED, ModelConfig, TrainConfig, check_contradictions, check_launch_options,
                      config_keys, load_toml, option_name, split_options)
from ..errors import CheckpointError, ConfigError, RunDirError
from ..rundir import RUN_MARKER, Folder, check_obstacles, look, read_marker
from .finetune import refuse_other_tokenizer
from .state import Progress

@dataclass(frozen=True)
class Launch:
    """One launch, decided and validated: what it trains and what it does with its run folder.

    ``mode`` is "new", "fill" or "resume" (see ``decide``). ``model_config`` is None only for a
    fine-tuning launch that names no model option (the source's is used). ``run_dir`` is None when
    --out was left out (rank 0 names the run when it creates it). ``folder`` is what the run
    folder held when this was decided (the set-up checks, under the run's lock, that it still
    does); ``checkpoint`` is the last.pt a resume continues from, read once; ``notes`` are said
    once the run has started.
    """

    model_config: Optional[ModelConfig]
    config: TrainConfig
    mode: str
    run_dir: Optional[Path] = None
    folder: Optional[Folder] = None
    checkpoint: Optional[Checkpoint] = None
    notes: tuple[str, ...] = field(default=())

    @property
    def resuming(self) -> bool:
        return self.mode == "resume"


# ----------------------------------------------------------------------------------------------
# The two ways in


def plan_launch(explicit: dict, config_file: Optional[str] = None) -> Launch:
    """The launch of the given options: ``explicit`` ({option name: value}, None = not given) over
    a TOML file over, on --resume, the checkpoint's options over the defaults.

    On a resume a model option that is named must agree with the checkpoint; the others are the
    checkpoint's.
    """
    options, file_options = _given(explicit, config_file)
    notes: list[str] = []
    if _restarted(options.get("out"), options.get("resume")):
        options = {**options, "resume": True, "force": None, "init_from": None}
        notes.append(_restart_note(options["out"]))
    run_dir, folder, mode = decide(options.get("out"), bool(options.get("resume")), bool(options.get("force")))
    ckpt = _read_last(run_dir) if mode == "resume" else None
    if ckpt is not None:
        options = _checkpoint_options(ckpt, options)
    elif options.get("resume"):
        options = _launched_options(run_dir, options)
    elif options.get("init_from"):
        options = _init_from_options(options)
    try:
        model_config, config = _split(options, file_options, explicit, config_file)
    except TypeError as e:
        if ckpt is None:
            raise
        raise CheckpointError(f"cannot resume from {run_dir / 'last.pt'}: its options are damaged ({e})") from None
    return _settle(config, model_config, run_dir, folder, mode, ckpt, notes)


def plan_configs(config: TrainConfig, model_config: Optional[ModelConfig] = None) -> Launch:
    """The launch of configs given as they are (the library's ``training.train``): on a resume they
    must agree with the checkpoint; ``model_config`` None is the checkpoint's model (a resume) or
    the default one."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    if model_config is not None:
        model_config.validate()
    check_contradictions(config.resume, config.force, config.init_from)
    notes: list[str] = []
    if _restarted(config.out, config.resume):
        config = replace(config, resume=True, force=False, init_from=None)
        notes.append(_restart_note(config.out))
    run_dir, folder, mode = decide(config.out, config.resume, config.force)
    ckpt = _read_last(run_dir) if mode == "resume" else None
    return _settle(config, model_config, run_dir, folder, mode, ckpt, notes)


def resolve_options(explicit: dict, config_file: Optional[str] = None) -> tuple[ModelConfig, TrainConfig]:
    """The configs a launch of these options trains with, without deciding its run folder unless it
    resumes (a sweep checks every point's options up front, and its points' folders may exist)."""
    options, file_options = _given(explicit, config_file)
    if options.get("resume"):
        launch = plan_launch(explicit, config_file)
        return launch.model_config, launch.config
    if options.get("init_from"):
        options = _init_from_options(options)
    return _split(options, file_options, explicit, config_file)


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


# ----------------------------------------------------------------------------------------------
# The decision


def decide(out: Optional[str], resume: bool, force: bool) -> tuple[Optional[Path], Optional[Folder], str]:
    """(run folder, what it holds now, mode), or the one refusal this launch gets. Reads only."""
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR naming the run to continue")
        return None, None, "new"
    path = Path(out).expanduser()
    folder = look(path)
    if folder.exists and not folder.is_dir:
        what = "a symbolic link to no folder" if folder.is_link else "a file"
        raise RunDirError(f"run directory {path} is {what}; choose another --out")
    if folder.cut_short and not force:
        raise RunDirError(f"{path} holds {folder.cut_short}, the earlier run's files from a --force "
                          f"replacement that was killed half-way; keep what you want of it, remove it, "
                          f"then run the command again (or pass --force to replace both)")
    if resume:
        if folder.has_last:
            return path, folder, "resume"
        if not folder.unstarted:
            raise RunDirError(f"cannot resume: {path} has no last.pt (start it without --resume)")
        check_obstacles(path)
        return path, folder, "fill"
    if not folder.exists:
        return path, folder, "new"
    if not folder.empty and not folder.unstarted:
        # A run killed before its first checkpoint is started again in place without --force; a
        # run with checkpoints, or a folder charlm did not make, needs a decision.
        if not force:
            raise RunDirError(f"run directory {path} already exists; pass --resume to continue it "
                              f"or --force to replace it")
        if not folder.is_run:
            raise RunDirError(f"{path} is not a charlm run directory (it has no {RUN_MARKER} marker); "
                              f"refusing to delete it with --force")
        if folder.is_link:
            raise RunDirError(f"run directory {path} is a symbolic link; refusing to replace what it "
                              f"points to with --force (give the folder itself)")
    check_obstacles(path)
    return path, folder, "fill"


def _restarted(out: Optional[str], resume: Any) -> bool:
    """A worker group torchrun restarted, on a run that has a checkpoint to go on from. (A run
    killed before its first checkpoint is simply started again: "fill" reuses it.)"""
    return (distributed.restart_count() > 0 and not resume and out is not None
            and (Path(out).expanduser() / "last.pt").is_file())


def _restart_note(out: str) -> str:
    return f"torchrun restart {distributed.restart_count()}: resuming from {Path(out).expanduser() / 'last.pt'}"


# ----------------------------------------------------------------------------------------------
# Where the options come from


def _given(explicit: dict, config_file: Optional[str]) -> tuple[dict, dict]:
    """(the options given: flags over the TOML file, the file's own), with what decides the run
    folder checked before the folder is looked at."""
    file_options = load_toml(config_file) if config_file else {}
    options = {**file_options, **{k: v for k, v in explicit.items() if v is not None}}
    try:
        check_launch_options(options.get("out"), options.get("resume"), options.get("force"))
        check_contradictions(options.get("resume"), options.get("force"), options.get("init_from"))
    except ConfigError as e:
        raise _naming_the_file(e, file_options, explicit, config_file) from None
    return options, file_options


def _split(options: dict, file_options: dict, explicit: dict,
           config_file: Optional[str]) -> tuple[ModelConfig, TrainConfig]:
    try:
        return split_options(options)
    except ConfigError as e:
        raise _naming_the_file(e, file_options, explicit, config_file) from None


def _naming_the_file(e: ConfigError, file_options: dict, explicit: dict, config_file: Optional[str]) -> ConfigError:
    """A bad value that came from the file (not a flag) says which file, so it can be found."""
    from_file = [k for k in file_options if explicit.get(k) is None]
    if any(f"--{k.replace('_', '-')} " in f"{e} " for k in from_file):
        return ConfigError(f"{config_file}: {e}")
    return e


def _read_last(run_dir: Path) -> Checkpoint:
    """The run's last.pt, read once for the whole launch, if a resume can continue from it."""
    path = run_dir / "last.pt"
    ckpt = read_checkpoint(path)
    check_resumable(ckpt, path)
    return ckpt


def _checkpoint_options(ckpt: Checkpoint, options: dict) -> dict:
    """The options the run was trained with, under the ones given now."""
    keys = config_keys()
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
    return {**saved, **options}


def _launched_options(run_dir: Path, options: dict) -> dict:
    """A run killed before its first checkpoint, started over: the options it was launched with
    (its config.toml, when the crash left a whole one) under the ones given now."""
    base: dict = {}
    try:
        if (run_dir / "config.toml").is_file():
            base = load_toml(run_dir / "config.toml")
    except ConfigError:
        pass
    for k in ("resume", "force", "out"):
        base.pop(k, None)
    return {**base, **options}


def _init_from_options(options: dict) -> dict:
    """Fine-tuning: the source checkpoint's model options under the given ones (the set-up refuses
    a named architecture that differs from it)."""
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


# ----------------------------------------------------------------------------------------------
# A resume: the checkpoint's model and tokenizer win; options may only agree with them


_MUST_AGREE = ("tokenizer", "vocab_size", "normalize", "min_char_count", "val_fraction", "seq_len",
               "batch_size", "state_reset", "records", "record_sep")


def _settle(config: TrainConfig, model_config: Optional[ModelConfig], run_dir: Optional[Path],
            folder: Optional[Folder], mode: str, ckpt: Optional[Checkpoint], notes: list[str]) -> Launch:
    """The last checks that need the decision, and the Launch."""
    if ckpt is not None:
        model_config, config = _check_resume(ckpt, run_dir / "last.pt", config, model_config)
    elif config.resume:
        notes.append(f"{run_dir} has no checkpoint yet: starting the run from step 0")
    if model_config is None and not config.init_from:
        model_config = ModelConfig()
    return Launch(model_config=model_config, config=config, mode=mode, run_dir=run_dir,
                  folder=folder, checkpoint=ckpt, notes=tuple(notes))


def _check_resume(ckpt: Checkpoint, path: Path, config: TrainConfig,
                  model_config: Optional[ModelConfig]) -> tuple[ModelConfig, TrainConfig]:
    """The checkpoint checked against this launch; the configs it implies."""
    _check_run_id(ckpt, path.parent)
    Progress.from_dict(ckpt.progress, str(path))
    if model_config is None:
        try:
            model_config = ModelConfig(**ckpt.model_config).validate()
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"cannot resume from {path}: invalid model config ({e})") from None
    _check_compatible(ckpt, model_config, config)
    if config.corpus is None:
        corpus = ckpt.corpus_path
        if corpus is None:
            raise CheckpointError(f"cannot resume from {path}: its corpus entry names no path")
        config = replace(config, corpus=corpus)
    saved_world = ckpt.world_size if ckpt.world_size is not None else 1
    world = distributed.world_size_from_env()
    if saved_world != world:
        raise ConfigError(f"cannot resume: the run was trained with {saved_world} processes, this "
                          f"launch has {world}; resume with the same --nproc_per_node")
    return model_config, config


def _check_run_id(ckpt: Checkpoint, run_dir: Path) -> None:
    """A last.pt copied in from another run is refused: resuming it would overwrite this run's
    best.pt with the other run's model and cut its metrics.jsonl."""
    marker = read_marker(run_dir)
    theirs = ckpt.run_id
    if marker is not None and theirs is not None and theirs != marker["run_id"]:
        raise RunDirError(f"cannot resume: {run_dir / 'last.pt'} belongs to another run (run id "
                          f"{str(theirs)[:12]}, this folder's is {marker['run_id'][:12]}); it was copied "
                          f"from elsewhere: put back this run's last.pt, or start a new run")


def _check_compatible(ckpt: Checkpoint, model_config: ModelConfig, config: TrainConfig) -> None:
    saved_model = ckpt.model_config
    for key, value in asdict(model_config).items():
        # A key an older checkpoint lacks had its default then (e.g. weight_drop 0).
        saved = saved_model.get(key, getattr(ModelConfig(), key))
        if key not in DERIVED and saved != value:
            option = "--" + option_name(key).replace('_', '-')
            raise ConfigError(f"cannot resume: the checkpoint's model has {option} {saved}, "
                              f"but {value} was given (drop the option, or start a new run)")
    saved_train = ckpt.train_config
    for key in (k for k in _MUST_AGREE if hasattr(config, k)):
        # A key an older checkpoint lacks had its default then (e.g. state_reset "epoch").
        if saved_train.get(key, getattr(TrainConfig(), key)) != getattr(config, key):
            option = f"--{key.replace('_', '-')}"
            raise ConfigError(f"cannot resume: the run was trained with {option} {saved_train.get(key)}, "
                              f"but {getattr(config, key)} was given (drop the option, or start a new run)")
