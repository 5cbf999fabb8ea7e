#!/usr/bin/env python
"""Section 9 of the benchmark: what a labeling round of `sft select` costs on a large pool, against the
training run that follows it.

    python benchmarks/labeling.py                      # a pool of 100,000 texts, 96 labels, then 96 more
    python benchmarks/labeling.py --pool 20000 --n 48 --out select.json

TREC-6 at 16 labels per class (sft's protocol, seed 0: its validation and test), and a pool of distinct
real texts: the unlabeled questions repeated as often as needed, each copy after the first made distinct
with a " #N" tag. In order, each a fresh process with one thread:

1. `sft train +recipe=best` on the labeled file with the pool as `data.unlabeled` (the round's model);
2. `sft select checkpoint=<1> n=N pool=POOL` (the strategy's default, diverse);
3. the selected texts labeled with their true labels, and `sft train +recipe=best` on both files: the
   training run that follows the selection.

Printed: each step's wall time and peak RSS, the share of the pool the selection scored, and the
selection's wall time against the training that follows it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Wall time and peak RSS (from wait4) of one command; its output goes to `log`."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{log.read_text()[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=100_000, help="texts in the pool")
    ap.add_argument("--n", type=int, default=96, help="texts to select (the labels double)")
    ap.add_argument("--work", default=None, help="a folder for the files and runs (default: a temporary one)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    opts = ap.parse_args()

    from sftcli.api import DataConfig, load_data

    work = Path(opts.work) if opts.work else Path(tempfile.mkdtemp(prefix="sft-select-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = load_data(DataConfig(labels_per_class=16), 0)
    names = bundle.label_names
    assert bundle.unlabeled is not None and bundle.unlabeled.hidden_labels is not None and bundle.test is not None
    write_csv(work / "labeled.csv", [{"text": t, "label": names[int(y)]}
                                     for t, y in zip(bundle.labeled.texts, bundle.labeled.labels, strict=True)])
    for name, ts in (("val", bundle.validation), ("test", bundle.test)):
        write_csv(work / f"{name}.csv", [{"text": t, "label": names[int(y)]}
                                         for t, y in zip(ts.texts, ts.labels, strict=True)])
    texts = [" ".join(t.split()) for t in bundle.unlabeled.texts]
    truth = {t: names[int(y)] for t, y in zip(texts, bundle.unlabeled.hidden_labels, strict=True)}
    pool = work / "pool.txt"
    with pool.open("w", encoding="utf-8") as fh:
        for i in range(opts.pool):
            copy, j = divmod(i, len(texts))
            fh.write(texts[j] + (f" #{copy}" if copy else "") + "\n")

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "SFT_CACHE_DIR": str(work / "cache")}
    sft = [sys.executable, "-m", "sftcli"]
    data = ["data=files", f"data.unlabeled={pool}", f"data.validation={work / 'val.csv'}",
            f"data.test={work / 'test.csv'}", "data.labels_per_class=null", "trainer.progress=plain",
            f"run_root={work / 'runs'}"]
    figures: dict[str, object] = {"pool": opts.pool, "n": opts.n}
    figures["train_round1"] = timed([*sft, "train", "+recipe=best", *data, f"data.train={work / 'labeled.csv'}",
                                     "run_name=round1"], env, work / "round1.log")
    chosen = work / "round2.csv"
    figures["select"] = timed([*sft, "select", f"checkpoint={work / 'runs' / 'round1'}", f"n={opts.n}",
                               f"pool={pool}", f"output={chosen}"], env, work / "select.log")
    said = (work / "select.log").read_text()
    match = re.search(r"pool: ([\d,]+) texts read, ([\d,]+) sampled", said)
    if match:
        figures["pool_read"], figures["scored"] = (int(match.group(i).replace(",", "")) for i in (1, 2))
    rows = list(csv.DictReader(chosen.open(newline="", encoding="utf-8")))
    for row in rows:  # the person's part: the true label of the text the copy was made from
        row["label"] = truth[re.sub(r" #\d+$", "", row["text"])]
    write_csv(chosen, rows)
    figures["train_round2"] = timed([*sft, "train", "+recipe=best", *data,
                                     f"data.train=[{work / 'labeled.csv'},{chosen}]", "run_name=round2"],
                                    env, work / "round2.log")
    for k in ("round1", "round2"):
        summary = json.loads((work / "runs" / k / "summary.json").read_text())
        figures[f"train_{k}"]["test_accuracy"] = summary.get("test/accuracy")  # type: ignore[index]
    ratio = figures["select"]["wall_s"] / figures["train_round2"]["wall_s"]  # type: ignore[index]
    figures["select_vs_following_training"] = round(ratio, 3)
    print(json.dumps(figures, indent=2))
    print(f"sft select on a pool of {opts.pool:,} texts: {figures['select']['wall_s']} s "  # type: ignore[index]
          f"({figures.get('scored', '?'):,} scored); the training run that follows: "
          f"{figures['train_round2']['wall_s']} s; ratio {ratio:.2f}")  # type: ignore[index]
    if opts.out:
        Path(opts.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
