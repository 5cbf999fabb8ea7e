"""The lean unlabeled path (columns, no dict per row) keeps the row-by-row semantics, and cached rows read
by position (NpyRows) match the arrays they come from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sftcli.config import DataConfig
from sftcli.data import Encoded, NpyRows, collate, load_data
from sftcli.data.tokens import _read_token_cache, _write_token_cache
from sftcli.errors import DataError


def train_csv(path: Path) -> Path:
    path.write_text("text,label,hyp\n" + "".join(f"text {i},{'ab'[i % 2]},pair {i}\n" for i in range(20)))
    return path


def files(tmp_path: Path, unlabeled: Path, **kw) -> DataConfig:
    return DataConfig(source="files", train=str(train_csv(tmp_path / "train.csv")), unlabeled=str(unlabeled),
                      labels_per_class=2, **kw)


def test_blank_unlabeled_lines_are_those_str_strip_empties(tmp_path: Path) -> None:
    # Unicode whitespace (ideographic space, file separator, NEL) is blank; a zero-width space is not.
    lines = ["one", " ", "\t", "\u3000", "\x1c", "two", "\u200b", "\xa0three\xa0", "\u2028", "\x85", "four "]
    unl = tmp_path / "u.txt"
    unl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bundle = load_data(files(tmp_path, unl), seed=0)
    kept = [t for t in lines if t.strip()]
    assert bundle.unlabeled is not None and bundle.unlabeled.texts == kept
    assert any(f"dropped {len(lines) - len(kept)} row(s) with an empty or whitespace-only text from {unl} "
               "(data.unlabeled) (rows 2, 3, 4, 5, 9, ... (1 more))" in n for n in bundle.notes)


def test_unlabeled_values_that_are_not_strings_and_missing_pairs(tmp_path: Path) -> None:
    unl = tmp_path / "u.jsonl"  # an integer text column; row 2 lacks its pair, row 3's is blank
    unl.write_text('{"text": 1, "hyp": "x"}\n{"text": 2, "hyp": null}\n{"text": 3, "hyp": " "}\n'
                   '{"text": 4, "hyp": "z"}\n')
    bundle = load_data(files(tmp_path, unl, text_pair_column="hyp"), seed=0)
    assert bundle.unlabeled is not None
    assert bundle.unlabeled.texts == ["1", "4"] and bundle.unlabeled.pairs == ["x", "z"]
    assert any("dropped 2 row(s)" in n and "(rows 2, 3)" in n for n in bundle.notes)


def test_all_blank_unlabeled_file_is_refused(tmp_path: Path) -> None:
    unl = tmp_path / "u.txt"
    unl.write_text(" \n\u3000\n")
    with pytest.raises(DataError, match=r"u.txt \(data.unlabeled\): empty dataset \(all 2 row\(s\) have an empty"):
        load_data(files(tmp_path, unl), seed=0)


def test_npy_rows_read_like_the_array(tmp_path: Path) -> None:
    a = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "a.npy", a)
    rows = NpyRows(np.load(tmp_path / "a.npy", mmap_mode="r"))
    index = np.array([5, 0, 19, 5])
    assert len(rows) == 20 and rows.shape == (20, 3)
    assert np.array_equal(rows[index], a[index]) and np.array_equal(rows[3], a[3]) and np.array_equal(rows[-1], a[-1])
    assert np.array_equal(rows[2:7], a[2:7]) and np.array_equal(np.asarray(rows), a)
    with pytest.raises(IndexError):
        rows[20]


@pytest.mark.parametrize("pairs", [False, True])
def test_cached_token_rows_collate_like_the_arrays(tmp_path: Path, pairs: bool) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=50)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 1000, size=int(offsets[-1])).astype(np.int32)
    type_ids = rng.integers(0, 2, size=len(ids)).astype(np.int8) if pairs else None
    _write_token_cache(tmp_path / "entry", Encoded(ids, offsets, type_ids, 3))
    cached = _read_token_cache(tmp_path / "entry")
    assert cached is not None and cached.rows is not None and cached.truncated == 3
    plain = Encoded(ids, offsets, type_ids)
    for _ in range(5):
        index = rng.integers(0, 50, size=8)
        a, b = collate(cached, index, 0), collate(plain, index, 0)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_file_pile_stays_an_arrow_column_read_by_position(tmp_path: Path) -> None:
    from sftcli.data import TextColumn

    lines = [f"line {i}" if i % 7 else " " for i in range(1, 60)]  # every 7th line blank: dropped
    unl = tmp_path / "u.txt"
    unl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = load_data(files(tmp_path, unl), seed=0).unlabeled.texts
    kept = [t for t in lines if t.strip()]
    # Not a list of Python strings: the Arrow column datasets memory-maps, with the kept rows' positions.
    assert isinstance(texts, TextColumn) and texts.keep is not None and len(texts) == len(kept)
    assert texts[0] == kept[0] and texts[-1] == kept[-1] and texts[3:6] == kept[3:6]
    assert texts.take([10, 2, 10]) == [kept[10], kept[2], kept[10]]
    assert list(texts) == kept and texts == kept and texts != kept[:-1]
    with pytest.raises(IndexError):
        texts.take([len(kept)])


@pytest.mark.parametrize("pairs", [False, True])
def test_the_pile_is_tokenised_where_it_is_read_as_the_whole_set_would_be(tmp_path: Path, pairs: bool) -> None:
    from sftcli.config import ModelConfig
    from sftcli.data import LazyTokens, TextSet, encode
    from sftcli.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(source="tiny"))
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "what", "is", "the", "river"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(300)]
    ts = TextSet(texts=texts, pairs=texts[::-1] if pairs else None)
    whole = encode(ts, tok, 16, None, "")
    lazy = LazyTokens(ts, tok, 16, tmp_path, "fp")
    index = np.array([7, 250, 7, 0, 299])
    a, b = collate(lazy, index, 0), collate(whole, index, 0)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sub_lazy, sub_whole = lazy.subset(np.arange(40, 60)), whole.subset(np.arange(40, 60))
    assert np.array_equal(sub_lazy.ids, sub_whole.ids) and np.array_equal(sub_lazy.offsets, sub_whole.offsets)
    assert lazy.n_tokens(index) == whole.n_tokens(index)
    # 4 distinct texts, then 20 more: only what was read is tokenised, and it is counted.
    read = {7, 250, 0, 299, *range(40, 60)}
    assert lazy.read == 24 and lazy.truncated == sum(len(whole.get(i)[0]) == 16 for i in read)
    assert "read 24 of the 300 unlabeled texts (8.0%)" in lazy.report()
    # A term that reads every text asks for the lengths: the whole set, as encode gives it (cached).
    assert np.array_equal(lazy.lengths(), whole.lengths()) and lazy.read == 300
    assert lazy.truncated == whole.truncated > 0 and (tmp_path / "tokens").is_dir()
    assert np.array_equal(collate(lazy, index, 0)["input_ids"], b["input_ids"])


def test_a_batch_of_unread_pile_texts_is_tokenised_in_one_call(tmp_path: Path) -> None:
    from sftcli.config import ModelConfig
    from sftcli.data import LazyTokens, TextSet
    from sftcli.model import load_tokenizer

    tok = load_tokenizer(ModelConfig(source="tiny"))
    calls = []

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return tok(*args, **kwargs)

    lazy = LazyTokens(TextSet(texts=[f"text number {i}" for i in range(50)]), counting, 16, tmp_path, "fp")
    batch = collate(lazy, np.array([3, 9, 27, 3, 40]), 0)
    # One tokenizer call for the batch's four distinct unread texts, none for the texts already read.
    assert calls == [4] and batch["input_ids"].shape[0] == 5
    collate(lazy, np.array([9, 40]), 0)
    assert calls == [4] and lazy.read == 4
