"""The label-efficiency experiment on the embedded TREC-6, written to docs/results/.

1. A small sweep on VALIDATION (never test) picks lambda and tau for each strategy at 16 labels per class.
2. labels per class in {4, 16, 64, all} x {no strategy, alternate, mix} x seeds {0, 1, 2}, with those settings.
3. `sft report` over everything: docs/results/report.md, report.csv and the PNG plots.

    python scripts/label_efficiency.py [--seeds 0,1,2] [--ks 4,16,64,null] [--root runs/label-efficiency]
        [--extra "loss.consistency_weight=1.0"]   # extra overrides for the semi-supervised runs

Every command it runs is printed and recorded in docs/results/commands.txt.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sft(args: list[str], log: list[str]) -> None:
    cmd = [sys.executable, "-m", "sftcli", *args]
    line = "sft " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {line}", flush=True)
    log.append(line)
    subprocess.run(cmd, cwd=REPO, check=False)


def newest_sweep(root: Path) -> Path:
    return max((root / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)


def best_on_validation(sweep: Path) -> dict[str, str]:
    """The overrides of the job with the highest validation metric (from sweep.csv)."""
    rows = [r for r in csv.DictReader((sweep / "sweep.csv").open()) if r["status"] == "completed"]
    best = max(rows, key=lambda r: float(r["select_value"] or "nan"))
    return dict(o.split("=", 1) for o in best["overrides"].split() if o.startswith(("lambda=", "tau=")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ks", default="4,16,64,null")
    ap.add_argument("--lambdas", default="0.1,0.5")
    ap.add_argument("--taus", default="0.05,0.1")
    ap.add_argument("--root", default="runs/label-efficiency")
    ap.add_argument("--extra", default="", help="extra overrides for the semi-supervised runs")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    log: list[str] = []
    extra = shlex.split(args.extra)
    start = time.time()
    chosen = {}
    for strategy in ("alternate", "mix"):
        root = Path(args.root) / f"select-{strategy}"
        sft(["train", "-m", f"+strategy={strategy}", f"lambda={args.lambdas}", f"tau={args.taus}",
             "data.labels_per_class=16", f"run_root={root}", *extra], log)
        chosen[strategy] = best_on_validation(newest_sweep(REPO / root))
        print(f"chosen on validation for {strategy}: {chosen[strategy]}", flush=True)
    grid = [f"data.labels_per_class={args.ks}", f"seed={args.seeds}"]
    final = Path(args.root) / "final"
    sft(["train", "-m", *grid, f"run_root={final}"], log)
    for strategy, picked in chosen.items():
        sft(["train", "-m", f"+strategy={strategy}", *[f"{k}={v}" for k, v in picked.items()], *grid,
             f"run_root={final}", *extra], log)
    sft(["report", str(final / "sweeps"), "metric=test/accuracy", f"out={args.out}"], log)
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text(
        f"# python scripts/label_efficiency.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}\n"
        f"# lambda/tau chosen on validation: {chosen}\n# wall time: {time.time() - start:.0f}s\n"
        + "\n".join(log) + "\n")
    print(f"done in {time.time() - start:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
