"""What sft offers, for the command line and its help: the commands with their one-line meanings, and the
config groups with their options (the configs directory). Light: nothing here imports torch or Hydra's
runtime, so `sft --help` answers at once."""

from __future__ import annotations

from pathlib import Path

COMMANDS = {
    "train": "fine-tune an encoder (Hydra app): sft train [+strategy=mix|alternate] [key=value ...]",
    "eval": "evaluate a checkpoint or a run's best checkpoint: sft eval checkpoint=PATH [split=validation]",
    "predict": "label new texts: sft predict checkpoint=PATH input=FILE output=FILE",
    "report": "tables and plots over run and sweep dirs: sft report PATH... [metric=test/accuracy]",
}
HYDRA_COMMANDS = ("train", "eval")


def config_dir() -> Path:
    """The Hydra config directory: the installed package data, or the repository's configs/. Its files
    compose on the schema's base configs, which this registers with Hydra first."""
    from sftcli.config import register

    register()
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files("sftcli.configs")))
        if (path / "train.yaml").is_file():
            return path
    except ModuleNotFoundError:
        pass
    raise RuntimeError("sft's configs directory is missing from the installation")


def config_groups() -> dict[str, list[str]]:
    root = config_dir()
    groups = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")):
        groups[d.name] = sorted(f.stem for f in d.glob("*.yaml"))
    return groups
