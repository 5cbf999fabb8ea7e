"""The end of a run (rank 0 writes): the best checkpoint evaluated on validation and test exactly as saved,
the class prior folded into its head (model.class_prior=unlabeled), the exported model and summary.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sftcli import checkpoint as ckpt
from sftcli import prior
from sftcli.engine import state
from sftcli.evaluate import evaluate, predict_logits, scalar_metrics
from sftcli.export import MODEL_DIR, export_model, model_card
from sftcli.losses import softmax
from sftcli.model import head_pooling_of, weights_for
from sftcli.runlog import format_value

if TYPE_CHECKING:
    from sftcli.engine.loop import Engine

log = logging.getLogger("sft")


def finish(e: Engine) -> dict[str, Any]:
    """Test metrics of the best checkpoint, the exported model, then summary.json (rank 0)."""
    last = ckpt.checkpoint_name(e.step)
    best = ckpt.checkpoint_name(e.best_step) if e.best_step is not None else last
    last_kept = any(p.name == last for _, p in ckpt.listed(e.ckpt_dir))
    stopped_early = e.early_stopping.stopped and e.step < e.max_steps
    assert last_kept or e.tc.save_only_model or not e.env.is_main, "the last checkpoint was not saved"
    summary: dict[str, Any] = {
        "status": "completed",
        "best_checkpoint": f"checkpoints/{best}",
        # null with trainer.save_only_model when the last step was not the best (only the best is kept)
        "last_checkpoint": f"checkpoints/{last}" if last_kept or not e.env.is_main else None,
        "model": MODEL_DIR,
        "best_step": e.best_step, "steps": e.step, "max_steps": e.max_steps, "epochs": e.tc.epochs,
        "select_metric": e.tc.select_metric, "select_value": e.best_metric,
        "stopped_early": stopped_early, "stopped_at_step": e.step if stopped_early else None,
    }
    if e.early_stopping.enabled:
        summary["early_stopping"] = e.early_stopping.summary()
    if e.class_weights is not None:
        summary["class_weights"] = dict(zip(e.data.label_names, map(float, e.class_weights), strict=True))
    # Evaluate exactly what the best checkpoint holds (the weights read back from disk).
    e.model.load_state_dict(weights_for(e.model, ckpt.load_weights(e.ckpt_dir / best)), strict=False)
    if e.cfg.model.class_prior == "unlabeled":
        summary["class_prior"] = fold_class_prior(e, e.ckpt_dir / best)
    val = evaluate(e.model, e.enc_val, e.data.validation.labels, e.data.label_names,
                   e.tc.eval_batch_size, e.pad_id, e.env.device, e.precision, e.env)
    summary.update(scalar_metrics(val, "val"))
    summary["val/per_class"] = val["per_class"]
    if e.enc_test is not None and e.data.test is not None:
        test = evaluate(e.model, e.enc_test, e.data.test.labels, e.data.label_names,
                        e.tc.eval_batch_size, e.pad_id, e.env.device, e.precision, e.env)
        summary.update(scalar_metrics(test, "test"))
        summary["test/per_class"] = test["per_class"]
    else:
        summary["test"] = "skipped: the data has no test split"
    summary.update({
        "label_names": e.data.label_names, "n_labeled": len(e.data.labeled),
        "n_unlabeled": 0 if e.data.unlabeled is None else len(e.data.unlabeled),
        # How much of the pile this process read (tokenised): a sample's worth, not the pile.
        "unlabeled_read": None if e.enc_unlabeled is None else e.enc_unlabeled.read,
        "world_size": e.env.world_size,
        "precision": e.precision,  # as run (trainer.precision=auto resolves per device)
        "strategy": e.cfg.strategy.name if e.cfg.strategy else None,
        "objectives": [o.name for o in e.objectives],
        "seed": e.cfg.seed, "data_notes": e.data.notes,
    })
    if e.enc_unlabeled is not None:
        log.info("%s", e.enc_unlabeled.report())
    if e.env.is_main:
        final = {k: v for k, v in summary.items() if k.startswith(("test/", "val/")) and not isinstance(v, dict)}
        e.metrics.write(e.step, {f"final/{k}": v for k, v in final.items()})
        # With the class prior folded into the head, the export writes those weights, not the checkpoint's.
        export_model(e.ckpt_dir / best, e.run_dir / MODEL_DIR,
                     model_card(e.cfg, summary, e.run_dir, e.model.config.model_type, head_pooling_of(e.model)),
                     model=e.model if summary.get("class_prior", {}).get("folded") else None)
        tmp = e.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=state.json_default))
        tmp.replace(e.run_dir / "summary.json")
        log.info("done: best %s (%s=%.4f); test accuracy %s, macro-F1 %s", summary["best_checkpoint"],
                 e.tc.select_metric, e.best_metric if e.best_metric is not None else float("nan"),
                 format_value(summary.get("test/accuracy")), format_value(summary.get("test/macro_f1")))
    return summary

def fold_class_prior(e: Engine, best: Path) -> dict[str, Any]:
    """model.class_prior=unlabeled: the unlabeled texts' prior, estimated by the best model (trained under
    the prior its checkpoint records), folded into its head; what the summary records."""
    trained = np.asarray(ckpt.read_sft_state(best).get("train_prior", e.labeled_prior))
    return prior.fold_unlabeled_prior(
        e.model, e.enc_unlabeled, trained, e.data.label_names, e.cfg.seed,
        lambda enc: softmax(predict_logits(e.model, enc, e.tc.eval_batch_size, e.pad_id, e.env.device,
                                           e.precision, e.env)))
