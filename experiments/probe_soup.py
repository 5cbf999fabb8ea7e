"""Weight averages ("model soups", Wortsman et al. 2022) of a self-training run's checkpoints, scored on
validation and test next to the checkpoints themselves.

    python experiments/probe_soup.py RUN_DIR [RUN_DIR ...]

The run must keep its checkpoints (`trainer.keep_last` at least the number of evaluations). With fresh
students every round starts from the pretrained weights, so the rounds' models share an initialisation,
which is when averaging fine-tuned weights can work. For each run, printed as one JSON line:
- every checkpoint alone;
- the uniform average of the rounds' best checkpoints (by validation), of the last two rounds' bests,
  and of every checkpoint of the last round;
- the greedy soup: the rounds' bests sorted by validation, each kept only if validation does not fall.
All are scored in fp32 through plain transformers, so the checkpoints' own figures can differ from the
run's bf16 validation by a question or two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def average(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of float tensors; integer buffers (position ids) from the first."""
    out = {}
    for name, first in state_dicts[0].items():
        if first.is_floating_point():
            out[name] = torch.stack([sd[name].float() for sd in state_dicts]).mean(0)
        else:
            out[name] = first
    return out


def probe(run: Path) -> dict[str, Any]:
    from probe_logistic_head import embed, run_data  # scripts/, on the path when this runs as a script
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sftcli.api import listed_checkpoints, load_weights

    cfg, data = run_data(run)
    ckpts = dict(listed_checkpoints(run / "checkpoints"))
    if not ckpts:
        raise SystemExit(f"{run}: no checkpoints kept (train with trainer.keep_last=20)")
    # The run recorded its round length in config.yaml: the objective re-labels every that many steps.
    per_round = cfg.loss.self_training_every if cfg.loss.self_training_weight > 0 else None
    first = ckpts[min(ckpts)]
    model = AutoModelForSequenceClassification.from_pretrained(first, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(first, trust_remote_code=True)
    weights = {step: load_weights(p) for step, p in ckpts.items()}  # the tensors alone, no model per checkpoint

    def score(state: dict[str, torch.Tensor]) -> dict[str, float]:
        model.load_state_dict(state)
        out = {}
        for name, part in (("val", data.validation), ("test", data.test)):
            _, probs = embed(model, tokenizer, part.texts, cfg.model.max_length)
            out[name] = float((probs.argmax(1) == np.asarray(part.labels)).mean())
        return out

    alone = {step: score(w) for step, w in weights.items()}
    result: dict[str, Any] = {"run": str(run), "alone": alone}
    steps = sorted(weights)
    round_of = {s: (s - 1) // per_round if per_round else 0 for s in steps}
    bests = []
    for r in sorted(set(round_of.values())):
        in_round = [s for s in steps if round_of[s] == r]
        bests.append(max(in_round, key=lambda s: (alone[s]["val"], s)))
    result["round_bests"] = bests
    result["soup/round_bests"] = score(average([weights[s] for s in bests]))
    if len(bests) > 1:
        result["soup/last_two_bests"] = score(average([weights[s] for s in bests[-2:]]))
    last_round = [s for s in steps if round_of[s] == round_of[steps[-1]]]
    result["soup/last_round_all"] = score(average([weights[s] for s in last_round]))
    ranked = sorted(bests, key=lambda s: -alone[s]["val"])
    soup, best_val = [ranked[0]], alone[ranked[0]]["val"]
    for s in ranked[1:]:
        trial = score(average([weights[t] for t in soup + [s]]))
        if trial["val"] >= best_val:
            soup, best_val = soup + [s], trial["val"]
    result["soup/greedy"] = {"members": soup, **score(average([weights[t] for t in soup]))}
    best_alone = max(steps, key=lambda s: (alone[s]["val"], s))
    result["best_alone"] = {"step": best_alone, **alone[best_alone]}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    opts = ap.parse_args()
    torch.set_num_threads(1)
    for run in opts.runs:
        print(json.dumps(probe(run)), flush=True)


if __name__ == "__main__":
    main()
