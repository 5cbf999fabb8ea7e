"""Data sources: every local file format, the hub path (offline, on local dataset folders), the
few-labels protocol, validation carving, the tokenisation cache, and end-to-end runs through the CLI."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, read_jsonl, run_dirs

from sftcli.config import DataConfig, ModelConfig
from sftcli.data import TextSet, encode, load_data
from sftcli.errors import DataError

# Two-step runs: enough to train, evaluate, checkpoint and summarise.
FAST = [*[o for o in TINY if not o.startswith("trainer.max_steps")], "trainer.max_steps=2"]


def rows(per_class: int, labels: tuple = ("neg", "pos"), start: int = 0) -> list[dict]:
    """Distinct texts, `per_class` of each label (interleaved), with an extra column."""
    out = []
    for i in range(per_class):
        for j, label in enumerate(labels):
            n = start + i * len(labels) + j
            out.append({"id": n, "text": f"text number {n} about {label}", "label": label})
    return out


def write(path: Path, records: list[dict]) -> Path:
    """Write records in the format named by the extension."""
    ext = path.suffix
    if ext == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif ext == ".tsv":  # the usual TSV: tab-separated, no quoting
        lines = ["\t".join(records[0])] + ["\t".join(str(v) for v in r.values()) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif ext == ".json":
        path.write_text(json.dumps(records, indent=1))
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), str(path))
    else:
        raise ValueError(ext)
    return path


def files(**splits: str | Path) -> DataConfig:
    return DataConfig(source="files", labels_per_class=None, **{k: str(v) for k, v in splits.items()})


# ----------------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_each_format_loads_train_and_test(tmp_path: Path, ext: str) -> None:
    train = rows(10)
    train[0]["text"] = 'a "quoted", comma text'  # csv quoting; tsv keeps quotes as they are
    test = rows(3, start=100)
    cfg = files(train=write(tmp_path / f"train{ext}", train), test=write(tmp_path / f"test{ext}", test))
    bundle = load_data(cfg, seed=0)
    assert bundle.label_names == ["neg", "pos"]
    assert sorted(bundle.labeled.texts + bundle.validation.texts) == sorted(r["text"] for r in train)
    assert bundle.test is not None and bundle.test.texts == [r["text"] for r in test]
    assert [bundle.label_names[i] for i in bundle.test.labels] == [r["label"] for r in test]


def test_integer_labels_keep_their_values_and_match_across_formats(tmp_path: Path) -> None:
    # Integer labels become names "1", "2", "10" (numeric order); a jsonl test file that spells them
    # as strings matches the csv's integers.
    train = [{"text": f"t{i}", "label": [10, 2, 1][i % 3]} for i in range(30)]
    test = [{"text": f"u{i}", "label": ["10", "2", "1"][i % 3]} for i in range(6)]
    cfg = files(train=write(tmp_path / "train.csv", train), test=write(tmp_path / "test.jsonl", test))
    bundle = load_data(cfg, seed=0)
    assert bundle.label_names == ["1", "2", "10"]
    assert [bundle.label_names[i] for i in bundle.test.labels] == [r["label"] for r in test]


def test_text_pairs_are_loaded_and_rows_with_an_empty_pair_dropped(tmp_path: Path) -> None:
    train = [{**r, "hyp": f"pair {i}"} for i, r in enumerate(rows(10))]
    train[3]["hyp"] = "   "
    cfg = files(train=write(tmp_path / "train.jsonl", train))
    cfg.text_pair_column = "hyp"
    bundle = load_data(cfg, seed=0)
    texts = bundle.labeled.texts + bundle.validation.texts
    pairs = bundle.labeled.pairs + bundle.validation.pairs
    assert len(texts) == 19 and train[3]["text"] not in texts
    assert all(p == f"pair {r['id']}" for t, p in zip(texts, pairs, strict=True) for r in train if r["text"] == t)
    assert any("dropped 1 row(s)" in n and "rows 4" in n for n in bundle.notes)


def test_unlabeled_txt_file_one_text_per_line(tmp_path: Path) -> None:
    unl = tmp_path / "unl.txt"
    unl.write_text("first text\n\n   \nsecond text\nthird text\n", encoding="utf-8")
    cfg = files(train=write(tmp_path / "train.csv", rows(10)), unlabeled=unl)
    cfg.text_column = "sentence_not_used_by_txt"  # a .txt file has no columns: each line is the text
    with pytest.raises(DataError, match="no text column 'sentence_not_used_by_txt'"):
        load_data(cfg, seed=0)
    cfg.text_column = "text"
    bundle = load_data(cfg, seed=0)
    assert bundle.unlabeled is not None and bundle.unlabeled.texts == ["first text", "second text", "third text"]
    assert bundle.unlabeled.labels is None
    assert any("dropped 2 row(s)" in n and "unl.txt" in n for n in bundle.notes)


# ----------------------------------------------------------------------------------------------------
# Validation / test / few-labels protocol


def test_missing_validation_is_carved_stratified_and_seeded(tmp_path: Path) -> None:
    cfg = files(train=write(tmp_path / "train.csv", rows(20, labels=("a", "b", "c"))))
    a, b, c = (load_data(cfg, seed=s) for s in (0, 0, 1))
    assert a.validation.texts == b.validation.texts and a.validation.texts != c.validation.texts
    assert np.bincount(a.validation.labels).tolist() == [2, 2, 2]  # 10% of each class
    assert not set(a.validation.texts) & set(a.labeled.texts) and len(a.labeled) == 54
    assert any("no validation split: carved 6" in n for n in a.notes)
    assert any("no test split: test metrics are skipped" in n for n in a.notes) and a.test is None


def test_given_validation_file_is_used_as_is(tmp_path: Path) -> None:
    cfg = files(train=write(tmp_path / "train.csv", rows(10)),
                validation=write(tmp_path / "val.parquet", rows(2, start=50)))
    bundle = load_data(cfg, seed=0)
    assert len(bundle.labeled) == 20 and len(bundle.validation) == 4
    assert not any("carved" in n for n in bundle.notes)


def test_labels_per_class_counts_determinism_and_rest_unlabeled(tmp_path: Path) -> None:
    cfg = files(train=write(tmp_path / "train.jsonl", rows(30, labels=("x", "y", "z"))))
    cfg.labels_per_class = 4
    a, b, c = (load_data(cfg, seed=s) for s in (0, 0, 7))
    assert np.bincount(a.labeled.labels).tolist() == [4, 4, 4]
    assert a.labeled.texts == b.labeled.texts and a.labeled.texts != c.labeled.texts
    # The rest of train (after carving validation) is the unlabeled set, without labels.
    assert a.unlabeled is not None and a.unlabeled.labels is None
    assert len(a.unlabeled) == 90 - len(a.validation) - 12
    assert not set(a.unlabeled.texts) & (set(a.labeled.texts) | set(a.validation.texts))
    assert any("labeled 12 (x=4, y=4, z=4)" in n for n in a.notes)
    assert any("become unlabeled (labels dropped)" in n for n in a.notes)


def test_labels_per_class_with_an_unlabeled_file_does_not_use_the_rest(tmp_path: Path) -> None:
    unl = tmp_path / "unl.txt"
    unl.write_text("\n".join(f"free text {i}" for i in range(7)))
    cfg = files(train=write(tmp_path / "train.csv", rows(10)), unlabeled=unl)
    cfg.labels_per_class = 2
    bundle = load_data(cfg, seed=0)
    assert len(bundle.labeled) == 4 and bundle.unlabeled.texts == [f"free text {i}" for i in range(7)]
    assert any("not used (an unlabeled source is given)" in n for n in bundle.notes)


def test_max_unlabeled_caps_with_a_seeded_sample(tmp_path: Path) -> None:
    cfg = files(train=write(tmp_path / "train.csv", rows(30)))
    cfg.labels_per_class, cfg.max_unlabeled = 2, 10
    full = load_data(DataConfig(**{**cfg.__dict__, "max_unlabeled": None}), seed=0)
    a, b = load_data(cfg, seed=0), load_data(cfg, seed=0)
    assert len(a.unlabeled) == 10 and a.unlabeled.texts == b.unlabeled.texts
    assert set(a.unlabeled.texts) < set(full.unlabeled.texts)
    assert a.unlabeled.ids.tolist() == list(range(10))
    assert any("max_unlabeled=10" in n for n in a.notes)


# ----------------------------------------------------------------------------------------------------
# Hub path, offline


def saved_dataset(path: Path, names: list[str], splits: tuple[str, ...] = ("train", "test")) -> Path:
    """A DatasetDict with a ClassLabel column, written by save_to_disk."""
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    parts = {}
    for s, split in enumerate(splits):
        records = [{"sentence": f"{split} sentence {i}", "label": i % len(names)} for i in range(12 + 12 * (s == 0))]
        parts[split] = datasets.Dataset.from_list(records, features=features)
    datasets.disable_progress_bars()
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_hub_save_to_disk_keeps_class_label_names_in_their_order(tmp_path: Path) -> None:
    path = saved_dataset(tmp_path / "ds", ["pos", "neg", "neutral"])
    bundle = load_data(DataConfig(source="hub", name=str(path), text_column="sentence", labels_per_class=2), seed=0)
    assert bundle.label_names == ["pos", "neg", "neutral"]  # the dataset's order, not alphabetical
    assert len(bundle.test) == 12 and np.bincount(bundle.labeled.labels).tolist() == [2, 2, 2]
    assert bundle.test.texts[0] == "test sentence 0" and bundle.label_names[bundle.test.labels[1]] == "neg"


def test_hub_without_the_default_test_split_skips_test_metrics(tmp_path: Path) -> None:
    path = saved_dataset(tmp_path / "ds", ["a", "b"], splits=("train",))
    bundle = load_data(DataConfig(source="hub", name=str(path), text_column="sentence", labels_per_class=None), 0)
    assert bundle.test is None
    assert any("has no split 'test'" in n for n in bundle.notes)
    assert any("test metrics are skipped" in n for n in bundle.notes)


def test_hub_local_folder_of_csv_files_goes_through_load_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "csvds"
    folder.mkdir()
    write(folder / "train.csv", rows(8))
    write(folder / "validation.csv", rows(2, start=50))
    write(folder / "test.csv", rows(3, start=80))
    cfg = DataConfig(source="hub", name=str(folder), validation_split="validation", labels_per_class=None)
    bundle = load_data(cfg, seed=0)
    assert (len(bundle.labeled), len(bundle.validation), len(bundle.test)) == (16, 4, 6)
    assert bundle.label_names == ["neg", "pos"] and not any("carved" in n for n in bundle.notes)


# ----------------------------------------------------------------------------------------------------
# Tokenisation cache


@pytest.fixture(scope="module")
def tokenizer():
    from sftcli.model import load_tokenizer

    return load_tokenizer(ModelConfig(source="tiny"))


def test_tokenisation_cache_hit_does_not_retokenise(tmp_path: Path, tokenizer, caplog, monkeypatch) -> None:
    from sftcli.model import tokenizer_fingerprint

    ts = TextSet(texts=["one short text", "another text " * 40], labels=np.array([0, 1]))
    fp = tokenizer_fingerprint(tokenizer)
    first = encode(ts, tokenizer, 16, tmp_path, fp)
    assert first.truncated == 1 and first.lengths().tolist()[1] == 16
    entry = next((tmp_path / "tokens").iterdir())
    mtime = entry.stat().st_mtime_ns

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the tokenizer was called on a cache hit")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenising)
    with caplog.at_level(logging.DEBUG, logger="sft"):  # cache hits are debug lines (train.log keeps them)
        second = encode(ts, tokenizer, 16, tmp_path, fp)
    assert np.array_equal(second.ids, first.ids) and np.array_equal(second.offsets, first.offsets)
    assert second.truncated == 1 and entry.stat().st_mtime_ns == mtime
    assert "read from the cache" in caplog.text


def test_damaged_token_cache_is_rebuilt(tmp_path: Path, tokenizer) -> None:
    ts = TextSet(texts=["a text", "b text"])
    first = encode(ts, tokenizer, 16, tmp_path, "fp")
    entry = next((tmp_path / "tokens").iterdir())
    (entry / "ids.npy").write_bytes(b"garbage")
    again = encode(ts, tokenizer, 16, tmp_path, "fp")
    assert np.array_equal(np.asarray(again.ids), np.asarray(first.ids))
    assert np.array_equal(np.load(entry / "ids.npy"), np.asarray(first.ids))  # rewritten


# ----------------------------------------------------------------------------------------------------
# End to end through the CLI


def test_cli_files_no_validation_no_test_then_cache_hit(sft, tmp_path: Path) -> None:
    records = rows(12, labels=("ham", "spam"))
    records[1]["text"] = "   "  # dropped, counted
    records[2]["text"] = " ".join(["word"] * 200)  # longer than model.max_length=64: truncated, counted
    train = write(tmp_path / "train.csv", records)
    args = ["train", "data=files", f"data.train={train}", *FAST]
    first = sft(*args, "run_name=first", check=True)
    run = tmp_path / "runs" / "first"
    log = (run / "train.log").read_text()
    assert "no validation split: carved" in log and "no test split: test metrics are skipped" in log
    assert "dropped 1 row(s) with an empty or whitespace-only text" in log
    assert re.search(r"data: 1 of \d+ (labeled|validation) texts truncated to model.max_length=64", log)
    assert "read from the cache" not in log
    cached = re.findall(r"tokenised \d+ texts \(max_length 64\), cached in (\S+)", log)
    assert len(cached) == 2  # labeled and validation
    mtimes = [Path(c).stat().st_mtime_ns for c in cached]
    summary = json.loads((run / "summary.json").read_text())
    assert "val/accuracy" in summary and not any(k.startswith("test/") for k in summary)
    assert summary["label_names"] == ["ham", "spam"]
    config = json.loads((run / summary["best_checkpoint"] / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"}
    assert "Traceback" not in first.stderr

    # The same data and tokenizer again: token ids come from the cache, which is left untouched.
    sft(*args, "run_name=second", check=True)
    log2 = (tmp_path / "runs" / "second" / "train.log").read_text()
    assert "data: tokenised" not in log2
    assert sorted(re.findall(r"read from the cache (\S+) \(not re-tokenised\)", log2)) == sorted(cached)
    assert [Path(c).stat().st_mtime_ns for c in cached] == mtimes


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_cli_hub_saved_dataset_names_end_to_end_with_eval(sft, tmp_path: Path) -> None:
    path = saved_dataset(tmp_path / "ds", ["sports", "tech"])
    sft("train", "data=hub", f"data.name={path}", "data.text_column=sentence", "data.labels_per_class=4",
        "+strategy=mix", "lambda=0.5", *FAST, "run_name=hub", check=True)
    run = tmp_path / "runs" / "hub"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test/n"] == 12 and set(summary["test/per_class"]) == {"sports", "tech"}
    config = json.loads((run / summary["best_checkpoint"] / "config.json").read_text())
    assert config["id2label"] == {"0": "sports", "1": "tech"}
    assert "labeled 8 (sports=4, tech=4)" in (run / "train.log").read_text()
    ev = sft("eval", f"checkpoint={run}", "run_name=ev", check=True)
    assert "sports" in ev.stdout and "tech" in ev.stdout
    result = json.loads((tmp_path / "runs" / "eval" / "ev" / "eval.json").read_text())
    assert result["label_names"] == ["sports", "tech"] and result["n"] == 12


def test_cli_integer_labels_pairs_parquet_tsv_jsonl_with_mix(sft, tmp_path: Path) -> None:
    def pairs(n: int, start: int) -> list[dict]:
        return [{"premise": f"premise {start + i}", "hypothesis": f"hypothesis {i % 3}", "label": [3, 7][i % 2]}
                for i in range(n)]

    train = write(tmp_path / "train.parquet", pairs(24, 0))
    test = write(tmp_path / "test.tsv", pairs(6, 100))
    unl = write(tmp_path / "unl.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in pairs(10, 200)])
    sft("train", "data=files", f"data.train={train}", f"data.test={test}", f"data.unlabeled={unl}",
        "data.text_column=premise", "data.text_pair_column=hypothesis", "data.labels_per_class=3",
        "data.length_grouping=true", "+strategy=mix", "lambda=0.5", *FAST, "run_name=pairs", check=True)
    run = tmp_path / "runs" / "pairs"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["label_names"] == ["3", "7"] and summary["test/n"] == 6 and summary["n_unlabeled"] == 10
    config = json.loads((run / summary["best_checkpoint"] / "config.json").read_text())
    assert config["id2label"] == {"0": "3", "1": "7"}
    steps = [m for m in read_jsonl(run / "metrics.jsonl") if "train/loss_con" in m]
    assert steps, "the mix strategy logged no contrastive loss"
    assert run_dirs(tmp_path / "runs") == [run]
