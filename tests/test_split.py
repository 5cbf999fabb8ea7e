"""The embedded TREC-6 split (DESIGN.md section 5), k-per-class sampling and the batch streams."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from sftcli.config import DataConfig
from sftcli.data import BatchStream, load_data, load_trec6_rows, rank_slice, trec6_split_of
from sftcli.errors import DataError


def test_hash_split_rule() -> None:
    for text in ("What is a cat ?", "Who wrote Hamlet ?", "x"):
        h = int(hashlib.sha1(text.encode()).hexdigest(), 16)
        expected = "test" if h % 10 == 0 else "validation" if h % 10 == 1 else "train"
        assert trec6_split_of(text) == expected


def test_trec6_rows_are_deduplicated_six_classes() -> None:
    rows = load_trec6_rows()
    texts = [t for t, _ in rows]
    assert len(texts) == len(set(texts))
    assert {label for _, label in rows} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert 5000 < len(rows) <= 5500


def test_k_per_class_counts_determinism_and_disjoint_sets() -> None:
    a = load_data(DataConfig(source="trec6", labels_per_class=16), seed=0)
    b = load_data(DataConfig(source="trec6", labels_per_class=16), seed=0)
    c = load_data(DataConfig(source="trec6", labels_per_class=16), seed=1)
    assert a.label_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert Counter(a.labeled.labels.tolist()) == {i: 16 for i in range(6)}
    assert a.labeled.texts == b.labeled.texts
    assert a.labeled.texts != c.labeled.texts
    labeled, unlabeled = set(a.labeled.texts), set(a.unlabeled.texts)
    evaluation = set(a.validation.texts) | set(a.test.texts)
    assert not labeled & unlabeled and not labeled & evaluation and not unlabeled & evaluation
    assert all(trec6_split_of(t) == "test" for t in a.test.texts)
    assert all(trec6_split_of(t) == "validation" for t in a.validation.texts)
    assert a.unlabeled.labels is None


def test_all_labels_keeps_train_whole() -> None:
    full = load_data(DataConfig(source="trec6", labels_per_class=None), seed=0)
    assert full.unlabeled is None
    assert len(full.labeled) > 4000


def test_too_few_examples_for_k_names_the_class() -> None:
    with pytest.raises(DataError, match="class 'ABBR' has only"):
        load_data(DataConfig(source="trec6", labels_per_class=500), seed=0)


def test_stream_covers_each_epoch_once_and_resumes_exactly() -> None:
    s = BatchStream(10, 4, seed=3, stream_id=0)
    first = np.concatenate([s.next() for _ in range(5)])  # 20 ids = 2 epochs exactly
    assert sorted(first[:10].tolist()) == list(range(10))
    assert sorted(first[10:].tolist()) == list(range(10))
    s2 = BatchStream(10, 4, seed=3, stream_id=0)
    s2.next()
    s2.next()
    state = s2.state_dict()
    s3 = BatchStream(10, 4, seed=3, stream_id=0)
    s3.load_state_dict(state)
    rest = np.concatenate([s3.next() for _ in range(3)])
    assert rest.tolist() == first[8:].tolist()


def test_rank_slices_partition_the_global_batch() -> None:
    batch = np.arange(8)
    parts = [rank_slice(batch, r, 2) for r in range(2)]
    assert np.concatenate(parts).tolist() == batch.tolist()
