#!/usr/bin/env python
"""Benchmark sft's training loop on this machine, in one invocation.

    python benchmarks/bench.py                      # everything (15-30 minutes on 2 CPU cores)
    python benchmarks/bench.py --quick --skip-scale # a smoke test on model=tiny (under a minute)
    python benchmarks/bench.py --skip-scale --steps 60 --repeats 5 --out results.json
    python benchmarks/bench.py --only-scale --scale-sizes 10000,1000000 --scale-minilm-max 0  # section 6, tiny

Sections (each printed as a table, and all figures written to --out as JSON):

1. supervised: sft's own Trainer loop against the Hugging Face Trainer at equal settings (same model,
   TREC-6 train, batch size, max length, AdamW and schedule, steps; evaluation off; both with dynamic
   padding and length-grouped batches), fp32 and bf16 autocast, alternating the arms in every repeat.
   Throughput is timed between the model's training forwards (a forward pre-hook, the same for both), so
   each figure covers whole steps (data, forward, backward, clipping, optimizer, logging); the first
   --warmup steps are excluded.
2. mix: a mix step of sft's loop against a bare forward+backward on the very same inputs (replayed),
   with the frozen-encoder cache on (loss.teacher_cache=true) and off.
3. bf16: the speed-up of bf16 autocast, and the test accuracy of a short run (--acc-steps, 16 labels per
   class) in fp32 and bf16.
4. flops: achieved model FLOP/s of the training step against the matmul peak measured here.
5. memory: peak resident memory of this process (resource.getrusage).
6. scale: a generated unlabeled corpus (under --workdir, never in the repository) of --scale-sizes texts
   through data=files data.unlabeled=FILE.txt, each size in fresh subprocesses: reading, tokenisation
   and teacher-cache build times, then the peak RSS of a short mix run from the caches.
7. pile: what `+recipe=best` costs as its pile grows (8k, 64k, 1M real texts): benchmarks/pile.py, run on
   its own (python benchmarks/pile.py; about 20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftcli.api import (
    DataConfig,
    Engine,
    LossConfig,
    ModelConfig,
    OptimConfig,
    StrategyConfig,
    TrainConfig,
    TrainerConfig,
    local_env,
    malloc,
    timing,
)

REPO = Path(__file__).resolve().parent.parent

SEED = 0


class _StopRun(Exception):
    """Raised from the forward hook once the timed window is complete: no end-of-run eval or save."""


# ----------------------------------------------------------------------------------------------------
# small helpers


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def current_rss_mb() -> float:
    return _proc_status_mb("VmRSS")


def subprocess_peak_rss_mb() -> float:
    """Peak RSS of this (sub)process since it started. getrusage's ru_maxrss would do, except that a
    child inherits its parent's value at fork, so a small child of a big parent would report the parent's."""
    hwm = _proc_status_mb("VmHWM")
    return hwm if not math.isnan(hwm) else peak_rss_mb()


def spread(values: list[float]) -> dict[str, Any]:
    """median, min, max, relative spread ((max - min) / median) and the runs themselves."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else float("nan"), "runs": values}


def fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for r in cells[1:]:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def say(text: str = "") -> None:
    print(text, flush=True)


def quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("sft").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class Settings:
    model: str = "minilm"
    batch_size: int = 32
    max_length: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    steps: int = 0
    mix_steps: int = 20
    warmup: int = 5
    repeats: int = 3
    hf_workers: int = 0
    hf_compile: bool = False
    acc_steps: int = 150
    acc_seeds: list[int] = field(default_factory=lambda: [0])
    labels_per_class: int = 16
    cache_dir: str = ""
    workdir: str = ""
    device: str = "cpu"

    def model_config(self) -> ModelConfig:
        return ModelConfig(source=self.model, max_length=self.max_length)  # type: ignore[arg-type]

    def optim_config(self) -> OptimConfig:
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                           max_grad_norm=self.max_grad_norm)


# ----------------------------------------------------------------------------------------------------
# Timing the training step from outside: a forward pre-hook on the model marks each step's start.


class StepClock:
    """Records the start time, batch size, padded and non-pad tokens of every training step.

    sft: a forward pre-hook on the model (the loop calls the model once a step). HF Trainer: its
    training_step (see run_hf), which starts each step's forward; a hook inside a torch.compile'd model
    would break its graph. The span from step k to step k + n covers n whole steps, whatever the loop
    does in between, so both are timed alike. After `stop_after` steps it raises _StopRun, ending the
    run before its end-of-training evaluation and save (which are not timed).
    """

    def __init__(self, model: torch.nn.Module | None, stop_after: int, keep_inputs: bool = False):
        self.stamps: list[float] = []
        self.samples: list[int] = []
        self.tokens: list[int] = []
        self.padded: list[int] = []
        self.lengths: list[np.ndarray] = []
        self.inputs: list[dict[str, torch.Tensor]] = []
        self.stop_after, self.keep_inputs = stop_after, keep_inputs
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True) if model is not None else None

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if module.training:  # not an evaluation (or a teacher view)
            self.record(kwargs)

    def record(self, kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].is_cuda:
            # Kernels run behind the Python that launches them: wait for the previous step to end, so a
            # stamp marks a step boundary (the same wait for both trainers).
            torch.cuda.synchronize()
        now = time.perf_counter()
        if len(self.stamps) >= self.stop_after:
            self.stamps.append(now)
            raise _StopRun
        mask, ids = kwargs.get("attention_mask"), kwargs["input_ids"]
        lengths = mask.sum(1).cpu().numpy() if mask is not None else np.full(ids.shape[0], ids.shape[1])
        self.stamps.append(now)
        self.samples.append(int(ids.shape[0]))
        self.tokens.append(int(lengths.sum()))
        self.padded.append(int(ids.numel()))
        self.lengths.append(lengths)
        if self.keep_inputs:
            self.inputs.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def window(self, warmup: int) -> dict[str, Any]:
        """Figures over the steps after the first `warmup` (the last stamp closes the window)."""
        if self.handle is not None:
            self.handle.remove()
        n = len(self.stamps) - 1 - warmup
        if n < 1:
            raise RuntimeError(f"only {len(self.stamps)} step stamps recorded")
        seconds = self.stamps[-1] - self.stamps[warmup]
        sl = slice(warmup, warmup + n)
        steps = np.diff(self.stamps)[sl]
        return {
            "steps": n, "seconds": seconds,
            "samples_per_s": sum(self.samples[sl]) / seconds,
            "tokens_per_s": sum(self.tokens[sl]) / seconds,
            "padded_tokens_per_s": sum(self.padded[sl]) / seconds,
            "step_s_median": float(np.median(steps)),
            "mean_nonpad_tokens_per_sample": sum(self.tokens[sl]) / sum(self.samples[sl]),
            "padding_fraction": 1 - sum(self.tokens[sl]) / sum(self.padded[sl]),
            "_lengths": self.lengths[sl], "_padded": self.padded[sl], "_step_times": steps.tolist(),
        }


# ----------------------------------------------------------------------------------------------------
# The arms


def sft_config(s: Settings, *, precision: str = "fp32", strategy: str | None = None, teacher_cache: bool = True,
               max_steps: int, labels_per_class: int | None = None, batch_size: int | None = None,
               seed: int = SEED, eval_every: int = 0, data: DataConfig | None = None) -> TrainConfig:
    loss = LossConfig(weight=0.1, tau=0.05, teacher_cache=teacher_cache) if strategy else LossConfig()
    return TrainConfig(
        model=s.model_config(),
        data=data or DataConfig(source="trec6", labels_per_class=labels_per_class, length_grouping=True),
        loss=loss, optim=s.optim_config(),
        trainer=TrainerConfig(max_steps=max_steps, batch_size=batch_size or s.batch_size, eval_every=eval_every,
                              save_every=0, log_every=max_steps, progress="none", precision=precision,  # type: ignore[arg-type]
                              device=s.device),  # type: ignore[arg-type]
        strategy=StrategyConfig(name=strategy) if strategy else None,  # type: ignore[arg-type]
        seed=seed, run_name="bench", cache_dir=s.cache_dir,
    )


def new_sft_trainer(cfg: TrainConfig) -> Engine:
    run_dir = Path(tempfile.mkdtemp(prefix="sft-run-", dir=cfg.cache_dir))
    t = Engine(cfg, run_dir, local_env(cfg))
    t.setup()
    return t


def run_sft_supervised(s: Settings, precision: str, seed: int = SEED, malloc_tuning: bool = True,
                       levers_off: frozenset[str] = frozenset()) -> dict[str, Any]:
    total = s.warmup + s.steps + 1
    cfg = sft_config(s, precision=precision, max_steps=total, seed=seed)
    cfg.trainer.malloc_tuning = malloc_tuning
    for lever in levers_off:
        LEVERS[lever](cfg)
    t = new_sft_trainer(cfg)
    clock = StepClock(t.model, stop_after=s.warmup + s.steps)
    with contextlib.suppress(_StopRun):
        t.train()
    out = clock.window(s.warmup)
    shutil.rmtree(t.run_dir, ignore_errors=True)
    return out


class HFData:
    """TREC-6 train for the HF Trainer: the very token ids sft's loop trains on (same tokenizer, max length)."""

    def __init__(self, s: Settings):
        import datasets

        from sftcli.api import encode, load_data, load_tokenizer, tokenizer_fingerprint

        bundle = load_data(DataConfig(source="trec6", labels_per_class=None), SEED)
        self.label_names = bundle.label_names
        self.tokenizer = load_tokenizer(s.model_config())
        enc = encode(bundle.labeled, self.tokenizer, s.max_length, Path(s.cache_dir),
                     tokenizer_fingerprint(self.tokenizer))
        ids = [enc.get(i)[0].astype(np.int64).tolist() for i in range(len(enc))]
        self.dataset = datasets.Dataset.from_dict({"input_ids": ids, "labels": bundle.labeled.labels.tolist()})


def run_hf(s: Settings, data: HFData, precision: str, seed: int = SEED) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from sftcli.api import build_model

    total = s.warmup + s.steps + 1
    out_dir = tempfile.mkdtemp(prefix="hf-run-", dir=s.cache_dir)
    args = TrainingArguments(
        output_dir=out_dir, max_steps=total, per_device_train_batch_size=s.batch_size,
        learning_rate=s.lr, weight_decay=s.weight_decay, warmup_steps=s.warmup_ratio, lr_scheduler_type="linear",
        max_grad_norm=s.max_grad_norm, optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length",  # transformers 5.x spelling of group_by_length=True
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=s.device == "cpu", bf16=precision == "bf16", seed=seed,
        dataloader_num_workers=s.hf_workers, dataloader_pin_memory=False,
        dataloader_persistent_workers=s.hf_workers > 0, torch_compile=s.hf_compile,
    )
    clock = StepClock(None, stop_after=s.warmup + s.steps)

    class TimedTrainer(Trainer):
        def training_step(self, *a: Any, **k: Any) -> torch.Tensor:
            clock.record(a[1] if len(a) > 1 else k["inputs"])
            return super().training_step(*a, **k)

    model = build_model(s.model_config(), data.label_names, seed)
    trainer = TimedTrainer(model=model, args=args, train_dataset=data.dataset, processing_class=data.tokenizer,
                           data_collator=DataCollatorWithPadding(data.tokenizer))
    with contextlib.suppress(_StopRun):
        trainer.train()
    out = clock.window(s.warmup)
    shutil.rmtree(out_dir, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------------
# FLOPs


def model_shape(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts and the encoder shape used by the FLOP count."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n and p.ndim == 2)
    cfg = model.config
    return {"params": total, "embedding_params": emb, "non_embedding_params": total - emb,
            "layers": int(cfg.num_hidden_layers), "hidden": int(cfg.hidden_size)}


def train_flops(shape: dict[str, int], lengths: list[np.ndarray], padded: list[int],
                first_token_only: bool = False) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of the training steps whose per-sequence lengths are given.

    Model FLOPs (the usual MFU count): 6 * non-embedding params * non-pad tokens (a multiply-add is 2
    FLOPs; backward is twice forward) plus attention scores and weighted sum, 2 * 2 * s^2 * hidden per
    layer forward, times 3 for forward + backward, over each sequence's true length s, for the whole
    encoder. Embedding lookups are gathers, not FLOPs. Hardware FLOPs count what the loop computes: the
    padded tokens, and with `first_token_only` (trainer.cls_only_last_layer) a last layer whose query
    projection, attention, output projection and feed-forward block (10 of its 12 h^2 weights per token)
    run for one token per text, its key and value projections for all.
    """
    n, L, h = shape["non_embedding_params"], shape["layers"], shape["hidden"]
    model = hw = 0.0
    for lens, pad in zip(lengths, padded, strict=True):
        lens = lens.astype(np.float64)
        model += 6 * n * lens.sum() + 12 * L * h * (lens**2).sum()
        texts, width = len(lens), pad / len(lens)
        hw += 6 * n * pad + 12 * L * h * texts * width**2
        if first_token_only:
            hw -= 6 * 10 * h * h * texts * (width - 1) + 12 * h * texts * (width**2 - width)
    return model, hw


def matmul_peak(n: int, dtype: torch.dtype, seconds: float = 3.0, device: str = "cpu") -> float:
    """Best achieved FLOP/s of an n x n x n torch.matmul (2 n^3 FLOPs), over about `seconds`."""
    a = torch.randn(n, n).to(device=device, dtype=dtype)
    b = torch.randn(n, n).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        torch.matmul(a, b)
    sync()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


# ----------------------------------------------------------------------------------------------------
# Section 1 (+ 3 speed, + 4): supervised A/B


# arm -> (loop, precision, glibc malloc tuning, sft's compute levers on). sft tunes malloc as it does for
# users (trainer.malloc_tuning=true); the HF Trainer runs with glibc's own settings. The "_plain" and
# "_tuned" arms swap that, to show how much of the difference the allocator makes. The "_nolevers" arms
# turn off every setting in LEVERS (what sft computes differently from the HF Trainer's model): what is left
# is the loop itself. An sft arm name followed by -LEVER (e.g. sft_bf16-cls_only_last_layer) turns off that one.
ARMS = {
    "sft_fp32": ("sft", "fp32", True, True), "hf_fp32": ("hf", "fp32", False, False),
    "sft_bf16": ("sft", "bf16", True, True), "hf_bf16": ("hf", "bf16", False, False),
    "sft_fp32_plain": ("sft", "fp32", False, True), "sft_bf16_plain": ("sft", "bf16", False, True),
    "hf_fp32_tuned": ("hf", "fp32", True, False), "hf_bf16_tuned": ("hf", "bf16", True, False),
    "sft_fp32_nolevers": ("sft", "fp32", True, False), "sft_bf16_nolevers": ("sft", "bf16", True, False),
}


def _off(section: str, key: str, value: Any) -> Any:
    return lambda cfg: setattr(getattr(cfg, section), key, value)


# sft's compute levers, and how each is turned off.
LEVERS = {
    "cls_only_last_layer": _off("trainer", "cls_only_last_layer", False),
}


def arm_spec(arm: str) -> tuple[str, str, bool, frozenset[str]]:
    """(loop, precision, malloc tuning, levers turned off) of an arm name; ValueError for an unknown one."""
    base, *minus = arm.split("-")
    if base not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: arms are {', '.join(ARMS)}, and sft arms followed by -LEVER")
    who, precision, tuned, levers = ARMS[base]
    unknown = [m for m in minus if m not in LEVERS]
    if unknown or (minus and who != "sft"):
        raise ValueError(f"arm {arm!r}: -LEVER applies to sft arms, with LEVER one of {', '.join(LEVERS)}")
    off = frozenset(LEVERS) if (who == "sft" and not levers) else frozenset(minus)
    return who, precision, tuned, off


def bench_supervised(s: Settings, arms: list[str], results: dict[str, Any]) -> None:
    say(f"\n[1] supervised loop: {', '.join(arms)}; {s.repeats} repeats, batch {s.batch_size}, "
        f"max_length {s.max_length}, {s.warmup} warm-up steps excluded")
    hf_data = HFData(s)
    # HF's LengthGroupedSampler sorts each mega-batch of `cycle` batches longest first, so a window of a
    # few steps would see longer texts than sft's shuffled length groups; whole cycles see every rank once.
    n = len(hf_data.dataset)
    cycle = max(1, min(n // (s.batch_size * 4), 50))
    if not s.steps:
        s.steps = cycle
    elif s.steps % cycle:
        say(f"    note: --steps {s.steps} is not a multiple of HF's length-group cycle ({cycle} batches): the HF "
            f"window may see longer or shorter texts than sft's; compare tokens/s")
    from sftcli.api import build_model

    shape_model = build_model(s.model_config(), [str(i) for i in range(6)], SEED)
    largest_param_bytes = malloc.largest_parameter_bytes(shape_model)
    shape = model_shape(shape_model)
    del shape_model
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for r in range(s.repeats):
        order = arms[r % len(arms):] + arms[: r % len(arms)]  # rotate: no arm always runs first
        for arm in order:
            who, precision, tuned, levers_off = arm_spec(arm)
            # A new seed each repeat (the same for every arm): each run's window is a different sample of
            # the data, so neither loop keeps a window of shorter or longer texts over all repeats.
            seed = SEED + r
            # malloc settings are process-wide: every arm starts from glibc's own, and sft's Trainer tunes
            # them itself when trainer.malloc_tuning is on.
            malloc.glibc_steady_state()
            if who == "sft":
                out = run_sft_supervised(s, precision, seed, malloc_tuning=tuned, levers_off=levers_off)
            else:
                if tuned:
                    malloc.keep_large_blocks(largest_param_bytes)
                out = run_hf(s, hf_data, precision, seed)
            runs[arm].append(out)
            if r == 0 and arm == order[0]:
                say(f"    {out['steps']} timed steps per run")
            say(f"    repeat {r + 1} {arm:9s} {out['samples_per_s']:8.1f} samples/s  {out['tokens_per_s']:9.0f} "
                f"tokens/s  (step {out['step_s_median'] * 1000:.0f} ms, padding {out['padding_fraction']:.0%})")

    # FLOPs of the exact batches each run trained on.
    summary: dict[str, Any] = {}
    for arm in arms:
        entry: dict[str, Any] = {}
        for key in ("samples_per_s", "tokens_per_s", "padded_tokens_per_s", "step_s_median", "padding_fraction",
                    "mean_nonpad_tokens_per_sample"):
            entry[key] = spread([run[key] for run in runs[arm]])
        who, _, _, off = arm_spec(arm)
        first_token_only = who == "sft" and "cls_only_last_layer" not in off
        flops = [train_flops(shape, run["_lengths"], run["_padded"], first_token_only=first_token_only)
                 for run in runs[arm]]
        entry["model_flops_per_s"] = spread([f[0] / run["seconds"] for f, run in zip(flops, runs[arm], strict=True)])
        entry["hardware_flops_per_s"] = spread([f[1] / run["seconds"] for f, run in
                                                zip(flops, runs[arm], strict=True)])
        summary[arm] = entry
    ratios: dict[str, Any] = {}
    pairs = [(f"sft_{p}{a}", f"hf_{p}{b}") for p in ("fp32", "bf16")
             for a, b in (("", ""), ("", "_tuned"), ("_plain", ""), ("_plain", "_tuned"), ("_nolevers", ""))]
    pairs += [(f"sft_{p}", f"sft_{p}_nolevers") for p in ("fp32", "bf16")]
    pairs += [(arm.split("-")[0], arm) for arm in arms if "-" in arm]  # what each lever is worth
    for a, b in pairs:
        if a in runs and b in runs:
            ratios[f"{a} / {b}"] = {
                key: {"of_medians": summary[a][key]["median"] / summary[b][key]["median"],
                      # paired: each repeat's sft over the same repeat's HF (robust to drifting load)
                      "paired": spread([x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True)])}
                for key in ("samples_per_s", "tokens_per_s")}
    results["supervised"] = {"arms": summary, "sft_over_hf": ratios, "model_shape": shape}

    rows = []
    for arm in arms:
        e = summary[arm]
        rows.append([arm, e["samples_per_s"]["median"], f"{e['samples_per_s']['spread']:.1%}",
                     e["tokens_per_s"]["median"], f"{e['tokens_per_s']['spread']:.1%}",
                     e["step_s_median"]["median"] * 1000, f"{e['padding_fraction']['median']:.1%}"])
    say()
    say(table("supervised throughput (medians over repeats; spread = (max - min) / median)",
              ["arm", "samples/s", "spread", "non-pad tokens/s", "spread", "step ms", "padding"], rows))
    for pair, r in ratios.items():
        say(f"{pair}: samples/s {r['samples_per_s']['of_medians']:.3f}x "
            f"(paired per repeat: median {r['samples_per_s']['paired']['median']:.3f}x, "
            f"range {r['samples_per_s']['paired']['min']:.3f}-{r['samples_per_s']['paired']['max']:.3f}); "
            f"non-pad tokens/s {r['tokens_per_s']['of_medians']:.3f}x")


# ----------------------------------------------------------------------------------------------------
# Section 2: the mix step against the forward+backward it contains


def bench_mix(s: Settings, results: dict[str, Any]) -> None:
    say(f"\n[2] mix step vs its own forward+backward (sft defaults: 16 labeled + 32 unlabeled texts a step, "
        f"{s.labels_per_class} labels/class), teacher cache on and off; {s.repeats} repeats x {s.mix_steps} "
        f"timed steps")
    teacher_times: list[float] = []

    def heard(name: str, seconds: float) -> None:
        if name == "teacher_cache":
            teacher_times.append(seconds)

    per_arm: dict[str, list[dict[str, float]]] = {"cache_on": [], "cache_off": []}
    with timing.listen(heard):
        for r in range(s.repeats):
            for arm in (("cache_on", "cache_off") if r % 2 == 0 else ("cache_off", "cache_on")):
                out = _one_mix_run(s, teacher_cache=arm == "cache_on")
                per_arm[arm].append(out)
                say(f"    repeat {r + 1} {arm:9s} mix step {out['mix_step_s'] * 1000:6.0f} ms   fwd+bwd "
                    f"{out['fwd_bwd_s'] * 1000:6.0f} ms   +clip+optimizer {out['opt_s'] * 1000:5.0f} ms   "
                    f"ratio {out['ratio_to_fwd_bwd']:.3f}x")
    summary = {arm: {k: spread([o[k] for o in outs]) for k in outs[0]} for arm, outs in per_arm.items()}
    summary["teacher_cache_build_s"] = teacher_times[0] if teacher_times else None  # first call: a miss
    summary["teacher_cache_read_s"] = statistics.median(teacher_times[1:]) if len(teacher_times) > 1 else None
    results["mix"] = summary
    rows = [[arm, summary[arm]["mix_step_s"]["median"] * 1000, summary[arm]["fwd_bwd_s"]["median"] * 1000,
             summary[arm]["opt_s"]["median"] * 1000, f"{summary[arm]['ratio_to_fwd_bwd']['median']:.3f}x",
             f"{summary[arm]['ratio_to_fwd_bwd']['spread']:.1%}", f"{summary[arm]['ratio_to_step']['median']:.3f}x"]
            for arm in ("cache_on", "cache_off")]
    say()
    say(table("mix step cost (medians; ratio = mix step / bare forward+backward on the same inputs; "
              "vs step = / (forward+backward + clip + optimizer))",
              ["teacher cache", "mix step ms", "fwd+bwd ms", "clip+opt ms", "ratio", "spread", "vs step"], rows))
    say(f"teacher cache for the {s.labels_per_class}-labels/class unlabeled set: built in "
        f"{fmt(summary['teacher_cache_build_s'], 2)} s, read back in {fmt(summary['teacher_cache_read_s'], 3)} s")


def _one_mix_run(s: Settings, teacher_cache: bool) -> dict[str, float]:
    total = s.warmup + s.mix_steps + 1
    cfg = sft_config(s, strategy="mix", teacher_cache=teacher_cache, max_steps=total,
                     labels_per_class=s.labels_per_class, batch_size=16)
    t = new_sft_trainer(cfg)
    clock = StepClock(t.model, stop_after=s.warmup + s.mix_steps, keep_inputs=True)
    with contextlib.suppress(_StopRun):
        t.train()
    win = clock.window(s.warmup)
    mix_s = win["seconds"] / win["steps"]
    # Replay the same inputs through a bare forward+backward (cross-entropy on the labeled rows, which
    # back-propagates through every row's matmuls), then clipping + the optimizer step, timed apart. The
    # replay asks for the hidden states as the mix step does, so both run the whole last layer
    # (trainer.cls_only_last_layer shortens it only for forwards that need nothing but logits).
    model, n_lab = t.model, cfg.trainer.batch_size
    model.train()
    fb = opt = 0.0
    replay = clock.inputs[s.warmup: s.warmup + win["steps"]]
    for inputs in replay:
        labels = torch.zeros(n_lab, dtype=torch.long)
        t0 = time.perf_counter()
        out = model(**inputs, output_hidden_states=True)
        torch.nn.functional.cross_entropy(out.logits[:n_lab].float(), labels).backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        fb, opt = fb + t1 - t0, opt + t2 - t1
    fb, opt = fb / len(replay), opt / len(replay)
    shutil.rmtree(t.run_dir, ignore_errors=True)
    return {"mix_step_s": mix_s, "fwd_bwd_s": fb, "opt_s": opt, "ratio_to_fwd_bwd": mix_s / fb,
            "ratio_to_step": mix_s / (fb + opt)}


# ----------------------------------------------------------------------------------------------------
# Section 3: bf16 accuracy


def bench_accuracy(s: Settings, results: dict[str, Any]) -> None:
    say(f"\n[3] bf16 autocast vs fp32: test accuracy after {s.acc_steps} steps, {s.labels_per_class} labels/class, "
        f"seeds {s.acc_seeds} (supervised baseline, batch 16, one evaluation at the end)")
    out: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        accs, speeds = [], []
        for seed in s.acc_seeds:
            cfg = sft_config(s, precision=precision, max_steps=s.acc_steps, labels_per_class=s.labels_per_class,
                             batch_size=16, seed=seed)
            t = new_sft_trainer(cfg)
            t0 = time.perf_counter()
            summary = t.train()
            wall = time.perf_counter() - t0
            events = [json.loads(x) for x in (t.run_dir / "metrics.jsonl").read_text().splitlines()]
            sps = [e["perf/samples_per_s"] for e in events if "perf/samples_per_s" in e]
            accs.append(float(summary["test/accuracy"]))
            speeds.append(sps[-1] if sps else float("nan"))
            say(f"    {precision} seed {seed}: test accuracy {accs[-1]:.4f}, {speeds[-1]:.1f} samples/s "
                f"(sft's own perf/samples_per_s), run {wall:.0f} s")
            shutil.rmtree(t.run_dir, ignore_errors=True)
        out[precision] = {"test_accuracy": spread(accs), "samples_per_s": spread(speeds)}
    out["accuracy_diff_points"] = 100 * (out["bf16"]["test_accuracy"]["median"] - out["fp32"]["test_accuracy"]["median"])
    results["bf16_accuracy"] = out


# ----------------------------------------------------------------------------------------------------
# Section 6: scale (each job in fresh subprocesses)


WORDS = ["what", "who", "where", "when", "why", "how", "which", "is", "are", "was", "were", "the", "a", "an", "of", "in", "on", "at", "to", "for", "from", "by", "with", "city", "country", "river", "mountain", "name", "year", "people", "company", "film", "book", "song", "team", "game", "war", "king", "president", "capital", "largest", "first", "many", "much", "long", "far", "old", "does", "did", "do", "can", "could", "would", "should", "state", "world", "water", "animal", "language", "money", "school", "university", "music", "color", "number", "day", "time", "earth", "moon", "star"]


def write_corpus(path: Path, n: int, seed: int = 7) -> None:
    """n synthetic one-line texts (6-25 words from a small question vocabulary), seeded."""
    if path.exists() and sum(1 for _ in path.open("rb")) == n:
        return
    rng = np.random.default_rng([seed, n])
    vocab = np.array(WORDS)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            lens = rng.integers(6, 26, size=m)
            words = vocab[rng.integers(0, len(vocab), size=int(lens.sum()))]
            cuts = np.cumsum(lens)[:-1]
            fh.writelines(" ".join(part) + "?\n" for part in np.split(words, cuts))
    tmp.replace(path)


def write_labeled(folder: Path) -> dict[str, str]:
    """TREC-6 train / validation / test as csv files (text,label) for data=files."""
    import csv

    from sftcli.api import load_data

    bundle = load_data(DataConfig(source="trec6", labels_per_class=None), SEED)
    paths = {}
    for split, ts in (("train", bundle.labeled), ("validation", bundle.validation), ("test", bundle.test)):
        path = folder / f"trec6-{split}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows((t, bundle.label_names[y]) for t, y in zip(ts.texts, ts.labels, strict=True))
        paths[split] = str(path)
    return paths


class AnonPeak:
    """Samples the anonymous part of the RSS (the process's own heap: Python objects, tensors) every
    20 ms. The rest of the RSS is file-backed: shared libraries and memory-mapped files, whose pages
    count as resident once touched (a random read through a memory map maps the whole page-cache folio
    around it, up to 2 MB on recent kernels; sft reads its caches' rows by position, so they stay out)
    but belong to the page cache and are reclaimable."""

    def __init__(self) -> None:
        import threading

        self.peak = _proc_status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _proc_status_mb("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _proc_status_mb("RssAnon"))


def scale_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh subprocess: sft's Trainer on data=files data.unlabeled=FILE.txt, phases timed."""
    anon = AnonPeak()
    quiet_libraries()
    torch.set_num_threads(spec["threads"])
    phases: dict[str, float] = {}
    rss: dict[str, float] = {}

    def heard(name: str, seconds: float) -> None:
        phases[name] = phases.get(name, 0.0) + seconds
        rss[f"after_{name}"] = current_rss_mb()

    n = spec["size"]
    files = spec["files"]
    data = DataConfig(source="files", train=files["train"], validation=files["validation"], test=files["test"],
                      unlabeled=spec["corpus"], labels_per_class=16)
    s = Settings(model=spec["model"], cache_dir=spec["cache_dir"])
    cfg = sft_config(s, strategy="mix", max_steps=spec["steps"], batch_size=16, data=data)
    t0 = time.perf_counter()
    with timing.listen(heard):  # the setup's phases: read, tokenise (the unlabeled texts), teacher_cache
        t = new_sft_trainer(cfg)
    phases["setup_total"] = time.perf_counter() - t0
    rss["after_setup"] = current_rss_mb()
    n_tokens = int(t.batches.unlabeled.lengths().sum())  # the frozen-encoder cache read the whole corpus
    out: dict[str, Any] = {"size": n, "model": spec["model"], "phase": spec["phase"], "unlabeled_tokens": n_tokens}
    if spec["steps"]:
        t0 = time.perf_counter()
        t.train()
        phases["train"] = time.perf_counter() - t0
        rss["after_train"] = current_rss_mb()
        events = [json.loads(x) for x in (t.run_dir / "metrics.jsonl").read_text().splitlines()]
        sps = [e["perf/samples_per_s"] for e in events if "perf/samples_per_s" in e]
        out["samples_per_s"] = sps[-1] if sps else None
    out.update({"seconds": phases, "rss_mb": rss, "peak_rss_mb": subprocess_peak_rss_mb(),
                "peak_anon_rss_mb": anon.stop(), "file_rss_mb_at_end": _proc_status_mb("RssFile")})
    return out


def run_scale_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "HF_DATASETS_CACHE": str(Path(spec["cache_dir"]) / "hf-datasets"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--scale-job", json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"}
    return json.loads(stdout.strip().splitlines()[-1])


def bench_scale(s: Settings, args: argparse.Namespace, results: dict[str, Any]) -> None:
    sizes = [int(x) for x in args.scale_sizes.split(",")]
    jobs = [(n, "tiny") for n in sizes] + [(n, "minilm") for n in sizes if n <= args.scale_minilm_max]
    if not jobs:
        return
    say(f"\n[6] scale: unlabeled corpora of {', '.join(f'{n:,}' for n in sizes)} texts through data=files "
        f"data.unlabeled=FILE.txt; model=tiny at every size, model=minilm up to {args.scale_minilm_max:,} "
        f"(--scale-minilm-max); each job: a build run (fresh caches) then a {args.scale_steps}-step mix run "
        f"from the caches, each in a fresh subprocess")
    work = Path(s.workdir)
    t0 = time.perf_counter()
    for n in sizes:
        write_corpus(work / f"corpus-{n}.txt", n)
    say(f"    corpus files written under {work} in {time.perf_counter() - t0:.1f} s (not part of the repository)")
    files = write_labeled(work)
    rows_out = []
    for n, model in jobs:
        cache = Path(tempfile.mkdtemp(prefix=f"scale-{model}-{n}-", dir=s.cache_dir))
        base = {"size": n, "model": model, "corpus": str(work / f"corpus-{n}.txt"), "files": files,
                "cache_dir": str(cache), "threads": torch.get_num_threads()}
        build = run_scale_subprocess({**base, "phase": "build", "steps": 0}, args.scale_timeout)
        train = run_scale_subprocess({**base, "phase": "train", "steps": args.scale_steps}, args.scale_timeout) \
            if "error" not in build else {"error": "build failed"}
        shutil.rmtree(cache, ignore_errors=True)
        row = {"size": n, "model": model, "build": build, "train": train}
        rows_out.append(row)
        err = build.get("error") or train.get("error")
        if err:
            say(f"    {model} {n:,}: FAILED ({err})")
            continue
        b = build["seconds"]
        say(f"    {model:6s} {n:>9,}: read {b.get('read', 0):6.1f} s  tokenise {b.get('tokenise', 0):6.1f} s  "
            f"teacher cache {b.get('teacher_cache', 0):7.1f} s  build peak RSS {build['peak_rss_mb']:6.0f} MB  "
            f"train-from-cache peak RSS {train['peak_rss_mb']:6.0f} MB (anonymous {train['peak_anon_rss_mb']:.0f})")

    # MiniLM teacher-cache time above --scale-minilm-max: extrapolated by token count (stated as such).
    ok = [r for r in rows_out if "error" not in r["build"] and "error" not in r["train"]]
    by_model = {m: {r["size"]: r for r in ok if r["model"] == m} for m in ("tiny", "minilm")}
    extrapolated = {}
    if by_model["minilm"]:
        ref = by_model["minilm"][max(by_model["minilm"])]
        per_token = ref["build"]["seconds"].get("teacher_cache", 0.0) / ref["build"]["unlabeled_tokens"]
        for n in sizes:
            if n > args.scale_minilm_max and n in by_model["tiny"]:
                extrapolated[str(n)] = {"teacher_cache_s": per_token * by_model["tiny"][n]["build"]["unlabeled_tokens"],
                                        "from_size": ref["size"], "note": "EXTRAPOLATED by token count, not measured"}
    ratios = {}
    for model, rows_m in by_model.items():
        if len(rows_m) >= 2:
            small, large = rows_m[min(rows_m)], rows_m[max(rows_m)]
            ratios[model] = {"sizes": [small["size"], large["size"]], **{
                f"{phase}_{key}": large[phase][key] / small[phase][key]
                for phase in ("build", "train") for key in ("peak_rss_mb", "peak_anon_rss_mb")}}
    results["scale"] = {"jobs": rows_out, "minilm_teacher_cache_extrapolated": extrapolated,
                        "rss_ratio_largest_vs_smallest": ratios, "steps": args.scale_steps}

    rows = []
    for r in rows_out:
        b, t = r["build"], r["train"]
        if "error" in b or "error" in t:
            rows.append([r["model"], f"{r['size']:,}", "failed"] + [""] * 8)
            continue
        rows.append([r["model"], f"{r['size']:,}", f"{b['unlabeled_tokens']:,}", b["seconds"].get("read", 0.0),
                     b["seconds"].get("tokenise", 0.0), b["seconds"].get("teacher_cache", 0.0), b["peak_rss_mb"],
                     t["seconds"].get("setup_total", 0.0), t.get("samples_per_s") or float("nan"), t["peak_rss_mb"],
                     t["peak_anon_rss_mb"]])
    for n, e in extrapolated.items():
        rows.append(["minilm", f"{int(n):,}", "", "", "", f"~{e['teacher_cache_s']:.0f} EXTRAPOLATED", "", "", "", "",
                     ""])
    say()
    say(table(f"scale (seconds, MB; build = fresh caches; train = setup from the caches + {args.scale_steps} mix "
              f"steps; anon = peak RSS less file-backed pages: libraries and the memory-mapped caches)",
              ["model", "texts", "tokens", "read s", "tokenise s", "teacher cache s", "build peak RSS",
               "train setup s", "train samples/s", "train peak RSS", "train peak anon"], rows))
    for n, e in extrapolated.items():
        say(f"MiniLM teacher cache at {int(n):,} texts: ~{e['teacher_cache_s']:.0f} s EXTRAPOLATED from the measured "
            f"{e['from_size']:,}-text build by token count (--scale-minilm-max {int(n)} measures it)")
    for model, r in ratios.items():
        say(f"{model}: {r['sizes'][1]:,} vs {r['sizes'][0]:,} texts: train-from-cache peak RSS "
            f"{r['train_peak_rss_mb']:.2f}x (anonymous {r['train_peak_anon_rss_mb']:.2f}x); build peak RSS "
            f"{r['build_peak_rss_mb']:.2f}x (anonymous {r['build_peak_anon_rss_mb']:.2f}x)")


# ----------------------------------------------------------------------------------------------------
# main


def machine_info(threads: int) -> dict[str, Any]:
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags,
            "load_average_start": list(os.getloadavg())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: model=tiny, few steps, small scale sizes")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where both trainers train and the matmul peak is measured (sections 1, 3, 4; cuda: "
                        "scripts/gpu_check.sh runs it with --skip-mix --skip-scale, which are CPU-only)")
    p.add_argument("--skip-scale", action="store_true", help="skip section 6 (the generated-corpus scale runs)")
    p.add_argument("--only-scale", action="store_true", help="run section 6 only (skip sections 1-5)")
    p.add_argument("--skip-accuracy", action="store_true", help="skip the bf16/fp32 short training runs")
    p.add_argument("--skip-mix", action="store_true", help="skip section 2")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run (default: one HF length-group cycle, 33 at batch 32 on TREC-6; quick 4)")
    p.add_argument("--mix-steps", type=int, default=None, help="timed steps per mix run (default 20; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; quick 1)")
    p.add_argument("--repeats", type=int, default=3, help="A/B repeats, alternating the arms (default 3)")
    p.add_argument("--model", choices=["minilm", "tiny"], default=None, help="default minilm (quick: tiny)")
    p.add_argument("--batch-size", type=int, default=32, help="supervised batch size for both trainers")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own; quick: 1, robust on a busy machine)")
    p.add_argument("--arms", default="sft_fp32,hf_fp32,sft_bf16,hf_bf16", help="section 1 arms, comma-separated; also sft_fp32_plain, sft_bf16_plain (sft without malloc tuning), hf_fp32_tuned, hf_bf16_tuned (HF with it), sft_fp32_nolevers, sft_bf16_nolevers (sft without its compute levers), and an sft arm with -LEVER to turn one off (LEVER: cls_only_last_layer)")
    p.add_argument("--hf-workers", type=int, default=0, help="HF Trainer dataloader_num_workers (default 0)")
    p.add_argument("--hf-compile", action="store_true", help="HF Trainer with torch_compile=True")
    p.add_argument("--acc-steps", type=int, default=None, help="steps of the bf16/fp32 accuracy runs (default 150)")
    p.add_argument("--acc-seeds", default="0", help="seeds of the accuracy runs, comma-separated")
    p.add_argument("--scale-sizes", default=None, help="unlabeled corpus sizes (default 10000,100000,1000000)")
    p.add_argument("--scale-minilm-max", type=int, default=None,
                   help="largest size run with model=minilm (default 100000; larger sizes: model=tiny, MiniLM "
                        "teacher-cache time extrapolated); model=tiny runs at every size")
    p.add_argument("--scale-steps", type=int, default=20, help="steps of each scale training run")
    p.add_argument("--scale-timeout", type=float, default=3600, help="seconds per scale subprocess")
    p.add_argument("--workdir", default=None, help="corpus files and caches (default /tmp/sft-bench)")
    p.add_argument("--out", default=None, help="write every figure to this JSON file")
    p.add_argument("--scale-job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (4 if q else 0)  # 0: one HF length-group cycle, worked out from the data
    if args.threads is None and q:
        args.threads = 1
    args.mix_steps = args.mix_steps or (3 if q else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 5)
    args.model = args.model or ("tiny" if q else "minilm")
    args.acc_steps = args.acc_steps or (10 if q else 150)
    args.scale_sizes = args.scale_sizes or ("500,2000" if q else "10000,100000,1000000")
    if args.scale_minilm_max is None:
        args.scale_minilm_max = 0 if q else 100_000
    if args.repeats < 1 or args.steps < 0 or args.mix_steps < 1:
        p.error("--repeats, --steps and --mix-steps must be >= 1")
    if args.device == "cuda" and not (args.skip_mix and args.skip_scale and not args.only_scale):
        p.error("--device cuda measures sections 1, 3 and 4 only: add --skip-mix --skip-scale")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scale_job:
        print(json.dumps(scale_job(json.loads(args.scale_job))))
        return 0
    try:
        for arm in args.arms.split(","):
            arm_spec(arm)  # an unknown arm stops here, before any run
    except ValueError as exc:
        print(f"error: --arms: {exc}", file=sys.stderr)
        return 2
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "sft-bench")
    workdir.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=workdir))  # fresh: the cache build is measured
    s = Settings(model=args.model, batch_size=args.batch_size, max_length=args.max_length, steps=args.steps,
                 mix_steps=args.mix_steps,
                 warmup=args.warmup, repeats=args.repeats, hf_workers=args.hf_workers, hf_compile=args.hf_compile,
                 acc_steps=args.acc_steps, acc_seeds=[int(x) for x in args.acc_seeds.split(",")],
                 cache_dir=str(cache), workdir=str(workdir), device=args.device)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(torch.get_num_threads()),
                               "settings": {k: v for k, v in vars(s).items() if k not in ("cache_dir", "workdir")}}
    m = results["machine"]
    say(f"sft benchmark: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"transformers {m['transformers']}; model={s.model}; load average {m['load_average_start'][0]:.2f}")
    if m["load_average_start"][0] > 0.5 * (m["cores"] or 1):
        say("    note: the machine is busy (load average above half the cores): absolute figures will be low and "
            "noisy (--threads 1 keeps them usable); the A/B ratios alternate arms to stay comparable")
    try:
        if args.only_scale:
            bench_scale(s, args, results)
        else:
            bench_all(s, args, results)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - started
    say(f"\ndone in {results['wall_s'] / 60:.1f} min; load average at the end {os.getloadavg()[0]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))
        say(f"figures written to {args.out}")
    return 0


def bench_all(s: Settings, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Sections 1-5, then section 6 unless --skip-scale."""
    size = 512 if args.quick else 8192 if s.device == "cuda" else 2048
    seconds = 1 if args.quick else 3
    results["peak"] = {"matrix": size, "device": s.device,
                       "fp32_flops_per_s": matmul_peak(size, torch.float32, seconds, s.device),
                       "bf16_flops_per_s": matmul_peak(size, torch.bfloat16, seconds, s.device)}
    say(f"\n[4a] matmul peak ({size}x{size}): fp32 {results['peak']['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {results['peak']['bf16_flops_per_s'] / 1e9:.1f} GFLOP/s")

    arms = [a for a in args.arms.split(",") if a]
    bench_supervised(s, arms, results)
    results["memory"] = {"peak_rss_mb_after_supervised": peak_rss_mb()}
    if not args.skip_mix:
        bench_mix(s, results)
    if not args.skip_accuracy:
        bench_accuracy(s, results)
    report_bf16_flops(results)
    results["memory"]["peak_rss_mb"] = peak_rss_mb()
    say(f"\n[5] peak RSS of this process (sections 1-4, sft and HF in one process): "
        f"{results['memory']['peak_rss_mb']:.0f} MB")
    if not args.skip_scale:
        bench_scale(s, args, results)


def report_bf16_flops(results: dict[str, Any]) -> None:
    """Sections 3 and 4 summaries from the supervised arms (and the accuracy runs when present)."""
    arms = results["supervised"]["arms"]
    peak = results["peak"]
    flops: dict[str, Any] = {}
    rows = []
    for arm, e in arms.items():
        p = peak[f"{arm_spec(arm)[1]}_flops_per_s"]
        model, hw = e["model_flops_per_s"]["median"], e["hardware_flops_per_s"]["median"]
        flops[arm] = {"model_flops_per_s": model, "hardware_flops_per_s": hw, "peak_flops_per_s": p,
                      "model_flops_utilisation": model / p, "hardware_flops_utilisation": hw / p}
        rows.append([arm, model / 1e9, hw / 1e9, p / 1e9, f"{model / p:.1%}", f"{hw / p:.1%}"])
    results["flops"] = flops
    shape = results["supervised"]["model_shape"]
    say()
    say(table(f"[4] achieved FLOP/s of the training step (model FLOPs = 6 x {shape['non_embedding_params'] / 1e6:.1f}M "
              f"non-embedding params x non-pad tokens + attention; hardware = with padding) vs measured matmul peak",
              ["arm", "model GFLOP/s", "hw GFLOP/s", "peak GFLOP/s", "MFU", "HFU"], rows))
    bf16: dict[str, Any] = {}
    for who in ("sft", "hf"):
        a, b = arms.get(f"{who}_fp32"), arms.get(f"{who}_bf16")
        if a and b:
            bf16[f"{who}_speedup"] = b["samples_per_s"]["median"] / a["samples_per_s"]["median"]
    acc = results.get("bf16_accuracy")
    if acc:
        bf16.update({"fp32_test_accuracy": acc["fp32"]["test_accuracy"]["median"],
                     "bf16_test_accuracy": acc["bf16"]["test_accuracy"]["median"],
                     "accuracy_diff_points": acc["accuracy_diff_points"],
                     "short_run_speedup": acc["bf16"]["samples_per_s"]["median"] / acc["fp32"]["samples_per_s"]["median"]})
    results["bf16"] = bf16
    say()
    parts = [f"{k.replace('_', ' ')} {v:.3f}" + ("x" if "speedup" in k else "") for k, v in bf16.items()]
    say("[3] bf16 autocast vs fp32: " + "; ".join(parts))
    if "accuracy_diff_points" in bf16:
        holds = abs(bf16["accuracy_diff_points"]) <= 1.0
        say(f"    bf16 accuracy {'holds' if holds else 'does NOT hold'} within 1 point of fp32 "
            f"({bf16['accuracy_diff_points']:+.2f} points, {len(acc['fp32']['test_accuracy']['runs'])} seed(s))")


if __name__ == "__main__":
    sys.exit(main())
