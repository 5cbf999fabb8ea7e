"""A simulated annotator for `sft select`: the true labels of the train split stand in for a person.

    python experiments/simulate_labeling.py [--data trec6 | --data DIR] [--budgets 48,96,192,384] \
        [--seeds 0,1,2] [--arms random,diverse,margin,setfit_random] [--jobs 1] [--root runs/simulate] \
        [-- extra sft train overrides, e.g. model=tiny trainer.max_steps=2 for a smoke run]

The split is made once (seed 0 of sft's protocol: validation carved from train, the rest of train the
pool) and is the same for every arm and seed. Each arm and seed then runs rounds that reach the budgets:

- round 1: the first budget's texts. Arms that select start from `sft select`'s cold start (strategy
  diverse on the frozen encoder); `random` and `setfit_random` draw at random (seeded).
- a person labels them: the round's CSV gets its true labels.
- `sft train +recipe=best` on every round's file (`data.train=[...]`, `data.label_names` = every class,
  the rest of the pool as `data.unlabeled`), or SetFit (experiments/anchor_setfit.py) on the same files.
- the next round adds texts up to the next budget: `sft select checkpoint=<this round's run>
  strategy=<arm>`, or a random draw.

Arms: random (random + the recipe), diverse / margin / entropy (`sft select` + the recipe),
setfit_random (random + SetFit). Every round's files, runs and a row of ROOT/<data>/results.csv (labels,
val and test accuracy, wall time of training and of selection) are kept: an interrupted simulation
continues where it stopped. `sft report` reads the run dirs; ROOT/<data>/summary.md has the curves as a
table (test accuracy against labels, mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ARMS = {"random": "recipe", "diverse": "recipe", "margin": "recipe", "entropy": "recipe", "setfit_random": "setfit"}
_RESULTS_LOCK = threading.Lock()  # chains run in threads with --jobs; results.csv takes one row at a time
FIELDS = ["arm", "seed", "round", "labels", "val_accuracy", "test_accuracy", "train_wall_s", "select_wall_s",
          "run_dir"]


def prepare(data: str, work: Path) -> tuple[dict[str, str], list[str]]:
    """The split, written once to `work`: pool.csv (text), val.csv and test.csv (text,label); returns
    (the pool's true labels by text, every label name)."""
    from sftcli.api import DataConfig, load_data

    truth_file = work / "truth.json"
    if truth_file.is_file():
        saved = json.loads(truth_file.read_text())
        return saved["truth"], saved["labels"]
    if data == "trec6":
        cfg = DataConfig(labels_per_class=None)
    else:
        folder = Path(data).resolve()
        cfg = DataConfig(source="files", train=str(folder / "train.csv"), test=str(folder / "test.csv"),
                         labels_per_class=None)
    bundle = load_data(cfg, 0)
    names = bundle.label_names
    work.mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    for text, label in zip(bundle.labeled.texts, bundle.labeled.labels, strict=True):
        truth.setdefault(text, names[int(label)])  # a repeated question keeps its first label
    _write(work / "pool.csv", [{"text": t} for t in truth])
    for name, ts in (("val", bundle.validation), ("test", bundle.test)):
        assert ts is not None, f"--data {data} needs a test split"
        _write(work / f"{name}.csv", [{"text": t, "label": names[int(y)]}
                                      for t, y in zip(ts.texts, ts.labels, strict=True)])
    truth_file.write_text(json.dumps({"truth": truth, "labels": names}))
    return truth, names


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def label(path: Path, truth: dict[str, str]) -> None:
    """The person's part: each proposed text gets its true label."""
    rows = _read(path)
    for row in rows:
        row["label"] = truth[row["text"]]
    _write(path, rows)


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run a command to its end (its output in `log`); the wall time; a failure stops the simulation."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\nsee {log}")
    return time.perf_counter() - t0


def simulate(arm: str, seed: int, budgets: list[int], work: Path, truth: dict[str, str], names: list[str],
             extra: list[str], env: dict[str, str], done: set[tuple[str, str, str]], results: Path) -> None:
    home = work / f"{arm}-seed{seed}"
    home.mkdir(exist_ok=True)
    files: list[Path] = []
    previous_run: Path | None = None
    for k, budget in enumerate(budgets, 1):
        round_file = home / f"round{k}.csv"
        labeled = {row["text"] for f in files for row in _read(f)}
        new = budget - len(labeled)
        select_wall = 0.0
        if not round_file.is_file():
            if ARMS[arm] == "setfit" or arm == "random":
                rng = np.random.default_rng([seed, k])
                pool = [t for t in truth if t not in labeled]
                picked = [pool[i] for i in sorted(rng.choice(len(pool), size=min(new, len(pool)), replace=False))]
                _write(round_file, [{"text": t, "label": ""} for t in picked])
            else:
                where = ["pool=" + str(work / "pool.csv"), "strategy=diverse"] if previous_run is None else \
                    [f"checkpoint={previous_run}", f"strategy={arm}"]
                select_wall = run([sys.executable, "-m", "sftcli", "select", f"n={new}", f"output={round_file}",
                                   f"seed={seed}", *where], env, home / f"select{k}.log")
            label(round_file, truth)
        files.append(round_file)
        unlabeled = home / f"unlabeled{k}.csv"
        now = {row["text"] for f in files for row in _read(f)}
        _write(unlabeled, [{"text": t} for t in truth if t not in now])
        name = f"round{k}"
        run_dir = home / "runs" / name
        data = ["data=files", f"data.train=[{','.join(str(f) for f in files)}]", f"data.unlabeled={unlabeled}",
                f"data.validation={work / 'val.csv'}", f"data.test={work / 'test.csv'}",
                f"data.label_names=[{','.join(names)}]", "data.labels_per_class=null", f"seed={seed}", *extra]
        if (arm, str(seed), str(k)) not in done:
            if ARMS[arm] == "setfit":
                cmd = [sys.executable, str(REPO / "experiments" / "anchor_setfit.py"), "--method", "setfit",
                       "--out", str(home / "runs"), "--name", name, "--", *data]
            else:
                cmd = [sys.executable, "-m", "sftcli", "train", "+recipe=best", *data, f"run_root={home / 'runs'}",
                       f"run_name={name}", "trainer.progress=plain"]
                if run_dir.exists():  # an interrupted round continues from its checkpoint
                    cmd.append("resume=auto")
            wall = run(cmd, env, home / f"train{k}.log")
            summary = json.loads((run_dir / "summary.json").read_text())
            row = {"arm": arm, "seed": seed, "round": k, "labels": len(now),
                   "val_accuracy": summary.get("val/accuracy"), "test_accuracy": summary.get("test/accuracy"),
                   "train_wall_s": round(wall, 1), "select_wall_s": round(select_wall, 1), "run_dir": str(run_dir)}
            with _RESULTS_LOCK, results.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=FIELDS)
                if fh.tell() == 0:
                    writer.writeheader()
                writer.writerow(row)
            print(f"{arm} seed {seed} round {k}: {len(now)} labels, test {row['test_accuracy']:.4f}", flush=True)
        previous_run = run_dir


def write_summary(results: Path, out: Path) -> None:
    rows = _read(results)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    budgets = sorted({int(r["labels"]) for r in rows})
    lines = ["| arm | " + " | ".join(f"{b} labels" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for arm in arms:
        cells = []
        for b in budgets:
            values = [float(r["test_accuracy"]) for r in rows if r["arm"] == arm and int(r["labels"]) == b]
            cells.append("-" if not values else f"{statistics.mean(values):.4f}" if len(values) == 1
                         else f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    out.write_text("Test accuracy against labels (mean ± std over seeds).\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="trec6", help="trec6, or a folder with train.csv and test.csv")
    ap.add_argument("--budgets", default="48,96,192,384", help="labels after each round, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--arms", default="random,diverse,margin,setfit_random", help=f"from: {', '.join(ARMS)}")
    ap.add_argument("--jobs", type=int, default=1, help="arm-seed chains at once, each with cores/jobs threads")
    ap.add_argument("--root", default="runs/simulate")
    ap.add_argument("extra", nargs="*", help="sft train overrides for every run (after --)")
    opts = ap.parse_args()
    arms = opts.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    budgets = [int(b) for b in opts.budgets.split(",")]
    if budgets != sorted(set(budgets)) or budgets[0] < 1:
        raise SystemExit("--budgets: increasing positive numbers, e.g. 48,96,192,384")
    name = "trec6" if opts.data == "trec6" else Path(opts.data).resolve().name
    root = REPO / opts.root if not Path(opts.root).is_absolute() else Path(opts.root)
    work = root / name
    truth, names = prepare(opts.data, work)
    results = work / "results.csv"
    done = {(r["arm"], r["seed"], r["round"]) for r in _read(results)} if results.is_file() else set()
    threads = str(max(1, (os.cpu_count() or 1) // max(1, opts.jobs)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    chains = [(arm, seed) for seed in (int(s) for s in opts.seeds.split(",")) for arm in arms]
    if opts.jobs <= 1:
        for arm, seed in chains:
            simulate(arm, seed, budgets, work, truth, names, opts.extra, env, done, results)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(opts.jobs) as pool:
            for future in [pool.submit(simulate, arm, seed, budgets, work, truth, names, opts.extra, env, done,
                                       results) for arm, seed in chains]:
                future.result()
    write_summary(results, work / "summary.md")
    print((work / "summary.md").read_text())


if __name__ == "__main__":
    main()
