"""The train state in checkpoints: what a save writes and what exact resume reads back.

A checkpoint holds the model (safetensors, loadable by plain transformers), the tokenizer, sft_state.json
(step, config, best so far), and for exact resume train_state.pt (optimizer, scheduler, grad scaler, both
data streams' positions, the early-stopping counter, every objective's state, and with trainer.ema_decay the
raw weights beside the averaged ones the checkpoint's model holds) plus every rank's RNG state. Resume checks
the saved config against the current one and refuses a mismatch field by field.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sftcli import checkpoint as ckpt
from sftcli import dist
from sftcli.config import from_plain, to_plain
from sftcli.errors import CheckpointError, ConfigError
from sftcli.model import weights_for

if TYPE_CHECKING:
    from sftcli.engine.loop import Engine

log = logging.getLogger("sft")

# Fields that must match between a checkpoint and the resuming config (unless allow_resume_mismatch).
RESUME_FIELDS = ("seed", "model", "data", "strategy", "loss", "trainer.batch_size", "trainer.unlabeled_batch_size",
                 "trainer.nproc", "trainer.ema_decay", "optim.layer_decay")
STATE_VERSION = 2  # train_state.pt layout: objectives' states under "objectives"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(engine: Engine) -> Path | None:
    """Commit a checkpoint (every rank calls; rank 0 writes). With trainer.save_only_model a checkpoint
    holds the model alone, and only a new best (or, while there is none, the newest) is written: no other
    could resume the run either."""
    e, tc = engine, engine.tc
    only_model = tc.save_only_model
    if only_model and e.best_step is not None and e.best_step != e.step:
        return None
    rng_states = None if only_model else dist.all_gather_object(e.env, rng_state())
    path = None
    if e.env.is_main:
        config = to_plain(e.cfg, e.plan.record())
        state = {"version": STATE_VERSION, **e.state_dict(), "config": json.dumps(config),
                 "fingerprints": {"data": e.data.fingerprint()}}
        best_name = state["best"]["checkpoint"]
        # sft_state.json: what loading a checkpoint (sft eval, sft predict) and the run's end read, without
        # torch's pickle.
        light = {"step": state["step"], "config": config, "world_size": state["world_size"],
                 "best": state["best"], "fingerprints": state["fingerprints"], "train_prior": state["train_prior"]}

        def write(tmp: Path) -> None:
            e.eval_model.save_pretrained(tmp, safe_serialization=True)  # the averaged weights with trainer.ema_decay
            e.tokenizer.save_pretrained(tmp)
            (tmp / ckpt.SFT_STATE).write_text(json.dumps(light, indent=1, default=json_default))
            if only_model:
                return
            torch.save(state, tmp / ckpt.TRAIN_STATE)
            for rank, rng in enumerate(rng_states or []):
                torch.save(rng, tmp / f"{ckpt.RNG_PREFIX}{rank}.pt")

        path = ckpt.save(e.ckpt_dir, e.step, write,
                         {"world_size": e.env.world_size, "select_metric": tc.select_metric,
                          "metric": e.best_metric if e.best_step == e.step else None, "resumable": not only_model})
        # Never deleted here: the checkpoint just written, the best, the one resumed from.
        protect = {path, *(p for p in (e.resumed_from, best_name and e.ckpt_dir / best_name) if p)}
        # save_only_model: the best checkpoint is the only one kept.
        ckpt.apply_retention(e.ckpt_dir, 0 if only_model else tc.keep_last, protect)
        ckpt.keep_training_state(e.ckpt_dir, e.step, tc.keep_train_state)
        e.metrics.write(e.step, {"checkpoint/saved": path.relative_to(e.run_dir).as_posix()})
    dist.barrier(e.env)
    return path


def find_resume_checkpoint(resume: str, ckpt_dir: Path) -> Path | None:
    """The checkpoint `resume` (auto or a path) names; None for auto when the run has none yet."""
    if resume == "auto":
        return ckpt.newest_resumable(ckpt_dir)
    target = Path(resume)
    path = target if (target / ckpt.MANIFEST).exists() or ckpt.NAME_RE.match(target.name) else None
    if path is None:
        path = ckpt.newest_resumable(target / "checkpoints")
        if path is None:
            raise CheckpointError(f"resume={resume}: no valid checkpoint in {target / 'checkpoints'}")
    if not ckpt.is_resumable(ckpt.verify(path)):
        raise CheckpointError(f"resume={resume}: {path} holds weights only (trainer.save_only_model=true, or its "
                              "training state was dropped when a newer checkpoint was saved); resume from the "
                              "newest checkpoint of the run, e.g. resume=auto")
    return path


def resume(engine: Engine) -> None:
    """Load the whole train state of the checkpoint `resume` names (no-op when resume=auto finds none)."""
    e, cfg = engine, engine.cfg
    assert cfg.resume is not None
    path = find_resume_checkpoint(cfg.resume, e.ckpt_dir)
    if path is None:
        log.info("resume=auto: no valid checkpoint in %s; starting from step 0", e.ckpt_dir)
        return
    _check_checkpoint_files(path)
    state = ckpt.load_state(path / ckpt.TRAIN_STATE)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / ckpt.TRAIN_STATE} is damaged: it holds a {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: its training state was written by an earlier sft version and cannot be "
                              "resumed by this one; its weights still load (model=hf model.name_or_path=...)")
    if not state.keys() >= STATE_KEYS:
        raise CheckpointError(f"{path / ckpt.TRAIN_STATE} is damaged: it lacks {sorted(STATE_KEYS - state.keys())}")
    _check_config(e, json.loads(state["config"]), state, path)
    missing, unexpected = e.eval_model.load_state_dict(weights_for(e.eval_model, ckpt.load_weights(path)), strict=False)
    missing = [m for m in missing if m not in set(getattr(e.model, "_tied_weights_keys", None) or [])]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    own_run = path.parent.resolve() == e.ckpt_dir.resolve()
    e.load_state_dict(state, own_run)
    if not own_run and state["best"]["step"] is not None:
        # Resumed from another run's checkpoint: its best checkpoint lives there, not in this run, so
        # this run selects its best among its own checkpoints.
        log.info("resume: the best checkpoint of %s (step %d) stays there; this run selects its own",
                 path.parent.parent, state["best"]["step"])
    if e.best_step is not None and e.keeps_best_weights:
        # The best checkpoint is always kept, and holds exactly the weights that were evaluated.
        e.best_weights = weights_for(e.model, ckpt.load_weights(e.ckpt_dir / ckpt.checkpoint_name(e.best_step)))
    rng_file = path / f"{ckpt.RNG_PREFIX}{e.env.rank}.pt"
    if rng_file.exists():
        set_rng_state(ckpt.load_state(rng_file))
    elif int(state["world_size"]) == e.env.world_size or not cfg.allow_resume_mismatch:
        raise CheckpointError(f"{path}: the RNG state of rank {e.env.rank} ({rng_file.name}) is missing")
    else:
        log.warning("resume: no RNG state for rank %d (world size changed); seeding it afresh", e.env.rank)
        seed_everything(cfg.seed + 1000 * e.env.rank + e.step)
    e.resumed_from = path
    dropped = e.metrics.truncate_after(e.step)
    log.info("resumed from %s at step %d%s", path, e.step,
             f" (dropped {dropped} metrics events logged after it)" if dropped else "")


# What resume reads from train_state.pt, beside the optional parts of later versions.
STATE_KEYS = frozenset({"version", "config", "optimizer", "scheduler", "scaler", "streams", "step", "best",
                        "nonfinite_skips", "objectives", "world_size", "fingerprints"})


def _check_checkpoint_files(path: Path) -> None:
    """The files of the checkpoint a run resumes from that the run reads again later (at its end, or to
    evaluate or export it): checked now, so damage stops the run before step 1, not after the last."""
    from transformers import AutoConfig

    from sftcli.model import register_sft_classes
    from sftcli.runfiles import ModelConfigFile, read_record

    ckpt.read_sft_state(path)
    read_record(path / "config.json", ModelConfigFile)
    register_sft_classes()
    try:
        AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # a config.json of the wrong shape fails with whatever error its reader meets
        raise CheckpointError(f"{path / 'config.json'} is damaged: {type(exc).__name__}: {exc}") from None


def _check_config(engine: Engine, saved: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    current = to_plain(engine.cfg, engine.plan.record())  # as the checkpoint records it: with the run's plan
    saved = _with_defaults(saved)
    diffs = []
    for field in RESUME_FIELDS:
        diffs.extend(_diff(field, _get(saved, field), _get(current, field)))
    if state["fingerprints"].get("data") != engine.data.fingerprint() and not any(d.startswith("data") for d in diffs):
        diffs.append("data: the data set content changed (fingerprint differs)")
    if diffs and not engine.cfg.allow_resume_mismatch:
        lines = "\n".join(f"  - {d}" for d in diffs)
        raise CheckpointError(f"cannot resume from {path}: the config differs from the checkpoint's:\n{lines}\n"
                              f"set allow_resume_mismatch=true to resume anyway")
    for d in diffs:
        log.warning("resume with a changed config: %s", d)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's config with the keys added since it was written at their defaults, so that a run
    saved by an earlier sft version resumes while those keys are left alone. A saved config that no
    longer validates is compared as it was written."""
    try:
        return to_plain(from_plain(saved))
    except ConfigError:
        return saved


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


def _diff(prefix: str, a: Any, b: Any) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys()):
            out.extend(_diff(f"{prefix}.{k}", a.get(k), b.get(k)))
        return out
    return [] if a == b else [f"{prefix}: checkpoint {a!r} != now {b!r}"]


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return str(o)
