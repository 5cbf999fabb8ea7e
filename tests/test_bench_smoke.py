"""benchmarks/bench.py --quick --skip-scale runs end to end and writes every figure it promises (about 20 s)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("accelerate", reason="the HF Trainer arm needs accelerate (pip install -e .[dev])")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "SFT_CACHE_DIR": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--skip-scale", "--workdir",
         str(tmp_path / "work"), "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=85)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sft_fp32 / hf_fp32: samples/s" in proc.stdout
    r = json.loads(out.read_text())

    assert _positive(r["peak"]["fp32_flops_per_s"]) and _positive(r["peak"]["bf16_flops_per_s"])
    arms = r["supervised"]["arms"]
    assert set(arms) == {"sft_fp32", "hf_fp32", "sft_bf16", "hf_bf16"}
    for arm in arms.values():
        for key in ("samples_per_s", "tokens_per_s", "model_flops_per_s"):
            assert _positive(arm[key]["median"]), key
            assert len(arm[key]["runs"]) == 3  # three alternated repeats
    for precision in ("fp32", "bf16"):
        assert _positive(r["supervised"]["sft_over_hf"][f"sft_{precision} / hf_{precision}"]["samples_per_s"]["of_medians"])
        assert _positive(r["supervised"]["sft_over_hf"][f"sft_{precision} / hf_{precision}"]["tokens_per_s"]["of_medians"])
    for arm in ("cache_on", "cache_off"):
        for key in ("mix_step_s", "fwd_bwd_s", "ratio_to_fwd_bwd"):
            assert _positive(r["mix"][arm][key]["median"]), (arm, key)
    assert _positive(r["mix"]["teacher_cache_build_s"])
    assert _positive(r["bf16"]["sft_speedup"])
    assert 0 <= r["bf16"]["fp32_test_accuracy"] <= 1 and 0 <= r["bf16"]["bf16_test_accuracy"] <= 1
    assert _positive(r["flops"]["sft_fp32"]["model_flops_utilisation"])
    assert _positive(r["memory"]["peak_rss_mb"])
    assert "scale" not in r


def test_bench_refuses_an_unknown_arm_before_running(tmp_path: Path) -> None:
    for arms, words in (("sft_bf16,sft_bf17", "unknown arm 'sft_bf17'"),
                        ("hf_bf16-cls_only_last_layer", "-LEVER applies to sft arms"),
                        ("sft_bf16-no_such_lever", "LEVER one of cls_only_last_layer"),
                        ("sft_bf16-cpu_dropout", "LEVER one of cls_only_last_layer")):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--arms", arms], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr
        assert "supervised loop" not in proc.stdout


@pytest.mark.slow  # three tiny recipe runs, about 50 s: CI runs it after the default suite
def test_pile_section_reports_what_each_pile_costs_and_read(tmp_path: Path) -> None:
    out = tmp_path / "pile.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "pile.py"), "--sizes", "600,4000", "--workdir", str(tmp_path / "w"),
         "--out", str(out), "--", "model=tiny", "trainer.epochs=6", "loss.self_training_sample=100"],
        cwd=tmp_path, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["size"] for r in runs] == [600, 4000, 600]  # the first size again, last
    for r in runs:
        assert _positive(r["wall_s"]) and _positive(r["peak_rss_mb"]) and r["n_unlabeled"] == r["size"]
        assert len(r["relabel_s"]) == 2 and r["read_logged"]
    # 4,000 texts: two re-labels of the same 100 and the prior's 2,048; never the whole pile.
    assert 2048 <= runs[1]["read"] <= 2148 and _positive(runs[1]["wall_ratio"]) and _positive(runs[1]["rss_ratio"])
    assert "wall" in proc.stdout and "of the pile" in proc.stdout


@pytest.mark.slow  # a tiny run, two exports and every arm on a few texts: about a minute
def test_inference_section_times_every_arm_against_setfit(sft, tmp_path: Path) -> None:
    sft("train", "model=tiny", "trainer.max_steps=4", "trainer.eval_every=2", "trainer.save_every=2",
        "model.head_pooling=mean", "run_name=r", check=True)
    out = tmp_path / "inference.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "inference.py"), "--run", str(tmp_path / "runs" / "r"),
         "--work", str(tmp_path / "w"), "--short", "60", "--long", "4", "--threads", "1", "--repeats", "1",
         "--max-length", "64", "--no-setfit", "--out", str(out)],  # SetFit: the anchors extra, not in CI
        cwd=tmp_path, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    arms = {"torch fp32", "torch bf16", "onnx fp32", "onnx int8"}
    assert set(result["accuracy"]) == arms and result["agreement_with_torch_fp32"]["onnx fp32"] == 1.0
    timings = result["timings"]
    assert set(timings) == {"TREC-6 questions, 1 thread(s)", "news articles (300+ tokens), 1 thread(s)"}
    for rates in timings.values():
        assert set(rates) == arms and all(_positive(v) for v in rates.values())
    assert (tmp_path / "runs" / "r" / "onnx-int8" / "model.onnx").is_file()
