"""`sft COMMAND --help` on every command: its own keys with their meanings, at once (no torch), and
Hydra's own flags still Hydra's."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from sftcli import helptext
from sftcli.cli import config_dir


def key_lines(text: str) -> dict[str, str]:
    """{key: meaning} from a help page's key section ("  key=value  meaning" lines)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^  ([a-z_][\w.]*)=(\S*)\s{2,}(.*)$", line)
        if m:
            out[m.group(1)] = m.group(3).strip()
    return out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_predict_help_lists_its_keys_with_meanings(sft, flag) -> None:
    proc = sft("predict", flag)
    assert proc.returncode == 0, proc.stderr
    keys = key_lines(proc.stdout)
    for key in ("checkpoint", "input", "output", "text_column", "text_pair_column", "batch_size", "max_length",
                "device", "precision"):
        assert keys.get(key), f"{key} missing or without a meaning:\n{proc.stdout}"
    # Defaults and choices come from the typed definition (PredictConfig).
    assert re.search(r"^  batch_size=128\s", proc.stdout, re.M)
    assert "'fp32' | 'bf16' | 'fp16'" in keys["precision"]
    assert "sft predict checkpoint=" in proc.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_report_help_lists_its_options(sft, flag) -> None:
    proc = sft("report", flag)
    assert proc.returncode == 0, proc.stderr
    for key in ("metric=", "group_by=", "out=", "plots="):
        assert re.search(rf"^  {key}\s+\S", proc.stdout, re.M), key


def test_eval_help_shows_evals_keys_groups_and_examples(sft, tmp_path) -> None:
    proc = sft("eval", "--help")
    assert proc.returncode == 0, proc.stderr
    keys = key_lines(proc.stdout)
    assert {"checkpoint", "split", "batch_size", "device", "precision"} <= set(keys)
    assert all(keys.values()), keys
    assert re.search(r"^  data: files, hub, trec6", proc.stdout, re.M)
    for train_group in ("loss", "optim", "recipe", "strategy", "trainer", "model"):
        assert not re.search(rf"^  {train_group}:", proc.stdout, re.M), train_group
    assert "sft eval checkpoint=" in proc.stdout and "sft train" not in proc.stdout
    assert not (tmp_path / "runs").exists()  # help makes no run dir


def test_train_help_shows_each_key_with_its_yaml_comment(sft) -> None:
    proc = sft("train", "model=tiny", "trainer.max_steps=7", "--help")
    assert proc.returncode == 0, proc.stderr
    keys = key_lines(proc.stdout)
    # Values as composed for this command line, each with the comment of the file that defines it.
    assert re.search(r"^  trainer.max_steps=7\s+optimizer steps$", proc.stdout, re.M)
    assert re.search(r"^  model.max_length=64\s+tokens per text \(longer texts are cut\)", proc.stdout, re.M)
    assert keys["seed"].startswith("one seed for")
    assert "strategy: alternate, mix" in proc.stdout and "model: hf, minilm, tiny" in proc.stdout


@pytest.mark.parametrize("command,overrides", [
    ("train", []), ("train", ["+strategy=mix"]), ("train", ["+strategy=alternate"]),
    ("train", ["+recipe=self_training"]), ("train", ["data=files"]), ("train", ["data=hub"]),
    ("train", ["model=hf"]), ("train", ["model=tiny"]), ("eval", []), ("eval", ["data=files"]),
])
def test_every_key_of_every_help_page_has_a_comment(command, overrides) -> None:
    data, _ = helptext.compose(command, overrides)
    text = helptext.hydra_command_help(command, overrides)
    keys = key_lines(text)
    composed = {k for k, _ in helptext._leaves(data)}
    assert set(keys) == composed
    assert not [k for k, meaning in keys.items() if not meaning]


def test_a_recipes_own_note_does_not_replace_the_keys_meaning() -> None:
    comments = helptext.key_comments("train", {"recipe": "self_training", "strategy": "mix", "model": "minilm"})
    assert comments["model.head_pooling"].startswith("what the classifier reads")
    assert comments["strategy.name"].startswith("one forward over labeled + unlabeled")  # mix's, the chosen one
    doc = helptext.read_yaml_doc(config_dir() / "recipe" / "self_training.yaml")
    assert doc.package == "_global_"
    assert doc.comments["model.head_pooling"].startswith("all-MiniLM-L6-v2 was trained")  # nested keys: dotted


@pytest.mark.parametrize("text,expected", [
    (" 0   # a comment", ("0", "a comment")),
    (" ${now:%Y%m%d-%H%M%S-%f}  # name", ("${now:%Y%m%d-%H%M%S-%f}", "name")),
    (" 'a # b'  # quoted", ("'a # b'", "quoted")),
    (" val#ue", ("val#ue", "")),
])
def test_the_comment_reader_splits_values_from_comments(text, expected) -> None:
    assert helptext.split_comment(text) == expected


def test_help_of_every_command_does_not_import_torch() -> None:
    code = ("import sys, io, contextlib\nfrom sftcli import cli\n"
            "for argv in (['train', '--help'], ['eval', '-h'], ['predict', '--help'], ['report', '--help'],\n"
            "             ['train', '+recipe=self_training', '--help'], ['train', '--cfg', 'job']):\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        try:\n            cli.main(argv)\n"
            "        except SystemExit as e:\n            assert e.code == 0, (argv, e.code)\n"
            "    assert any(w in buf.getvalue() for w in ('keys', 'options', 'trainer:')), argv\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)



def test_a_refused_train_command_exits_2_without_importing_torch(tmp_path) -> None:
    # A mistake in a key is found from the composed config alone: no second or more of torch's import first.
    code = ("import sys\nfrom sftcli import cli\n"
            "try:\n    cli.main(['train', 'model=tiny', 'loss.self_training_top=2'])\n"
            "except SystemExit as e:\n    assert e.code == 2, e.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "loss.self_training_top" in proc.stderr and not (tmp_path / "runs").exists()

def test_help_with_a_mistyped_group_option_exits_2(sft) -> None:
    proc = sft("train", "strategy=mix", "--help")
    assert proc.returncode == 2 and "+strategy=mix" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags,expected", [
    (["--cfg", "job"], r"^trainer:\n  max_steps: 150"),
    (["--info"], r"Hydra 1\.\d"),
    (["--hydra-help"], r"== Flags =="),
    (["--shell-completion", "install=bash"], r"hydra_bash_completion"),
])
def test_hydras_own_flags_keep_working(sft, tmp_path, flags, expected) -> None:
    proc = sft("train", *flags)
    assert proc.returncode == 0, proc.stderr
    assert re.search(expected, proc.stdout, re.M), proc.stdout[:2000]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["", "train", "predict"])
def test_help_into_a_pipe_that_closes_early_ends_without_a_traceback(command: str) -> None:
    # `sft train --help | head -1`: the reader leaves after one line, and the rest of the help meets a
    # closed pipe.
    args = " ".join(filter(None, [command, "--help"]))
    proc = subprocess.run(["sh", "-c", f"{shlex.quote(sys.executable)} -m sftcli {args} | head -1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith("usage: sft")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
