"""What sft offers, for the command line and its help: the commands with their one-line meanings, and the
config groups with their options (the configs directory). Light: nothing here imports torch or Hydra's
runtime, so `sft --help` answers at once."""

from __future__ import annotations

from pathlib import Path

COMMANDS = {
    "train": "fine-tune an encoder (Hydra app): sft train [+strategy=mix|alternate] [key=value ...]",
    "eval": "evaluate a checkpoint or a run's best checkpoint: sft eval checkpoint=PATH [split=validation]",
    "predict": "label new texts: sft predict checkpoint=PATH input=FILE output=FILE",
    "export": "an ONNX model that serves without sft: sft export RUN format=onnx [quantize=int8]",
    "select": "the texts to label next: sft select checkpoint=RUN n=N output=FILE (cold start: pool=FILE)",
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


# Examples of each command, with what each does: the one list that `sft --help`, `sft COMMAND --help` and
# the README's command list show (tests/test_readme.py holds the README to it).
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "train": [
        ("sft train", "supervised baseline on the embedded default"),
        ("sft train +strategy=mix lambda=0.5", "semi-supervised, both losses every step"),
        ("sft train +strategy=alternate lambda=0.5", "labeled step, unlabeled step, ..."),
        ("sft train +recipe=best", "few labels + unlabeled texts: the recommended recipe"),
        ("sft train +recipe=self_training", "the earlier self-training recipe (fresh students)"),
        ("sft train -m +strategy=alternate,mix lambda=0.1,0.5", "Hydra multirun: 4 jobs, one run dir each"),
        ("sft train trainer.nproc=2", "2 worker processes (torch.distributed, DDP)"),
        ("sft train resume=auto", "continue the same command's newest run exactly"),
        ("sft train data=files data.train=train.csv --help", "the keys that an option brings, with its values"),
    ],
    "eval": [
        ("sft eval checkpoint=runs/RUN", "a run dir means its best checkpoint, on the run's own test split"),
        ("sft eval checkpoint=runs/RUN/checkpoints/step-000100 split=validation", "one checkpoint, validation split"),
        ("sft eval checkpoint=runs/RUN data=files data.test=test.csv", "other labeled data (the run's label names)"),
    ],
    "predict": [
        ("sft predict checkpoint=runs/RUN input=texts.csv output=pred.jsonl", "the best checkpoint of a run"),
        ("sft predict checkpoint=runs/RUN input=texts.txt output=pred.csv", "one text per line"),
        ("sft predict checkpoint=runs/RUN input=pairs.csv output=pred.csv text_column=q text_pair_column=a",
         "sentence pairs"),
    ],
    "export": [
        ("sft export runs/RUN format=onnx", "runs/RUN/onnx/: onnxruntime or Optimum, no sft needed"),
        ("sft export runs/RUN format=onnx quantize=int8", "runs/RUN/onnx-int8/: int8 weights, faster on CPU"),
        ("sft predict checkpoint=runs/RUN/onnx input=texts.csv output=pred.csv", "sft predict runs the export too"),
    ],
    "select": [
        ("sft select checkpoint=runs/RUN n=50 output=round2.csv", "50 of the run's unlabeled texts, to label next"),
        ("sft select n=50 pool=texts.csv output=round1.csv", "cold start: 50 texts that stand for the pool"),
        ("sft select checkpoint=runs/RUN2 n=50 output=round3.csv previous=round2.csv",
         "and how many predictions changed since round 2"),
        ("sft train data=files data.train=[round1.csv,round2.csv] data.unlabeled=texts.csv",
         "train on the rounds labeled so far"),
    ],
    "report": [
        ("sft report runs/sweeps/SWEEP", "tables and plots over runs and sweeps"),
    ],
}
# The examples `sft --help` shows (the rest are on each command's own help page).
USAGE_EXAMPLES = (("train", 0), ("train", 1), ("train", 3), ("train", 5), ("train", 6), ("eval", 0))
