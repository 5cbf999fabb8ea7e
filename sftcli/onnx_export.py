"""ONNX export of a trained classifier, and the exported graph as a model `sft predict` can run.

`sft export RUN format=onnx [quantize=int8]` writes a directory that serves without sft and without remote
code: `model.onnx` (the tokenizer's inputs -> `logits`, pooling and head inside, the class prior folded in
as the run exported it), `config.json` (the encoder's own model type, with id2label and label2id), the
tokenizer (its `model_max_length` = the run's `model.max_length`, so a pipeline truncates as sft does),
and `sft_export.json` (what sft reads back: the text columns, the source checkpoint, the check below).

The graph comes from torch's exporter (`torch.onnx.export(dynamo=True)`, with batch and sequence
dimensions left free); int8 from onnxruntime's dynamic quantization. Every export is run by onnxruntime
on a handful of texts and compared with the torch model before it is kept.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftcli.errors import ConfigError, ModelError

log = logging.getLogger("sft")

ONNX_FILE = "model.onnx"
# Attention as one operator (onnxruntime >= 1.23 runs it fused): measured faster than opset 18 on long texts.
DEFAULT_OPSET = 23
EXPORT_RECORD = "sft_export.json"
ONNX_PIP = "pip install 'sftcli[onnx]'"
# The tokenizer's inputs the graph takes, in this order, where the tokenizer gives them.
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Texts the export is checked on: short and long, so padding and both free dimensions are exercised.
CHECK_TEXTS = (
    "How far is it from Denver to Aspen?",
    "What is the name of the longest river in the world, and which countries does it flow through before "
    "it reaches the sea?",
    "Who wrote Hamlet?",
    "Define photosynthesis.",
)


def require_onnx(what: str) -> None:
    """Exit 2 naming the pip command when the packages an ONNX export or run needs are missing."""
    needed = ("onnx", "onnxruntime", "onnxscript") if what == "export" else ("onnxruntime",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{'format=onnx' if what == 'export' else 'an ONNX model'} needs "
                          f"{', '.join(missing)}, not installed; install with: {ONNX_PIP}")


def graph_inputs(tokenizer: Any) -> list[str]:
    return [name for name in GRAPH_INPUTS if name in tokenizer.model_input_names]


class _Logits(torch.nn.Module):
    """The classifier as a function from the tokenizer's tensors to logits (what the graph computes)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, **{k: v for k, v in given.items() if v is not None}).logits


def export_graph(model: Any, tokenizer: Any, path: Path, opset: int) -> None:
    """`model` (eval mode, fp32, CPU) as one ONNX graph at `path`, batch and sequence dimensions free."""
    names = graph_inputs(tokenizer)
    sample = tokenizer(list(CHECK_TEXTS[:2]), padding=True, return_tensors="pt")
    inputs = {name: sample[name] for name in names}
    batch, sequence = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1)
    dynamic = {name: {0: batch, 1: sequence} for name in names}
    # The exporter reports its progress on stdout and notes on its logger (torchvision's operators not
    # registered, axis names): none of it is about this graph; sft's own message says what happened.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_Logits(model).eval(), (), kwargs=inputs, input_names=names,
                                        output_names=["logits"], dynamic_shapes=dynamic, opset_version=opset,
                                        dynamo=True, verbose=False)
            program.save(str(path))
    except Exception as exc:  # the exporter fails with its own error types, whatever it met in the model
        from sftcli.errors import first_line

        raise ModelError(f"torch's ONNX exporter could not export {type(model).__name__}: "
                         f"{type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        exporter_log.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantization of the graph at `source`, after its shape-inference
    pre-processing: the matrix products' weights in int8, one scale per output channel, their inputs
    quantized per batch at run time; the embeddings and everything else stay fp32.

    Chosen on TREC-6 validation (all-MiniLM-L6-v2, +recipe=best): onnxruntime's defaults (per-tensor
    scales, the embedding lookup quantized too) agreed with fp32 on 98.1% of the labels and lost 1.3 points
    of accuracy; per-channel scales on the matrix products alone agreed on 99.2% (docs/benchmark.md)."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])


@dataclass
class OnnxOutput:
    logits: Any


class OnnxClassifier:
    """An exported graph behind the interface `sft predict` uses of a transformers model: `config`
    (id2label), `.to()`, `.eval()`, and a call on the tokenizer's tensors that returns `.logits`."""

    def __init__(self, directory: Path, threads: int | None = None) -> None:
        require_onnx("run")
        import onnxruntime as ort
        from transformers import AutoConfig

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        from sftcli.errors import first_line

        graph = directory / ONNX_FILE
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types: a damaged or foreign file
            raise ModelError(f"{graph} is not a graph onnxruntime loads ({first_line(exc)})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        try:
            self.config = AutoConfig.from_pretrained(str(directory))
        except Exception as exc:  # a config.json of the wrong shape fails with whatever error its reader meets
            raise ModelError(f"{directory / 'config.json'} is damaged ({first_line(exc)})") from None

    def to(self, device: Any) -> OnnxClassifier:
        if str(device) != "cpu":
            raise ConfigError(f"device: an ONNX model runs on the CPU here (onnxruntime's CPU provider), not {device}; "
                              "set device=cpu")
        return self

    def eval(self) -> OnnxClassifier:
        return self

    def __call__(self, **tensors: Any) -> OnnxOutput:
        feed = {name: tensors[name].cpu().numpy().astype(np.int64) for name in self.inputs}
        return OnnxOutput(torch.from_numpy(self.session.run(["logits"], feed)[0]))


def stock_config(model: Any) -> Any:
    """The config.json of an export: the encoder's own model type (which transformers, Optimum and
    onnxruntime know without remote code), with the classifier's labels."""
    from sftcli.model import encoder_config

    config = encoder_config(model.config)
    config = type(config).from_dict(config.to_dict())  # a copy: the model's own config stays as it is
    config.id2label = dict(model.config.id2label)
    config.label2id = dict(model.config.label2id)
    config.problem_type = "single_label_classification"
    config.architectures = None
    return config


def check_export(path: Path, model: Any, tokenizer: Any) -> float:
    """The largest |logit difference| between onnxruntime on the graph at `path` and `model`, on CHECK_TEXTS."""
    enc = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**{k: enc[k] for k in graph_inputs(tokenizer)}).logits.numpy()
    got = OnnxClassifier(path.parent)(**enc).logits.numpy()
    return float(np.abs(got - expected).max())


# Where onnxruntime cannot run a graph at the opset asked for by default (ModernBERT's rotary embedding
# at opset 23, whose kernel rejects the cache shapes torch's exporter writes), the export falls back to this
# one, where every operator is spelled out.
FALLBACK_OPSET = 18


def _export_checked(model: Any, tokenizer: Any, path: Path, opset: int | None) -> tuple[int, float]:
    """Export at `opset` (None: DEFAULT_OPSET, else FALLBACK_OPSET when onnxruntime cannot run the first
    or it differs from the model) and check it; (the opset used, the largest logit difference)."""
    tries = [opset] if opset is not None else [DEFAULT_OPSET, FALLBACK_OPSET]
    problem = ""
    for candidate in tries:
        export_graph(model, tokenizer, path, candidate)
        try:
            diff = check_export(path, model, tokenizer)
        except Exception as exc:  # onnxruntime's own error types: it cannot run this graph
            from sftcli.errors import first_line

            problem = f"onnxruntime cannot run the graph at opset {candidate} ({first_line(exc)})"
        else:
            if diff <= 1e-3:
                if candidate != tries[0]:
                    log.warning("export: %s; exported at opset %d instead", problem, candidate)
                return candidate, diff
            problem = (f"the graph at opset {candidate} does not reproduce the model (largest logit difference "
                       f"{diff:.2e} on {len(CHECK_TEXTS)} check texts)")
    raise ModelError(f"{problem}; nothing written")


def write_export(model: Any, tokenizer: Any, out: Path, record: dict[str, Any], opset: int | None,
                 int8: bool) -> dict[str, Any]:
    """Build the export directory under a temporary name and rename it to `out` (a previous export is
    replaced whole, never half-written). Returns the record written to sft_export.json."""
    from sftcli.export import replace_dir, staging_dir

    model = model.float().cpu().eval()
    tmp = staging_dir(out)
    try:
        stock_config(model).save_pretrained(tmp)
        tokenizer.model_max_length = int(record["max_length"])
        tokenizer.save_pretrained(tmp)
        fp32 = tmp / ONNX_FILE
        used, diff = _export_checked(model, tokenizer, fp32, opset)
        record = {**record, "inputs": graph_inputs(tokenizer), "opset": used, "max_abs_logit_diff_fp32": diff}
        if int8:
            fp32.rename(tmp / "model-fp32.onnx")
            quantize_int8(tmp / "model-fp32.onnx", fp32)
            (tmp / "model-fp32.onnx").unlink()
            try:
                record["max_abs_logit_diff_int8"] = check_export(fp32, model, tokenizer)
            except Exception as exc:  # onnxruntime's own error types
                from sftcli.errors import first_line

                raise ModelError(f"onnxruntime cannot run the int8 graph ({first_line(exc)}); nothing written") from exc
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def is_onnx_export(path: Path) -> bool:
    return (path / ONNX_FILE).is_file() and (path / EXPORT_RECORD).is_file()


def load_onnx_export(path: Path) -> tuple[OnnxClassifier, Any, dict[str, Any]]:
    """(model, tokenizer, the training config's parts predict reads) of an `sft export` directory."""
    from sftcli.model import load_checkpoint_tokenizer
    from sftcli.runfiles import read_json

    record = read_json(path / EXPORT_RECORD, ModelError)
    if not isinstance(record, dict) or not isinstance(record.get("max_length"), int):
        raise ModelError(f"{path / EXPORT_RECORD} is damaged: it lacks max_length")
    model = OnnxClassifier(path)
    saved = {"model": {"max_length": record["max_length"]},
             "data": {"text_column": record.get("text_column"), "text_pair_column": record.get("text_pair_column")}}
    return model, load_checkpoint_tokenizer(path), saved
