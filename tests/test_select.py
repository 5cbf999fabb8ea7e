"""`sft select`: each strategy, near and exact duplicates never proposed, the cold start, the labeling loop
through files (the CSV filled in and read back by `sft train data.train=[...]`), a conflicting label
refused naming both rows, and the round-to-round prediction change."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST

from sftcli.data import load_trec6_rows
from sftcli.selection import choose, entropies, margins, normalise_text, prediction_change

# -- the strategies on arrays -------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_margin_and_entropy_rank_the_uncertain_first() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33], [0.6, 0.4, 0.0]])
    np.testing.assert_allclose(margins(probs), [0.15, 0.95, 0.99, 0.8])
    assert list(np.argsort(-entropies(probs))) == [2, 1, 3, 0]
    vectors = _unit(np.eye(4) + 0.01)
    chosen, _ = choose("margin", 2, vectors, probs, ["a", "b", "c"], None, 0.95, seed=0)
    assert [c.index for c in chosen] == [2, 1]
    assert "a 0.34 vs b 0.33" in chosen[0].reason
    chosen, _ = choose("entropy", 3, vectors, probs, ["a", "b", "c"], None, 0.95, seed=0)
    assert [c.index for c in chosen] == [2, 1, 3]


def test_near_duplicates_of_each_other_and_of_labeled_texts_are_passed_over() -> None:
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(6, 16)))
    # Text 1 is text 0 again (cosine ~1), text 5 is a labeled text again: both most uncertain.
    vectors = _unit(np.vstack([base[0], base[0] + 1e-3, base[1], base[2], base[3], base[4]]))
    labeled = base[4:5]
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.5, 0.5]])
    for strategy in ("margin", "entropy", "random", "diverse"):
        chosen, skipped = choose(strategy, 4, vectors, probs, ["x", "y"], labeled, 0.95, seed=1)
        picked = {c.index for c in chosen}
        assert len(chosen) == len(picked) == 4, strategy
        assert not {0, 1} <= picked, strategy  # never both copies
        assert 5 not in picked, strategy  # never a copy of a labeled text
        assert skipped >= 1, strategy


def test_diverse_spreads_over_clusters_where_margin_piles_into_one() -> None:
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(3, 32))) * 5
    # 30 texts around each of 3 centres; the most uncertain ten all sit in the first cluster.
    vectors = _unit(np.vstack([c + rng.normal(scale=0.3, size=(30, 32)) for c in centres]))
    gap = np.concatenate([np.linspace(0.0, 0.1, 30), np.linspace(0.3, 0.5, 30), np.linspace(0.3, 0.5, 30)])
    probs = np.stack([(1 + gap) / 2, (1 - gap) / 2], axis=1)
    cluster = np.repeat([0, 1, 2], 30)
    by_margin, _ = choose("margin", 3, vectors, probs, ["x", "y"], None, 0.99, seed=0)
    assert {cluster[c.index] for c in by_margin} == {0}
    diverse, _ = choose("diverse", 3, vectors, probs, ["x", "y"], None, 0.99, seed=0)
    assert {cluster[c.index] for c in diverse} == {0, 1, 2}
    # Each cluster's most uncertain text, the most uncertain cluster first.
    assert diverse[0].index == 0 and {diverse[1].index, diverse[2].index} == {30, 60}
    cold, _ = choose("diverse", 3, vectors, None, None, None, 0.99, seed=0)
    assert {cluster[c.index] for c in cold} == {0, 1, 2}
    assert all("nearest the centre" in c.reason for c in cold)


def test_random_is_seeded() -> None:
    vectors = _unit(np.random.default_rng(0).normal(size=(50, 8)))
    first = [c.index for c in choose("random", 10, vectors, None, None, None, 0.999, seed=3)[0]]
    assert first == [c.index for c in choose("random", 10, vectors, None, None, None, 0.999, seed=3)[0]]
    assert first != [c.index for c in choose("random", 10, vectors, None, None, None, 0.999, seed=4)[0]]


def test_prediction_change_counts_and_agreement() -> None:
    before = {"a": "x", "b": "y", "c": "x", "d": "y"}
    shared, changed, kappa = prediction_change(before, {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y"})
    assert (shared, changed) == (4, 1)
    assert kappa == pytest.approx(0.5)
    assert prediction_change(before, {"z": "x"}) == (0, 0, None)


# -- the command: a labeling loop on TREC-6 questions, a person played by their true labels ----------

TRUTH = dict(load_trec6_rows()[:400])


def _pool(path: Path) -> Path:
    texts = list(TRUTH)[:300]
    # An exact copy (case and spacing aside) that must never be proposed twice.
    texts.append("  " + texts[0].upper() + "  ")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    return path


def _fill(path: Path) -> list[dict[str, str]]:
    """The person's part: the label column filled in with the true label."""
    rows = list(csv.DictReader(path.open(newline="")))
    for row in rows:
        row["label"] = TRUTH[" ".join(row["text"].split())] if row["text"] in TRUTH else TRUTH[
            next(t for t in TRUTH if normalise_text(t) == normalise_text(row["text"]))]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def _validation(path: Path, labels: set[str]) -> Path:
    """Held-out questions of the classes the first round found (a class train lacks is refused)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(item for item in list(TRUTH.items())[300:400] if item[1] in labels)
    return path


def test_a_labeling_loop_cold_start_to_round_three(sft, tmp_path: Path) -> None:
    pool = _pool(tmp_path / "pool.csv")
    cold = sft("select", "n=12", f"pool={pool}", "output=r1.csv", merge_stderr=True)
    assert cold.returncode == 0, cold.stdout
    assert "301 texts read" in cold.stdout and "1 dropped as copies" in cold.stdout
    header = next(csv.reader((tmp_path / "r1.csv").open()))
    assert header == ["text", "label", "predicted_label", "probability", "score", "reason"]
    first = _fill(tmp_path / "r1.csv")
    assert len(first) == 12 and all("nearest the centre in cluster" in r["reason"] for r in first)
    assert len({normalise_text(r["text"]) for r in first}) == 12
    val = _validation(tmp_path / "val.csv", {r["label"] for r in first})

    train = [*FAST, "data=files", f"data.unlabeled={pool}", f"data.validation={val}", "trainer.max_steps=2"]
    one = sft("train", *train, "data.train=[r1.csv]", "run_name=one", merge_stderr=True)
    assert one.returncode == 0, one.stdout
    second = sft("select", "checkpoint=runs/one", "n=10", "strategy=margin", "output=r2.csv", merge_stderr=True)
    assert second.returncode == 0, second.stdout
    rows = _fill(tmp_path / "r2.csv")
    labeled = {normalise_text(r["text"]) for r in first}
    assert len(rows) == 10 and not labeled & {normalise_text(r["text"]) for r in rows}
    assert all(r["predicted_label"] and 0 < float(r["probability"]) <= 1 for r in rows)
    assert all(r["reason"].startswith("uncertainty (1 - margin)") for r in rows)
    summary = json.loads((tmp_path / "r2.selection.json").read_text())
    assert summary["scored"] == 301 - 1 - 12 and len(summary["predictions"]) == summary["scored"]

    # Both rounds train one run; the third round says how the predictions moved since the second.
    two = sft("train", *train, "data.train=[r1.csv,r2.csv]", "run_name=two", merge_stderr=True)
    assert two.returncode == 0, two.stdout
    assert "labeled 22" in two.stdout
    third = sft("select", "checkpoint=runs/two", "n=5", "output=r3.csv", "previous=r2.csv", merge_stderr=True)
    assert third.returncode == 0, third.stdout
    assert "since r2.csv:" in third.stdout and "texts both rounds scored changed" in third.stdout
    chosen = [r["text"] for r in csv.DictReader((tmp_path / "r3.csv").open())]
    assert not {normalise_text(t) for t in chosen} & (labeled | {normalise_text(r["text"]) for r in rows})
    # A round's CSV is never written over: it may hold a person's labels.
    again = sft("select", "checkpoint=runs/two", "n=5", "output=r3.csv")
    assert again.returncode == 2 and "r3.csv already exists" in again.stderr


def test_a_text_labeled_two_ways_is_refused_naming_both_rows(sft, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("text,label\nwhat is alpha ?,q\nthe beta is here,s\nwhat is gamma ?,q\n")
    (tmp_path / "b.csv").write_text("text,label\nthe delta is here,s\n  WHAT IS ALPHA ? ,s\n")
    r = sft("train", *FAST, "data=files", "data.train=[a.csv,b.csv]", "data.labels_per_class=null")
    assert r.returncode == 2
    assert "b.csv (data.train[1]) row 2 labels" in r.stderr and "a.csv (data.train[0]) row 1 labels it 'q'" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_select_requests_exit_2(sft, tmp_path: Path) -> None:
    (tmp_path / "pool.txt").write_text("one text\nanother text\n")
    cases = [
        (["n=3", "output=o.csv"], "pool: is required without a checkpoint"),
        (["n=3", "pool=pool.txt", "output=o.csv", "strategy=margin"], "strategy: margin scores a model"),
        (["n=3", "pool=pool.txt", "output=o.txt"], "output: o.txt must end in .csv"),
        (["n=0", "pool=pool.txt", "output=o.csv"], "n: must be >= 1"),
        (["n=3", "pool=missing.csv", "output=o.csv"], "pool: path 'missing.csv' does not exist"),
    ]
    for args, message in cases:
        r = sft("select", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    assert not (tmp_path / "o.csv").exists()


def test_label_names_let_the_first_rounds_lack_a_class(sft, tmp_path: Path) -> None:
    # Round one found no text of class x; validation and test have one.
    (tmp_path / "r1.csv").write_text("text,label\nwhat is alpha ?,q\nthe beta is here,s\nwhat is gamma ?,q\n"
                                     "the zeta is there,s\n")
    (tmp_path / "v.csv").write_text("text,label\nwhat is delta ?,q\nthe eta is here,s\nhow are you,x\n")
    args = [*FAST, "data=files", "data.train=[r1.csv]", "data.validation=v.csv", "data.test=v.csv"]
    refused = sft("train", *args, "run_name=a")
    assert refused.returncode == 2 and "row 3 has label 'x', which never occurs in train" in refused.stderr
    ok = sft("train", *args, "data.label_names=[q,s,x]", "run_name=b", merge_stderr=True)
    assert ok.returncode == 0, ok.stdout
    assert "no training text has label(s) x yet" in ok.stdout and "x=0" in ok.stdout
    config = json.loads((tmp_path / "runs" / "b" / "model" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["q", "s", "x"]
    # Every text of this pool is labeled already: nothing to propose, and nothing written.
    nothing = sft("select", "checkpoint=runs/b", "n=2", "pool=r1.csv", "output=o.csv")
    assert nothing.returncode == 2 and "pool: r1.csv has no text that is not labeled already" in nothing.stderr
    assert not (tmp_path / "o.csv").exists()
    unknown = sft("train", *FAST, "data=files", "data.train=[r1.csv]", "data.label_names=[q,x]")
    assert unknown.returncode == 2 and "row 2 has label 's', which is not in data.label_names" in unknown.stderr


@pytest.mark.slow  # four tiny recipe runs and two selections on TREC-6: about three minutes
def test_the_simulated_annotator_runs_its_rounds_and_continues(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, str(repo / "experiments" / "simulate_labeling.py"), "--budgets", "12,20", "--seeds", "0",
           "--arms", "random,margin", "--root", str(tmp_path / "sim"), "--", "model=tiny", "trainer.epochs=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SFT_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    work = tmp_path / "sim" / "trec6"
    rows = list(csv.DictReader((work / "results.csv").open()))
    assert [(r["arm"], r["round"], r["labels"]) for r in rows] == [
        ("random", "1", "12"), ("random", "2", "20"), ("margin", "1", "12"), ("margin", "2", "20")]
    # The margin arm started from the cold start and then asked the round's model.
    assert "strategy=diverse, the frozen encoder" in (work / "margin-seed0" / "select1.log").read_text()
    assert "strategy=margin, the model of" in (work / "margin-seed0" / "select2.log").read_text()
    round2 = list(csv.DictReader((work / "margin-seed0" / "round2.csv").open()))
    round1 = {r["text"] for r in csv.DictReader((work / "margin-seed0" / "round1.csv").open())}
    assert len(round2) == 8 and all(r["label"] for r in round2) and not round1 & {r["text"] for r in round2}
    # Run again: every round is on record, so nothing runs and the rows stay as they were.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(csv.DictReader((work / "results.csv").open())) == rows
    assert "| margin |" in (work / "summary.md").read_text()
