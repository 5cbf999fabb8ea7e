"""trainer.precision: auto resolves per device; fp16 without CUDA is a config error."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_dirs

from sftcli.errors import ConfigError
from sftcli.evaluate import native_bf16, resolve_precision

CPU = torch.device("cpu")


def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(monkeypatch) -> None:
    for name, value in (("_is_avx512_bf16_supported", True), ("_is_amx_tile_supported", False)):
        monkeypatch.setattr(torch.cpu, name, lambda v=value: v, raising=False)
    assert native_bf16(CPU) and resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not native_bf16(CPU) and resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_precision("auto", CPU) == "bf16"
    # An explicit choice is kept as it is.
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="trainer.precision=fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_run_records_the_precision_it_ran_with(sft, tmp_path) -> None:
    sft("train", *TINY, f"run_root={tmp_path / 'runs'}", check=True)
    (run,) = run_dirs(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == resolve_precision("auto", CPU)
    proc = sft("train", *TINY, "trainer.precision=fp16", f"run_root={tmp_path / 'fp16'}")
    assert proc.returncode == 2 and "trainer.precision=fp16 needs a CUDA device" in proc.stderr
