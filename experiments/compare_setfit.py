"""sft's recipes against SetFit, side by side: the same data, labeled draws, seeds and thread count.

    pip install -e '.[anchors]'
    python experiments/compare_setfit.py [--data trec6 | --data DIR] [--ks 16] [--seeds 0,1,2] \
        [--arms setfit,supervised,best,...] [--jobs 2] [--root runs/compare] [--model DIR]

DIR holds train.csv and test.csv (text,label), e.g. from experiments/make_data.py; validation is carved from
train by sft's protocol (data.validation_fraction), identically for every arm. Every (K, seed) runs every
arm; the order of the arms rotates with the seed, and --jobs N runs N commands at once with
cores/N threads each (OMP_NUM_THREADS), so no arm always has the machine to itself. Wall time is the
whole process as a user waits for it: start, loading, training, evaluation. Run one comparison at a time:
the thread count assumes the machine is this script's alone. Two at once (say two with --jobs 1 on 2 cores)
give 2 threads to each of 2 commands, and OpenMP's spinning threads then made every run several times
slower (a supervised run at 4 per class: 160 s against 31 s).

Writes ROOT/<data>/results.csv (one row per run; a row already there is not run again, so an interrupted
comparison continues) and ROOT/<data>/summary.md: test accuracy mean +- std per arm and K, the paired
difference to SetFit per seed, and wall time with its ratio to SetFit's. Validation accuracy is in both
files; every choice of a setting is made on it, never on test. The run dirs under ROOT/<data>/runs are
what `sft report` reads (the anchors' too).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Arm name -> ("sft", overrides of `sft train`) or ("anchor", method of experiments/anchor_setfit.py).
# The draw candidates as they were measured, before the recipe took up masking: NOMASK undoes it.
KEPT16 = ["+recipe=best", "loss.self_training_draw=kept", "trainer.unlabeled_batch_size=16"]
ENSEMBLE, SOFT = "loss.self_training_ensemble=true", "loss.self_training_targets=soft"
NOMASK, MASK = "loss.unlabeled_mask_prob=0", "loss.unlabeled_mask_prob=0.1"
ARMS: dict[str, tuple[str, list[str]]] = {
    "setfit": ("anchor", ["setfit"]),
    "frozen_lr": ("anchor", ["frozen_lr"]),
    "supervised": ("sft", []),
    "supervised_mean": ("sft", ["model.head_pooling=mean"]),
    "supervised_pooler": ("sft", ["model.head_pooling=pooler"]),
    "seed_term": ("sft", ["+strategy=mix"]),
    "seed_term_simcse": ("sft", ["+strategy=mix", "loss.positive=dropout"]),
    "self_training": ("sft", ["+recipe=self_training"]),
    "best": ("sft", ["+recipe=best"]),
    # The recipe with one lever off at a time.
    "best-supcon_unlabeled": ("sft", ["+recipe=best", "loss.supcon_unlabeled=false"]),
    "best-supcon": ("sft", ["+recipe=best", "loss.supcon_unlabeled=false", "loss.supcon_weight=0"]),
    # The recipe without the unlabeled texts' class prior (the recipe as it was before it).
    "best-prior": ("sft", ["+recipe=best", "loss.self_training_prior=labeled", "model.class_prior=labeled"]),
    "best-unlabeled": ("sft", ["+recipe=best", "data.max_unlabeled=0"]),
    # Candidate draws of the student rounds, chosen on TREC-6 validation (best_kept16_mask is today's recipe).
    "best_all32": ("sft", ["+recipe=best", "loss.self_training_draw=all", "trainer.unlabeled_batch_size=32", NOMASK]),
    "best_kept32": ("sft", ["+recipe=best", "loss.self_training_draw=kept", "trainer.unlabeled_batch_size=32", NOMASK]),
    "best_kept16": ("sft", [*KEPT16, NOMASK]),
    "best_kept16_ens": ("sft", [*KEPT16, ENSEMBLE, NOMASK]),
    "best_kept16_soft": ("sft", [*KEPT16, SOFT, NOMASK]),
    "best_kept16_ens_soft": ("sft", [*KEPT16, ENSEMBLE, SOFT, NOMASK]),
    "best_kept16_mask": ("sft", [*KEPT16, MASK]),
    "best_kept16_ens_mask": ("sft", [*KEPT16, ENSEMBLE, MASK]),
    # The recipe with a lever added.
    "best+simcse": ("sft", ["+recipe=best", "lambda=0.1", "loss.positive=dropout"]),
    # Candidate changes of the recipe, screened on validation at seeds 3-5 (seeds 0-2 are the reported ones).
    **{f"best+{name}": ("sft", ["+recipe=best", *extra]) for name, extra in {
        "lr5e-5": ["optim.lr=5e-5"],
        "lr2e-4": ["optim.lr=2e-4"],
        "per_class": ["loss.self_training_select=per_class"],
        "top75": ["loss.self_training_top=0.75", "loss.self_training_top_step=0.25"],
        "supcon2": ["loss.supcon_weight=2"],
        "tau05": ["loss.supcon_tau=0.05"],
        "rounds4": ["loss.self_training_rounds=4", "trainer.epochs=100"],
        # A fourth round within the recipe's 75 epochs (shorter rounds): its cost, not rounds4's.
        "rounds4_e75": ["loss.self_training_rounds=4"],
        "ub32": ["trainer.unlabeled_batch_size=32"],
        "bs32": ["trainer.batch_size=32"],
        "continue": ["loss.self_training_student=continue"],
        "eval25": ["trainer.eval_every=25"],
        "dropout0": ["model.dropout=0"],
        "mask02": ["loss.unlabeled_mask_prob=0.2"],
        "tau02": ["loss.supcon_tau=0.2"],
        "stw05": ["loss.self_training_weight=0.5"],
        "ema09": ["trainer.ema_decay=0.9"],
        "ema099": ["trainer.ema_decay=0.99"],
        "label_best": ["loss.self_training_labeler=best"],
        # An ensemble of two teachers, a round each (the run is a round longer).
        "teachers2": ["loss.self_training_teachers=2"],
        "soft": ["loss.self_training_targets=soft"],
        "supcon05": ["loss.supcon_weight=0.5"],
        "dropout02": ["model.dropout=0.2"],
        "wd01": ["optim.weight_decay=0.1"],
        # Layer-wise lr decay: the lower layers, which hold most of what pretraining learned, move less.
        "ld08": ["optim.layer_decay=0.8"],
        "ld09": ["optim.layer_decay=0.9"],
        "ls01": ["loss.label_smoothing=0.1"],
        # The labeled texts masked too (an augmentation of the few labels, the teacher's round included).
        "lmask01": ["loss.labeled_mask_prob=0.1"],
        "stw2": ["loss.self_training_weight=2"],
        "warm0": ["optim.warmup_ratio=0"],
        # The unlabeled texts' class prior (sftcli/prior.py): for the pseudo-labels, the exported head, or both.
        "prior_pl": ["loss.self_training_prior=unlabeled"],
        "prior_head": ["model.class_prior=unlabeled"],
        "prior": ["loss.self_training_prior=unlabeled", "model.class_prior=unlabeled"],
        # Each re-label scores a sample of the pile (the same one every round, or a new one: r).
        "s4096": ["loss.self_training_sample=4096"],
        "s2048": ["loss.self_training_sample=2048"],
        "s2048r": ["loss.self_training_sample=2048", "loss.self_training_resample=true"],
        "s1024": ["loss.self_training_sample=1024"],
        "s1024r": ["loss.self_training_sample=1024", "loss.self_training_resample=true"],
        # Cheaper runs on top of a 1,024-text sample: fewer epochs, fewer pseudo-labeled texts a step.
        "s1024_e50": ["loss.self_training_sample=1024", "trainer.epochs=50"],
        "s1024_e40": ["loss.self_training_sample=1024", "trainer.epochs=40"],
        "s1024_ub8": ["loss.self_training_sample=1024", "trainer.unlabeled_batch_size=8"],
        # Evaluations at the end only (the last student is the model; intermediate ones only select).
        "s1024r_eval0": ["loss.self_training_sample=1024", "loss.self_training_resample=true",
                         "trainer.eval_every=0"],
        "ml256": ["model.max_length=256"],  # all-MiniLM-L6-v2's own limit (its sentence_bert_config.json)
    }.items()},
}
FIELDS = ["data", "k", "seed", "arm", "val_accuracy", "test_accuracy", "test_macro_f1", "wall_s", "run_dir"]


def data_overrides(data: str) -> tuple[str, list[str]]:
    """(a short name, the data overrides) for --data."""
    if data == "trec6":
        return "trec6", []
    folder = Path(data).resolve()
    for name in ("train.csv", "test.csv"):
        if not (folder / name).is_file():
            raise SystemExit(f"--data {data}: {folder / name} not found (experiments/make_data.py writes it)")
    return folder.name, ["data=files", f"data.train={folder / 'train.csv'}", f"data.test={folder / 'test.csv'}"]


def command(arm: str, runs: Path, name: str, data: list[str], k: str, seed: int) -> list[str]:
    kind, args = ARMS[arm]
    common = [*data, f"data.labels_per_class={k}", f"seed={seed}"]
    if kind == "anchor":
        return [sys.executable, str(REPO / "experiments" / "anchor_setfit.py"), "--method", args[0], "--out", str(runs),
                "--name", name, "--", *common]
    return [sys.executable, "-m", "sftcli", "train", *args, *common, f"run_root={runs}", f"run_name={name}",
            "trainer.progress=plain"]


def read_result(run_dir: Path) -> dict[str, object] | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed":
        return None
    return {"val_accuracy": summary.get("val/accuracy"), "test_accuracy": summary.get("test/accuracy"),
            "test_macro_f1": summary.get("test/macro_f1")}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def write_summary(path: Path, rows: list[dict[str, str]], arms: list[str], data_name: str) -> None:
    lines = [f"# {data_name}: sft against SetFit", "",
             "Test accuracy mean ± sample std over seeds (n = seeds); Δ = paired difference to SetFit on the "
             "same seeds; wall time is the whole process, with its ratio to SetFit's mean.", ""]
    for k in sorted({r["k"] for r in rows}, key=lambda v: (v == "null", float(v) if v != "null" else 0)):
        by = {(r["arm"], int(r["seed"])): r for r in rows if r["k"] == k}
        setfit_wall = [float(r["wall_s"]) for (a, _), r in by.items() if a == "setfit"]
        lines += [f"## {k} labels per class", "",
                  "| arm | n | val accuracy | test accuracy | Δ test vs SetFit (per seed) | wall s | × SetFit |",
                  "|---|---|---|---|---|---|---|"]
        for arm in arms:
            mine = sorted((s, r) for (a, s), r in by.items() if a == arm)
            if not mine:
                continue
            val = [float(r["val_accuracy"]) for _, r in mine]
            test = [float(r["test_accuracy"]) for _, r in mine]
            wall = [float(r["wall_s"]) for _, r in mine]
            deltas = [float(r["test_accuracy"]) - float(by[("setfit", s)]["test_accuracy"])
                      for s, r in mine if ("setfit", s) in by and arm != "setfit"]
            delta = (f"{statistics.mean(deltas):+.4f} ({', '.join(f'{d:+.3f}' for d in deltas)})" if deltas else "-")
            ratio = f"{statistics.mean(wall) / statistics.mean(setfit_wall):.2f}" if setfit_wall else "-"
            lines.append(f"| {arm} | {len(mine)} | {mean_std(val)} | {mean_std(test)} | {delta} | "
                         f"{statistics.mean(wall):.0f} | {ratio} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="trec6", help="trec6, or a folder with train.csv and test.csv")
    ap.add_argument("--ks", default="16", help="labels per class, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="setfit,supervised,best", help=f"comma-separated, from: {', '.join(ARMS)}")
    ap.add_argument("--jobs", type=int, default=2, help="commands at once, each with cores/jobs threads")
    ap.add_argument("--root", default="runs/compare")
    ap.add_argument("--model", default=None, help="an encoder directory for every arm (model=hf model.name_or_path=DIR; "
                                                  "e.g. scripts/get_mpnet.sh's); default: the embedded all-MiniLM-L6-v2")
    opts = ap.parse_args()
    arms = opts.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    data_name, data = data_overrides(opts.data)
    if opts.model:
        model = Path(opts.model).resolve()
        data_name, data = f"{data_name}-{model.name}", [*data, "model=hf", f"model.name_or_path={model}"]
    out = (REPO / opts.root if not Path(opts.root).is_absolute() else Path(opts.root)) / data_name
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    rows: list[dict[str, str]] = list(csv.DictReader(results.open())) if results.is_file() else []
    done = {(r["k"], r["seed"], r["arm"]) for r in rows}
    todo = []
    for k in opts.ks.split(","):
        for seed in (int(s) for s in opts.seeds.split(",")):
            shift = seed % len(arms)
            for arm in arms[shift:] + arms[:shift]:  # rotate the order with the seed
                if (k, str(seed), arm) not in done:
                    todo.append((k, seed, arm))
    threads = str(max(1, (os.cpu_count() or 1) // max(1, opts.jobs)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    running: list[tuple[subprocess.Popen, Any, float, tuple[str, int, str], Path]] = []

    def record(proc: subprocess.Popen, wall: float, k: str, seed: int, arm: str, run_dir: Path) -> None:
        """One finished command: its row in results.csv and the summary rewritten (or a FAILED line)."""
        result = read_result(run_dir) if proc.returncode == 0 else None
        if result is None:
            print(f"FAILED ({proc.returncode}): {arm} k={k} seed={seed}: see {run_dir}", flush=True)
            return
        row = {"data": data_name, "k": k, "seed": str(seed), "arm": arm,
               **{n: str(v) for n, v in result.items()}, "wall_s": f"{wall:.1f}", "run_dir": str(run_dir)}
        rows.append(row)
        with results.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        write_summary(out / "summary.md", rows, list(ARMS), data_name)
        print(f"{arm} k={k} seed={seed}: test {row['test_accuracy']} val {row['val_accuracy']} "
              f"wall {wall:.0f} s", flush=True)

    def wait_below(limit: int) -> None:
        """Poll every 2 s until fewer than `limit` commands run, recording each one that ends."""
        while len(running) >= limit:
            time.sleep(2)
            for item in [i for i in running if i[0].poll() is not None]:
                running.remove(item)
                proc, log, t0, (k, seed, arm), run_dir = item
                log.close()
                record(proc, time.perf_counter() - t0, k, seed, arm, run_dir)

    for k, seed, arm in todo:
        wait_below(opts.jobs)
        name = f"{arm}-k{k}-seed{seed}"
        run_dir = runs / name
        cmd = command(arm, runs, name, data, k, seed)
        print("$ " + " ".join(cmd[1:]), flush=True)
        log = (runs / f"{name}.log").open("w")
        running.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log,
                        time.perf_counter(), (k, seed, arm), run_dir))
    wait_below(1)
    print(f"{results}\n{out / 'summary.md'}")


if __name__ == "__main__":
    main()
