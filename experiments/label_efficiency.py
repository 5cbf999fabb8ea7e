"""The label-efficiency experiment on the embedded TREC-6, written to docs/results/.

1. A small sweep on VALIDATION (never test) picks lambda and tau for each strategy at 16 labels per class.
2. labels per class in {4, 16, 60, all} x {no strategy, alternate, mix} x seeds {0, 1, 2}, with those
   settings. With all labels there is no unlabeled text left, so "all" is the supervised reference only.
3. `sft report` over the final runs: docs/results/report.md, report.csv, runs.csv and the PNG plots.

    python experiments/label_efficiency.py [--seeds 0,1,2] [--ks 4,16,60,null] [--root runs/label-efficiency]
        [--lambdas 0.1,0.5] [--taus 0.05,0.1] [--jobs 2]
        [--extra "loss.consistency_weight=1.0"]   # extra overrides for the semi-supervised runs

--jobs N runs N sweeps at once, each with cores/N threads (on 2 cores: 2 sweeps of 1 thread each, which
is faster than one sweep of 2 threads for models this small). Every command it runs is printed and
recorded in docs/results/commands.txt.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Pool:
    """At most `jobs` `sft` commands at once, each with its share of the cores."""

    def __init__(self, jobs: int, log: list[str]):
        self.jobs = max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.log = log
        self.running: list[subprocess.Popen] = []

    def start(self, args: list[str]) -> subprocess.Popen:
        while len(self.running) >= self.jobs:
            self._reap()
        line = "sft " + " ".join(shlex.quote(a) for a in args)
        print(f"$ {line}", flush=True)
        self.log.append(line)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(self.threads))}
        proc = subprocess.Popen([sys.executable, "-m", "sftcli", *args], cwd=REPO, env=env)
        self.running.append(proc)
        return proc

    def _reap(self) -> None:
        time.sleep(1)
        self.running = [p for p in self.running if p.poll() is None]

    def wait(self) -> None:
        for p in self.running:
            p.wait()
        self.running = []


def sweep_dir(root: Path) -> Path:
    """The one sweep under `root` (each sweep of this script gets its own run_root)."""
    sweeps = sorted((REPO / root / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)
    return sweeps[-1]


def best_on_validation(sweep: Path) -> dict[str, str]:
    """The lambda/tau overrides of the job with the highest validation metric (from sweep.csv)."""
    rows = [r for r in csv.DictReader((sweep / "sweep.csv").open()) if r["status"] == "completed"]
    if not rows:
        raise SystemExit(f"no completed job in {sweep / 'sweep.csv'}")
    best = max(rows, key=lambda r: float(r["select_value"] or "nan"))
    return dict(o.split("=", 1) for o in best["overrides"].split() if o.startswith(("lambda=", "tau=")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ks", default="4,16,60,null",
                    help="labels per class; null = all labels (TREC-6 train has 63 ABBR questions, so 60 and not 64)")
    ap.add_argument("--lambdas", default="0.1,0.5")
    ap.add_argument("--taus", default="0.05,0.1")
    ap.add_argument("--strategies", default="alternate,mix")
    ap.add_argument("--root", default="runs/label-efficiency")
    ap.add_argument("--extra", default="", help="extra overrides for the semi-supervised runs")
    ap.add_argument("--jobs", type=int, default=2, help="sweeps run at once")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    log: list[str] = []
    extra = shlex.split(args.extra)
    strategies = [s for s in args.strategies.split(",") if s]
    start = time.time()
    pool = Pool(args.jobs, log)
    root = Path(args.root)

    # 1. Selection on validation, at 16 labels per class.
    selection = {
        strategy: pool.start(["train", "-m", f"+strategy={strategy}", f"lambda={args.lambdas}", f"tau={args.taus}",
                              "data.labels_per_class=16", f"run_root={root / ('select-' + strategy)}", *extra])
        for strategy in strategies}
    # The supervised arm needs no selection: it starts while the selection sweeps run.
    final = root / "final"
    seeds = f"seed={args.seeds}"
    pool.start(["train", "-m", f"data.labels_per_class={args.ks}", seeds, f"run_root={final / 'none'}"])
    chosen: dict[str, dict[str, str]] = {}
    for strategy in strategies:
        selection[strategy].wait()
        chosen[strategy] = best_on_validation(sweep_dir(root / f"select-{strategy}"))
        print(f"chosen on validation for {strategy}: {chosen[strategy]}", flush=True)
        # No unlabeled text is left with all labels: the strategies run at the finite label counts only.
        ks = ",".join(k for k in args.ks.split(",") if k not in ("null", "all"))
        pool.start(["train", "-m", f"+strategy={strategy}", *[f"{k}={v}" for k, v in chosen[strategy].items()],
                    f"data.labels_per_class={ks}", seeds, f"run_root={final / strategy}", *extra])
    pool.wait()

    out = REPO / args.out
    # Relative to the repository (the commands run there), so the report shows a path that works anywhere.
    pool.start(["report", str(final), "metric=test/accuracy", f"out={args.out}"])
    pool.wait()
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text(
        f"# python experiments/label_efficiency.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}\n"
        f"# lambda/tau chosen on validation (16 labels per class): {chosen}\n"
        f"# wall time: {time.time() - start:.0f} s with {args.jobs} sweeps at once\n" + "\n".join(log) + "\n")
    print(f"done in {time.time() - start:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
