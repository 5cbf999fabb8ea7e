"""SetFit as a measured anchor, on exactly the data an `sft train` command line would use.

    pip install -e '.[anchors]'      # setfit, sentence-transformers, scikit-learn (never a dependency of sft)
    python experiments/anchor_setfit.py [--method setfit|frozen_lr] [--out runs/anchors] [--threads 1] \
        -- [sft train overrides: data=..., data.labels_per_class=K, seed=S, model=...]

The overrides go through sft's own composition and data protocol (`sftcli.api.compose_train`,
`sftcli.api.load_data`), so the labeled draw, validation and test sets are the ones `sft train` with the
same overrides trains and scores on; the unlabeled texts are not used (SetFit has no use for them). The
model is the one `model=` names (the embedded all-MiniLM-L6-v2 by default), loaded by path.

Methods:
  setfit     SetFit 1.2 with its default TrainingArguments (batch 16, 1 epoch of oversampled pairs, body
             lr 2e-5, CosineSimilarityLoss, logistic-regression head), seeded with `seed`.
  frozen_lr  the untouched encoder's mean-pooled, normalised embeddings + scikit-learn's logistic regression.

Each run writes a run directory that `sft report` reads beside sft's own runs:
OUT/<method>-<data tag>-k<K>-seed<S>/config.yaml (sft's resolved config plus `anchor: METHOD`),
.hydra/overrides.yaml (`anchor=METHOD` and the overrides) and summary.json (val/ and test/ accuracy and macro-F1, wall_s). The wall time covers loading, training and
prediction on validation and test, as `sft train`'s does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _scores(y_true: Any, y_pred: Any, prefix: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {f"{prefix}/accuracy": float(accuracy_score(y_true, y_pred)),
            f"{prefix}/macro_f1": float(f1_score(y_true, y_pred, average="macro"))}


def _data_tag(cfg: Any) -> str:
    if cfg.data.source == "files" and cfg.data.train:
        first = cfg.data.train if isinstance(cfg.data.train, str) else cfg.data.train[0]
        return Path(first).resolve().parent.name
    return cfg.data.name.replace("/", "_") if cfg.data.source == "hub" and cfg.data.name else cfg.data.source


def run_setfit(model_dir: str, bundle: Any, seed: int) -> tuple[Any, Any]:
    """Train SetFit with its defaults; return predictions on validation and test (None without test)."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    train = Dataset.from_dict({"text": bundle.labeled.texts, "label": bundle.labeled.labels.tolist()})
    model = SetFitModel.from_pretrained(model_dir)
    args = TrainingArguments(seed=seed, report_to="none", save_strategy="no", show_progress_bar=False)
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    val = model.predict(bundle.validation.texts, as_numpy=True)
    test = None if bundle.test is None else model.predict(bundle.test.texts, as_numpy=True)
    return val, test


def run_frozen_lr(model_dir: str, bundle: Any, seed: int) -> tuple[Any, Any]:
    """Logistic regression on the frozen encoder's normalised mean-pooled embeddings."""
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    encoder = SentenceTransformer(model_dir, device="cpu")

    def embed(texts: list[str]) -> Any:
        return encoder.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)

    head = LogisticRegression(max_iter=1000, random_state=seed).fit(embed(bundle.labeled.texts), bundle.labeled.labels)
    val = head.predict(embed(bundle.validation.texts))
    test = None if bundle.test is None else head.predict(embed(bundle.test.texts))
    return val, test


METHODS = {"setfit": run_setfit, "frozen_lr": run_frozen_lr}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=sorted(METHODS), default="setfit")
    ap.add_argument("--out", default="runs/anchors", help="folder for the anchor run directories")
    ap.add_argument("--name", default=None, help="run directory name (default METHOD-DATA-kK-seedS)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or torch's)")
    ap.add_argument("overrides", nargs="*", help="sft train overrides (after --)")
    opts = ap.parse_args()
    try:
        import setfit  # noqa: F401
    except ImportError:
        print("error: the anchors need setfit: pip install -e '.[anchors]' (or: pip install 'setfit>=1.2,<2')",
              file=sys.stderr)
        return 2

    import torch
    import yaml

    from sftcli.api import UserError, compose_train, load_data, model_location, to_plain

    if opts.threads:
        torch.set_num_threads(opts.threads)
    t0 = time.perf_counter()
    try:
        cfg = compose_train(opts.overrides)
        bundle = load_data(cfg.data, cfg.seed)
        model_dir = model_location(cfg.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = cfg.data.labels_per_class
    name = opts.name or f"{opts.method}-{_data_tag(cfg)}-k{'all' if k is None else k}-seed{cfg.seed}"
    run_dir = REPO / opts.out / name if not Path(opts.out).is_absolute() else Path(opts.out) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = to_plain(cfg)
    config["anchor"] = opts.method
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # Where `sft report` reads a run's command line: the anchor is named like a recipe.
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"anchor={opts.method}", *opts.overrides]))
    print(f"{name}: {len(bundle.labeled)} labeled texts, {len(bundle.validation)} validation, "
          f"{0 if bundle.test is None else len(bundle.test)} test; model {model_dir}", flush=True)

    val_pred, test_pred = METHODS[opts.method](model_dir, bundle, cfg.seed)
    summary: dict[str, Any] = {"status": "completed", "anchor": opts.method, "seed": cfg.seed,
                               "overrides": opts.overrides, "threads": torch.get_num_threads(),
                               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    summary.update(_scores(bundle.validation.labels, val_pred, "val"))
    if test_pred is not None:
        summary.update(_scores(bundle.test.labels, test_pred, "test"))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if "/" in k or k == "wall_s"}), flush=True)
    print(f"run dir: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
