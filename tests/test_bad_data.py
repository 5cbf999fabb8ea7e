"""Bad data and bad models (shared/RELIABILITY.md E.14, E.15): one clear message naming the key, file and
row/line/column, exit code 2, no traceback. Messages are checked on load_data directly (fast); every case
then runs once through the real CLI for the exit code and the absence of a traceback."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sftcli.config import DataConfig, ModelConfig
from sftcli.data import load_data
from sftcli.errors import DataError, ModelError


def write_csv(path: Path, records: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def labeled(n_per_class: int, labels: tuple[str, ...] = ("a", "b"), start: int = 0) -> list[dict]:
    return [{"text": f"text {start + i} {label}", "label": label} for i in range(n_per_class) for label in labels]


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One prepared file (or directory) per bad case."""
    d = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"train": write_csv(d / "train.csv", labeled(20))}
    (d / "train.xlsx").write_bytes(b"PK\x03\x04")
    f["xlsx"] = d / "train.xlsx"
    f["txt"] = d / "texts.txt"
    f["txt"].write_text("one text\nanother\n")
    f["jsonl"] = d / "bad.jsonl"
    f["jsonl"].write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": "b"}\n{"text": "z", label: "a"}\n')
    f["header_only"] = d / "header.csv"
    f["header_only"].write_text("text,label\n")
    f["blank_texts"] = write_csv(d / "blank.csv", [{"text": t, "label": "a"} for t in ("", "   ", "\t")])
    f["test_unseen"] = write_csv(d / "test.csv", [{"text": "t1", "label": "a"}, {"text": "t2", "label": "other"}])
    f["val_unseen"] = d / "val.jsonl"
    f["val_unseen"].write_text('{"text": "v1", "label": "zzz"}\n')
    f["ragged"] = d / "ragged.csv"
    f["ragged"].write_text("text,label\nfine,a\ntoo,many,fields\n")
    f["empty_label"] = write_csv(d / "nolabel.csv", [{"text": "t1", "label": "a"}, {"text": "t2", "label": ""}])
    few = labeled(20, ("a",)) + labeled(3, ("b",), start=100)
    f["few"] = write_csv(d / "few.csv", few)
    f["not_a_model"] = d / "not_a_model"
    f["not_a_model"].mkdir()
    (f["not_a_model"] / "weights.bin").write_bytes(b"\0")
    f["custom_code"] = custom_code_model(d / "custom")
    f["hub"] = saved_hub(d / "hub")
    return f


def custom_code_model(path: Path) -> Path:
    """A tiny model directory whose config.json maps to custom code (auto_map) for an unknown model type;
    the code leaves a marker file when it runs."""
    from transformers import BertConfig, BertForSequenceClassification

    from sftcli.model import embedded_minilm_dir

    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    BertForSequenceClassification(config).save_pretrained(path)
    data = json.loads((path / "config.json").read_text())
    data.update(model_type="sftcustom", auto_map={"AutoConfig": "modeling_sft.SftConfig",
                                                  "AutoModelForSequenceClassification": "modeling_sft.SftForSeq"})
    (path / "config.json").write_text(json.dumps(data))
    (path / "modeling_sft.py").write_text(
        "import os\nfrom pathlib import Path\n\nfrom transformers import BertConfig, BertForSequenceClassification\n\n"
        "Path(os.environ['SFT_TEST_MARKER']).write_text('ran')\n\n\n"
        "class SftConfig(BertConfig):\n    model_type = 'sftcustom'\n\n\n"
        "class SftForSeq(BertForSequenceClassification):\n    config_class = SftConfig\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (path / name).write_bytes((embedded_minilm_dir() / name).read_bytes())
    return path


def saved_hub(path: Path) -> Path:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(labeled(10))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(path))
    return path


def files(**kw) -> DataConfig:
    return DataConfig(source="files", **{"labels_per_class": None, **{k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in kw.items()}})


# ----------------------------------------------------------------------------------------------------
# Messages (unit level)

CASES = {
    # name: (DataConfig keyword arguments, substrings of the message)
    "missing file": (lambda f: dict(train=f["train"].parent / "nope.csv"), ["data.train", "file not found", "nope.csv"]),
    "unsupported extension": (lambda f: dict(train=f["xlsx"]),
                              ["data.train", "unsupported file type .xlsx", "train.xlsx", ".csv, .tsv"]),
    "txt as labeled train": (lambda f: dict(train=f["txt"]),
                             ["data.train", "unsupported file type .txt", ".txt holds unlabeled texts only"]),
    "malformed jsonl line": (lambda f: dict(train=f["jsonl"]), ["data.train", "malformed JSON line", "bad.jsonl:3"]),
    "missing text column": (lambda f: dict(train=f["train"], text_column="sentence"),
                            ["train.csv", "no text column 'sentence'", "data.text_column", "columns found: ['text', "
                             "'label']"]),
    "missing label column": (lambda f: dict(train=f["train"], label_column="y"),
                             ["train.csv", "no label column 'y'", "data.label_column", "columns found"]),
    "missing pair column": (lambda f: dict(train=f["train"], text_pair_column="hyp"),
                            ["train.csv", "no text pair column 'hyp'", "data.text_pair_column"]),
    "empty dataset": (lambda f: dict(train=f["header_only"]), ["data.train", "header.csv", "empty dataset"]),
    "only blank texts": (lambda f: dict(train=f["blank_texts"]),
                         ["blank.csv", "empty dataset", "all 3 row(s) have an empty or whitespace-only text"]),
    "test label unseen in train": (lambda f: dict(train=f["train"], test=f["test_unseen"]),
                                   ["test.csv (data.test)", "row 2", "'other'", "never occurs in train",
                                    "train labels: ['a', 'b']"]),
    "validation label unseen in train": (lambda f: dict(train=f["train"], validation=f["val_unseen"]),
                                         ["val.jsonl (data.validation)", "row 1", "'zzz'", "never occurs in train"]),
    "malformed csv row": (lambda f: dict(train=f["ragged"]), ["data.train", "ragged.csv", "line 3"]),
    "empty label": (lambda f: dict(train=f["empty_label"]), ["nolabel.csv", "row 2 has an empty label"]),
    "fewer than K": (lambda f: dict(train=f["few"], labels_per_class=5),
                     ["data.labels_per_class=5", "class 'b' has only", "few.csv", "after carving"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_message(bad: dict[str, Path], case: str) -> None:
    make, expected = CASES[case]
    with pytest.raises(DataError) as info:
        load_data(files(**make(bad)), seed=0)
    message = str(info.value)
    assert all(part in message for part in expected), message
    assert "\n" not in message


def test_hub_missing_split_is_named_with_the_splits_found(bad: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"data.test_split: split 'dev' not in dataset .*splits found: \['train', "
                                        r"'test'\]"):
        load_data(DataConfig(source="hub", name=str(bad["hub"]), test_split="dev", labels_per_class=None), 0)
    with pytest.raises(DataError, match="data.name: no such dataset directory"):
        load_data(DataConfig(source="hub", name=str(bad["hub"]) + "-missing", labels_per_class=None), 0)


def test_blank_texts_are_dropped_with_a_count_not_refused(tmp_path: Path) -> None:
    records = labeled(10)
    records[4]["text"] = "  \t "
    records[7]["text"] = ""
    bundle = load_data(files(train=write_csv(tmp_path / "t.csv", records)), seed=0)
    assert len(bundle.labeled) + len(bundle.validation) == 18
    assert any("dropped 2 row(s) with an empty or whitespace-only text" in n and "rows 5, 8" in n
               for n in bundle.notes)


def test_a_label_that_is_not_a_scalar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x", "y"]}\n')
    with pytest.raises(DataError, match=r"row 2 has label \['x', 'y'\] \(list\); a label must be a string or an "):
        load_data(files(train=path), seed=0)


def test_txt_unlabeled_cannot_supply_a_pair_column(tmp_path: Path, bad: dict[str, Path]) -> None:
    unl = tmp_path / "u.txt"
    unl.write_text("one\ntwo\n")
    train = write_csv(tmp_path / "p.csv", [{**r, "hyp": "h"} for r in labeled(10)])
    with pytest.raises(DataError, match=r"u.txt \(data.unlabeled\): a .txt file holds one text per line"):
        load_data(files(train=train, unlabeled=unl, text_pair_column="hyp"), seed=0)


@pytest.mark.parametrize("target,expected", [("not_a_model", "no config.json"), ("train", "is a file")])
def test_model_path_that_is_not_a_model(bad: dict[str, Path], target: str, expected: str) -> None:
    from sftcli.model import build_model

    with pytest.raises(ModelError, match=expected):
        build_model(ModelConfig(source="hf", name_or_path=str(bad[target])), ["a", "b"], 0)


def test_custom_code_runs_only_with_trust_remote_code(bad: dict[str, Path], tmp_path: Path) -> None:
    # In a subprocess: transformers imports the custom module into its own modules cache (here, tmp).
    marker = tmp_path / "marker"
    script = ("import sys\nfrom sftcli.config import ModelConfig\nfrom sftcli.model import build_model\n"
              "from sftcli.errors import ModelError\n"
              f"cfg = ModelConfig(source='hf', name_or_path={str(bad['custom_code'])!r})\n"
              "try:\n    build_model(cfg, ['a', 'b'], 0)\nexcept ModelError as exc:\n    print('REFUSED', exc)\n"
              "cfg.trust_remote_code = True\nm = build_model(cfg, ['a', 'b'], 0)\nprint('LOADED', type(m).__name__)\n")
    env = {**os.environ, "SFT_TEST_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    refused = next(line for line in proc.stdout.splitlines() if line.startswith("REFUSED"))
    assert "needs custom code" in refused and "model.trust_remote_code=true" in refused
    assert "LOADED SftForSeq" in proc.stdout and marker.read_text() == "ran"


# ----------------------------------------------------------------------------------------------------
# Through the CLI: exit code 2, one "sft: error:" line with the message, no traceback


# The issue's list, through the CLI (the other cases above share the same error path).
CLI_CASES = ("missing file", "unsupported extension", "malformed jsonl line", "missing text column",
             "missing label column", "empty dataset", "only blank texts", "test label unseen in train",
             "validation label unseen in train", "fewer than K")


def cli_cases(f: dict[str, Path]) -> dict[str, tuple[list[str], list[str]]]:
    out = {}
    for name in CLI_CASES:
        make, expected = CASES[name]
        out[name] = (["data=files"] + [f"data.{k}={v}" for k, v in make(f).items()], expected)
    train = f"data.train={f['train']}"
    out["model dir without config.json"] = (["data=files", train, "model=hf", f"model.name_or_path={f['not_a_model']}"],
                                            ["model.name_or_path", "not_a_model", "no config.json"])
    out["custom code without trust_remote_code"] = (
        ["data=files", train, "model=hf", f"model.name_or_path={f['custom_code']}"],
        ["needs custom code", "model.trust_remote_code=true"])
    return out


@pytest.mark.slow  # about 30 s on 2 cores; CI runs it after the default suite
def test_every_bad_case_through_the_cli(sft, bad: dict[str, Path], tmp_path: Path) -> None:
    cases = cli_cases(bad)
    marker = tmp_path / "marker"

    def run(item: tuple[str, tuple[list[str], list[str]]]) -> str | None:
        name, (args, expected) = item
        proc = sft("train", *args, "trainer.max_steps=1", f"run_name={name.replace(' ', '-')}", timeout=180,
                   env={"SFT_TEST_MARKER": str(marker)})
        errors = [line for line in proc.stderr.splitlines() if line.startswith("sft: error:")]
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit code {proc.returncode}")
        if "Traceback" in proc.stderr:
            problems.append("a traceback")
        if len(errors) != 1:
            problems.append(f"{len(errors)} 'sft: error:' lines")
        missing = [part for part in expected if not errors or part not in errors[0]]
        if missing:
            problems.append(f"message lacks {missing}")
        return f"{name}: {', '.join(problems)}\n{proc.stderr[-1500:]}" if problems else None

    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: each is mostly interpreter start-up
        failures = [r for r in pool.map(run, cases.items()) if r]
    assert not failures, "\n\n".join(failures)
    assert not marker.exists(), "custom model code ran without model.trust_remote_code=true"


def test_debug_switch_shows_the_traceback(sft, bad: dict[str, Path]) -> None:
    proc = sft("train", "data=files", f"data.train={bad['jsonl']}", "debug=true")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "bad.jsonl:3" in proc.stderr
