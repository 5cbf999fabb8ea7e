"""The measurement scripts around SetFit: the data sets they build, the anchor's refusal without its extra,
the comparison's paired differences and wall-time ratios, the label-propagation probe, and the soup probe's
weight average."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import REPO


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_data_writes_disjoint_labeled_splits(tmp_path: Path) -> None:
    out = tmp_path / "tweets"
    subprocess.run([sys.executable, str(REPO / "experiments" / "make_data.py"), "tweets", str(out)], check=True,
                   capture_output=True)
    rows = {split: list(csv.DictReader((out / f"{split}.csv").open(encoding="utf-8"))) for split in ("train", "test")}
    texts = {split: {r["text"] for r in rs} for split, rs in rows.items()}
    assert not texts["train"] & texts["test"]
    assert {r["label"] for rs in rows.values() for r in rs} == {"pos", "neg"}
    # One in six texts goes to test (by hash): roughly, and every text once.
    n_test, n_all = len(rows["test"]), len(rows["train"]) + len(rows["test"])
    assert 0.12 < n_test / n_all < 0.22
    assert len(texts["train"]) == len(rows["train"])


def test_the_anchor_without_setfit_exits_2_naming_the_extra(tmp_path: Path) -> None:
    # setfit made unimportable, whether or not it is installed here.
    code = ("import runpy, sys; sys.modules['setfit'] = None; sys.argv = ['anchor_setfit.py', '--', 'seed=0']; "
            f"runpy.run_path({str(REPO / 'experiments' / 'anchor_setfit.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "pip install -e '.[anchors]'" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_comparison_pairs_seeds_and_states_wall_time_against_setfit(tmp_path: Path) -> None:
    compare = _script("compare_setfit")
    rows = [
        {"k": "16", "seed": str(seed), "arm": arm, "val_accuracy": str(val), "test_accuracy": str(test),
         "wall_s": str(wall)}
        for seed, arm, val, test, wall in [
            (0, "setfit", 0.80, 0.84, 500.0), (1, "setfit", 0.82, 0.82, 520.0),
            (0, "best", 0.85, 0.87, 300.0), (1, "best", 0.86, 0.86, 330.0),
            (0, "supervised", 0.70, 0.75, 50.0),  # seed 1 missing: paired on seed 0 only
        ]
    ]
    out = tmp_path / "summary.md"
    compare.write_summary(out, rows, list(compare.ARMS), "trec6")
    lines = {line.split("|")[1].strip(): line for line in out.read_text().splitlines() if line.startswith("| ")}
    best = [c.strip() for c in lines["best"].split("|")[1:-1]]
    assert best[1] == "2"  # n
    assert best[4] == "+0.0350 (+0.030, +0.040)"  # paired on each seed, then the mean
    assert best[5] == "315" and best[6] == f"{315 / 510:.2f}"  # mean wall time, ratio to SetFit's mean
    supervised = [c.strip() for c in lines["supervised"].split("|")[1:-1]]
    assert supervised[4] == "-0.0900 (-0.090)"
    assert [c.strip() for c in lines["setfit"].split("|")[1:-1]][4] == "-"


def test_label_propagation_labels_each_cluster_by_its_labeled_point() -> None:
    probe = _script("probe_label_propagation")
    rng = np.random.default_rng(0)
    centers = np.eye(3) * 4
    z = np.concatenate([c + 0.3 * rng.standard_normal((20, 3)) for c in centers])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    order = np.r_[0, 20, 40, np.setdiff1d(np.arange(60), [0, 20, 40])]  # one labeled point per cluster first
    scores = probe.propagate(z[order], np.array([0, 1, 2]), 3, k=5)
    truth = np.repeat(np.arange(3), 20)[order][3:]
    assert scores.shape == (57, 3) and np.allclose(scores.sum(1), 1)
    assert (scores.argmax(1) == truth).mean() == 1.0


def test_soup_averages_float_weights_and_keeps_integer_buffers(tmp_path: Path) -> None:
    from sftcli import checkpoint as ckpt

    soup = _script("probe_soup")
    a = {"w": torch.tensor([1.0, 3.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 5.0]), "ids": torch.tensor([7, 7])}
    out = soup.average([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(out["ids"], a["ids"])  # position ids are not averaged
    for step in (150, 50, 1000):
        (tmp_path / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    assert list(dict(ckpt.listed(tmp_path / "checkpoints"))) == [50, 150, 1000]  # the probe's steps, by number


def test_get_mpnet_never_empties_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "get_mpnet.sh"), str(mine)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "is not an all-mpnet-base-v2 directory" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
