"""What the commands tell the user at the end, and what a refused command leaves behind (nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_train_and_eval_end_with_the_run_dirs_absolute_path(sft, tmp_path: Path) -> None:
    train = sft("train", *TINY, "run_name=r", check=True)
    run = (tmp_path / "runs" / "r").resolve()
    assert last_line(train.stderr) == f"run dir: {run}"
    assert (run / "summary.json").is_file()
    ev = sft("eval", "checkpoint=runs/r", "run_name=e", check=True)
    out = (tmp_path / "runs" / "eval" / "e").resolve()
    assert last_line(ev.stdout) == f"run dir: {out}"
    assert (out / "eval.json").is_file()


def test_eval_without_a_checkpoint_says_so_once_and_leaves_nothing(sft, tmp_path: Path) -> None:
    proc = sft("eval")
    assert proc.returncode == 2
    assert proc.stderr.count("is required") == 1 and "(1 problem(s))" in proc.stderr
    assert "sft eval checkpoint=PATH" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [
    ["checkpoint=missing"],            # refused while validating, before Hydra
    ["checkpoint=not_a_checkpoint"],   # refused inside the job, after Hydra made its run dir
    ["--help"],
    ["checkpoint=missing", "-h"],
])
def test_a_refused_or_help_eval_leaves_no_directory(sft, tmp_path: Path, args) -> None:
    (tmp_path / "not_a_checkpoint").mkdir()
    proc = sft("eval", *args)
    assert proc.returncode == (0 if {"-h", "--help"} & set(args) else 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_refused_eval_keeps_the_runs_that_were_there(sft, tmp_path: Path) -> None:
    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    (tmp_path / "not_a_checkpoint").mkdir()
    assert sft("eval", "checkpoint=not_a_checkpoint").returncode == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["earlier"]


def test_a_train_refused_inside_the_job_leaves_nothing(sft, tmp_path: Path) -> None:
    proc = sft("train", *TINY, "data=files", "data.train=missing.csv")
    assert proc.returncode == 2 and "missing.csv" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override,names", [
    # The recipe re-labels every 150 steps: in 30 steps no self-training round would happen.
    (["+recipe=self_training", "trainer.max_steps=30"], ["loss.self_training_every", "trainer.max_steps=30"]),
    (["+strategy=mix", "data.labels_per_class=null"], ["data.labels_per_class", "needs unlabeled texts"]),
    (["data=files", "data.train=train.csv", "+strategy=alternate"], ["data.labels_per_class", "data.unlabeled"]),
    (["loss.self_training_weight=1"], ["loss.self_training_weight", "without a strategy"]),
])
def test_what_needs_unlabeled_texts_is_checked_before_loading_anything(sft, tmp_path: Path, override, names) -> None:
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    proc = sft("train", *TINY, *override)
    assert proc.returncode == 2, proc.stderr
    for name in names:
        assert name in proc.stderr
    # Refused from the config alone: no data read, no model built, no run dir.
    assert "data: " not in proc.stderr and "model: " not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cache_lines_and_inapplicable_levers_are_debug_lines_kept_in_train_log(sft, tmp_path: Path) -> None:
    # head_pooling=mean: the first-token-only last layer does not apply, which is a note, not news.
    proc = sft("train", *TINY, "+strategy=mix", "model.head_pooling=mean", "run_name=r", check=True)
    log = (tmp_path / "runs" / "r" / "train.log").read_text()
    cache = r"data: (tokenised|token ids of) \d+ texts"
    assert len(re.findall(cache, log)) == 4  # labeled, validation, test, unlabeled
    assert "teacher cache: " in log and "trainer.cls_only_last_layer does not apply" in log
    assert " DEBUG data: " in log
    console = proc.stderr
    assert not re.search(cache, console)
    assert "teacher cache" not in console and "does not apply" not in console
    # What a user needs stays on the console.
    for line in ("data: labeled 96", "model: SftEncoderForSequenceClassification (BertModel, head reads mean", "training: steps 0 -> 4", "done: best"):
        assert line in console, line


def test_log_lines_print_above_the_progress_bar_not_onto_its_line(sft, tmp_path: Path) -> None:
    # rich's switches for "this is an interactive terminal" (stdout and stderr share it, as on a tty).
    env = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"}
    proc = sft("train", *TINY, "trainer.max_steps=12", "trainer.eval_every=4", "trainer.progress=bar", env=env,
               merge_stderr=True, check=True)
    assert "\x1b[2K" in proc.stdout and "12/12" in proc.stdout  # the bar was drawn live
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", proc.stdout)
    log_line = re.compile(r"(step \d+: |training: steps|done: best|run dir: )")
    for line in re.split(r"[\r\n]", plain):
        m = log_line.search(line)
        assert m is None or m.start() == 0, f"a log line glued onto another: {line!r}"
    # Evaluation lines name their split.
    evals = [line for line in re.split(r"[\r\n]", plain) if re.match(r"step \d+: val accuracy=\S+ macro_f1=", line)]
    assert [line.split(":")[0] for line in evals] == ["step 4", "step 8", "step 12"]


def test_metric_lines_drop_the_group_of_every_key_float_or_not() -> None:
    from sftcli.runlog import format_metrics

    values = {"self_training/kept": 0.50012, "self_training/labeler_step": 150, "val/accuracy": None}
    line = format_metrics(values, ["self_training/kept", "self_training/labeler_step", "val/accuracy", "absent"])
    assert line == "kept=0.5001 labeler_step=150"
