"""Token ids of text sets, cached on disk by content, and read back by position; the pile's tokenised
where it is read.

A cache entry is keyed by the tokenizer's fingerprint, the max length and the text set's fingerprint, and
is written to a temporary folder then renamed, so it is complete or absent.

The unlabeled pile can hold millions of texts while a run reads a few thousand of them (self-training
scores a sample, loss.self_training_sample; a student draws from what it kept; the class prior reads
2,048), so it is not tokenised before step 1: :class:`LazyTokens` tokenises a text the first time a batch,
a re-label or the prior's estimate reads it, keeps it for the run, and counts what it read; only a term
that reads every text (the seed's frozen-encoder cache, length-grouped batches) encodes it whole, cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sftcli import timing
from sftcli.data.textsets import TextSet, take_texts, text_set_fingerprint

log = logging.getLogger("sft")


class NpyRows:
    """The rows (elements of a 1-d array) of a memory-mapped .npy file, read from the file by position
    instead of through the mapping. Each random read through a memory map maps the whole page-cache folio around it
    (up to 2 MB on recent kernels) into the process, so a training run's resident memory grew towards the
    size of its caches (a million texts, model=tiny, 20 mix steps: 100 MB of the teacher cache and 65 MB of
    token ids). Read by position, the pages stay in the page cache, outside this process's RSS."""

    def __init__(self, array: np.memmap) -> None:
        if array.ndim not in (1, 2) or not array.flags.c_contiguous:
            raise ValueError(f"{array.filename}: expected a C-ordered 1-d or 2-d array, got shape {array.shape}")
        self.path, self.shape, self.dtype = str(array.filename), array.shape, array.dtype
        self._start = int(array.offset)
        self._row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed with this object)
        weakref.finalize(self, self._file.close)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (within bounds), as a new array."""
        n = stop - start
        if start < 0 or n < 0 or stop > len(self):
            raise IndexError(f"rows {start}:{stop} out of range for {len(self)} rows of {self.path}")
        out = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        with self._lock:
            self._file.seek(self._start + start * self._row_bytes)
            got = self._file.readinto(out.reshape(-1).view(np.uint8))
        if got != out.nbytes:
            raise OSError(f"{self.path}: file truncated (short read)")
        return out

    def __getitem__(self, index: Any) -> np.ndarray:
        """A row (an int), rows (a slice with step 1) or the rows of an integer index array, as numpy does."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("NpyRows: only slices with step 1")
            return self.read(start, max(start, stop))
        if np.ndim(index) == 0:
            i = int(index)
            return self.read(*((i + len(self), i + len(self) + 1) if i < 0 else (i, i + 1)))[0]
        rows = np.asarray(index, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(rows.tolist()):
            out[j] = self[i]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


class TokenRows(Protocol):
    """Token ids read by position: an Encoded (in memory or from the cache) or the pile's LazyTokens
    (below), which tokenises a text when it is first read."""

    def __len__(self) -> int: ...

    @property
    def has_type_ids(self) -> bool: ...

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]: ...

    def sequences(self, index: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]: ...

    def subset(self, index: np.ndarray) -> Encoded: ...

    def n_tokens(self, index: np.ndarray) -> int: ...

    def lengths(self) -> np.ndarray: ...


@dataclass
class Encoded:
    """Token ids of a text set, flat: example i is ids[offsets[i]:offsets[i+1]]. Read from the cache,
    `ids` and `type_ids` are memory-mapped, and `rows` reads examples from the same files by position
    (see NpyRows)."""

    ids: np.ndarray
    offsets: np.ndarray
    type_ids: np.ndarray | None
    truncated: int = 0
    rows: tuple[NpyRows, NpyRows | None] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.rows is not None:
            ids, type_ids = self.rows
            return ids.read(a, b), None if type_ids is None else type_ids.read(a, b)
        return self.ids[a:b], None if self.type_ids is None else self.type_ids[a:b]

    @property
    def has_type_ids(self) -> bool:
        return self.type_ids is not None

    def n_tokens(self, index: np.ndarray) -> int:
        """The tokens of examples `index` (padding aside)."""
        return int((self.offsets[index + 1] - self.offsets[index]).sum())

    def sequences(self, index: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(ids, type ids) of examples `index`, in that order."""
        return [self.get(int(i)) for i in index]

    def subset(self, index: np.ndarray) -> Encoded:
        """Examples `index`, in that order, as a new in-memory Encoded."""
        return Encoded.of(self.sequences(index), self.has_type_ids)

    @staticmethod
    def of(seqs: list[tuple[np.ndarray, np.ndarray | None]], has_type_ids: bool) -> Encoded:
        """An in-memory Encoded of (ids, type ids) sequences."""
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(ids) for ids, _ in seqs])
        ids = np.concatenate([ids for ids, _ in seqs]) if seqs else np.zeros(0, dtype=np.int32)
        type_ids = None
        if has_type_ids:
            type_ids = np.concatenate([t for _, t in seqs]) if seqs else np.zeros(0, dtype=np.int8)
        return Encoded(np.asarray(ids), offsets, type_ids)


def encode(ts: TextSet, tokenizer: Any, max_length: int, cache_dir: Path | None, tok_fp: str,
           chunk: int = 4096, progress: bool = False) -> Encoded:
    """Tokenise a text set (truncating to max_length), reusing an on-disk cache keyed by content."""
    key = hashlib.sha256(f"{tok_fp}|{max_length}|{text_set_fingerprint(ts)}".encode()).hexdigest()[:24]
    folder = None if cache_dir is None else cache_dir / "tokens" / key
    if folder is not None:
        cached = _read_token_cache(folder)
        if cached is not None and len(cached) == len(ts):
            log.debug("data: token ids of %d texts read from the cache %s (not re-tokenised)", len(ts), folder)
            return cached
    out = tokenise(ts, tokenizer, max_length, chunk)
    if folder is not None:
        _write_token_cache(folder, out)
        log.debug("data: tokenised %d texts (max_length %d), cached in %s", len(ts), max_length, folder)
    return out


# Characters of a text the tokenizer sees at most: far more than max_length tokens ever span (a token
# covers at least one character; WordPiece reads at most 100 per word), so the kept tokens are the same,
# while a text of megabytes (a whole file on one line) costs no more than a long article.
CHARS_PER_TOKEN_BOUND = 128
MIN_CHAR_LIMIT = 100_000


def cut_long_texts(texts: list[str], max_length: int) -> list[str]:
    """texts with each cut to what max_length tokens can span (see CHARS_PER_TOKEN_BOUND)."""
    limit = max(MIN_CHAR_LIMIT, CHARS_PER_TOKEN_BOUND * max_length)
    return [t if len(t) <= limit else t[:limit] for t in texts]


def tokenise(ts: TextSet, tokenizer: Any, max_length: int, chunk: int = 4096) -> Encoded:
    """The token ids of a text set, in memory (truncated to max_length; `truncated` counts the cut texts)."""
    ids_parts, type_parts, lengths = [], [], []
    truncated = 0
    for start in range(0, len(ts), chunk):
        texts = cut_long_texts(ts.texts[start:start + chunk], max_length)
        pairs = None if ts.pairs is None else cut_long_texts(ts.pairs[start:start + chunk], max_length)
        # One pass without truncation, then a second pass over the texts that are too long only (so
        # they can be counted and most texts are tokenised once); verbose=False silences the tokenizer's
        # "sequence length is longer than the maximum" warning, which that count replaces.
        enc = tokenizer(texts, pairs, truncation=False, add_special_tokens=True, verbose=False,
                        return_token_type_ids=pairs is not None, return_attention_mask=False)
        seqs, types = enc["input_ids"], enc["token_type_ids"] if pairs is not None else None
        long = [i for i, seq in enumerate(seqs) if len(seq) > max_length]
        if long:
            cut = tokenizer([texts[i] for i in long], None if pairs is None else [pairs[i] for i in long],
                            truncation=True, max_length=max_length, return_token_type_ids=pairs is not None,
                            return_attention_mask=False)
            for j, i in enumerate(long):
                seqs[i] = cut["input_ids"][j]
                if types is not None:
                    types[i] = cut["token_type_ids"][j]
            truncated += len(long)
        # One array per chunk, not one per text: a million small arrays cost ~100 MB and seconds.
        sizes = [len(seq) for seq in seqs]
        lengths.extend(sizes)
        ids_parts.append(np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=sum(sizes)))
        if types is not None:
            type_parts.append(np.fromiter(itertools.chain.from_iterable(types), dtype=np.int8, count=sum(sizes)))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int32)
    type_ids = (np.concatenate(type_parts) if type_parts else None) if ts.pairs is not None else None
    return Encoded(ids, offsets, type_ids, truncated)


def _read_token_cache(folder: Path) -> Encoded | None:
    """A committed cache entry ("done" is written last), or None; a damaged entry is re-tokenised."""
    if not (folder / "done").exists():
        return None
    try:
        meta = json.loads((folder / "done").read_text())
        type_ids = np.load(folder / "type_ids.npy", mmap_mode="r") if meta["pairs"] else None
        ids = np.load(folder / "ids.npy", mmap_mode="r")
        rows = (NpyRows(ids), None if type_ids is None else NpyRows(type_ids))
        return Encoded(ids, np.load(folder / "offsets.npy"), type_ids, int(meta["truncated"]), rows)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("data: removing a damaged token cache %s (%s); re-tokenising", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _write_token_cache(folder: Path, enc: Encoded) -> None:
    """Write to a temporary folder, then rename: a cache entry is complete or absent. Caching is an
    optimisation, so a cache dir that cannot be written is a warning, not an error."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError as exc:
        log.warning("data: token cache not written (%s)", exc)
        return
    try:
        np.save(tmp / "ids.npy", enc.ids)
        np.save(tmp / "offsets.npy", enc.offsets)
        if enc.type_ids is not None:
            np.save(tmp / "type_ids.npy", enc.type_ids)
        (tmp / "done").write_text(json.dumps({"pairs": enc.type_ids is not None, "truncated": enc.truncated}))
        os.replace(tmp, folder)
    except OSError as exc:  # another process (a sweep job, a rank) wrote it first (theirs is identical), or disk full
        if not (folder / "done").exists():
            log.warning("data: token cache not written (%s)", exc)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class LazyTokens:
    """Token ids of a text set, each text tokenised when first read (see the module's docstring), and
    kept for the run. It answers what Encoded answers. `lengths()` (length-grouped batches, the seed's
    frozen-encoder cache) needs every text: then the whole set is encoded as any other set is (cached on
    disk by content, flat arrays) and serves every later read."""

    def __init__(self, ts: TextSet, tokenizer: Any, max_length: int, cache_dir: Path | None = None,
                 tok_fp: str = "") -> None:
        self.ts, self.tokenizer, self.max_length = ts, tokenizer, max_length
        self.cache_dir, self.tok_fp = cache_dir, tok_fp
        self._seqs: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._whole: Encoded | None = None
        self._truncated = 0  # among the texts read one by one

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def has_type_ids(self) -> bool:
        return self.ts.pairs is not None

    @property
    def read(self) -> int:
        """How many distinct texts were read (tokenised) so far."""
        return len(self) if self._whole is not None else len(self._seqs)

    @property
    def truncated(self) -> int:
        """How many of the texts read so far were cut to max_length."""
        return self._whole.truncated if self._whole is not None else self._truncated

    def _read(self, index: np.ndarray | list[int]) -> None:
        missing = sorted({int(i) for i in index} - self._seqs.keys())
        if not missing:
            return
        part = TextSet(texts=take_texts(self.ts.texts, missing),
                       pairs=None if self.ts.pairs is None else take_texts(self.ts.pairs, missing))
        enc = tokenise(part, self.tokenizer, self.max_length)
        self._truncated += enc.truncated
        for j, i in enumerate(missing):
            ids, type_ids = enc.get(j)
            self._seqs[i] = (ids.copy(), None if type_ids is None else type_ids.copy())

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.sequences(np.asarray([i]))[0]

    def sequences(self, index: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        # The texts not read yet are tokenised in one call (a batch's, a sample's), not one by one.
        if self._whole is not None:
            return self._whole.sequences(index)
        self._read(index)
        return [self._seqs[int(i)] for i in index]

    def subset(self, index: np.ndarray) -> Encoded:
        return Encoded.of(self.sequences(index), self.has_type_ids)

    def n_tokens(self, index: np.ndarray) -> int:
        if self._whole is not None:
            return self._whole.n_tokens(index)
        return sum(len(ids) for ids, _ in self.sequences(index))

    def lengths(self) -> np.ndarray:
        if self._whole is None:
            with timing.phase("tokenise"):
                self._whole = encode(self.ts, self.tokenizer, self.max_length, self.cache_dir, self.tok_fp)
            self._seqs.clear()
        return self._whole.lengths()

    def report(self, name: str = "unlabeled") -> str:
        """What the run read of the set, for the log."""
        share = self.read / max(1, len(self))
        return (f"data: read {self.read:,} of the {len(self):,} {name} texts ({share:.1%}); "
                f"{self.truncated:,} of them truncated to model.max_length={self.max_length} tokens")
