"""`sft export RUN format=onnx [quantize=int8] [output=DIR]`: the run's model as an ONNX graph that serves
with onnxruntime (or Optimum) alone: no sft, no remote code (sftcli/onnx_export.py does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftcli.config import parse_export
from sftcli.errors import ConfigError


def export_arguments(args: list[str]) -> dict[str, Any]:
    """`sft export` takes the run as its first word (`sft export RUN format=onnx`) or as checkpoint=RUN."""
    from sftcli.commands.predict import dotlist_arguments

    words = [a for a in args if "=" not in a]
    if len(words) > 1:
        raise ConfigError(f"sft export takes one run directory and key=value arguments; not understood: {words[1:]}")
    raw = dotlist_arguments("export", [a for a in args if "=" in a])
    if words:
        if "checkpoint" in raw:
            raise ConfigError(f"sft export: the run is given twice ({words[0]} and checkpoint={raw['checkpoint']})")
        raw["checkpoint"] = words[0]
    return raw


def default_output(given: Path, int8: bool) -> Path:
    """RUN/onnx (RUN/onnx-int8): beside the run's model/, whether the run, its model/ or one of its
    checkpoints was named."""
    run = given.parent if given.name == "model" else given
    if run.parent.name == "checkpoints":
        run = run.parent.parent
    return run / ("onnx-int8" if int8 else "onnx")


def run_export(args: list[str]) -> int:
    from sftcli import onnx_export
    from sftcli.commands.checkpoints import load_checkpoint

    ec = parse_export(export_arguments(args))
    onnx_export.require_onnx("export")
    given = Path(ec.checkpoint).expanduser()
    out = Path(ec.output).expanduser() if ec.output else default_output(given, ec.quantize == "int8")
    if out.exists() and not onnx_export.is_onnx_export(out):
        # Replacing is for sft's own exports only: a folder the user named is never emptied.
        raise ConfigError(f"output: {out} exists and is not an sft export; name a new directory")
    path, model, tokenizer, saved = load_checkpoint(ec.checkpoint)
    data = saved.get("data", {})
    record = {"format": "onnx", "quantize": ec.quantize, "checkpoint": str(path.resolve()),
              "max_length": int(saved["model"]["max_length"]), "text_column": data.get("text_column"),
              "text_pair_column": data.get("text_pair_column")}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output: cannot create the folder {out.parent}: {exc.strerror or exc}") from None
    written = onnx_export.write_export(model, tokenizer, out, record, ec.opset, ec.quantize == "int8")
    diff = written.get("max_abs_logit_diff_int8", written["max_abs_logit_diff_fp32"])
    print(f"ONNX export ({ec.quantize if ec.quantize != 'none' else 'fp32'}, opset {written['opset']}) written to "
          f"{out} (checkpoint {path}); "
          f"onnxruntime vs the torch model on {len(onnx_export.CHECK_TEXTS)} texts: largest logit difference {diff:.2e}")
    return 0
