"""Weights & Biases through its own library (`trainer.report_to=wandb`; the `wandb` package).

Mode: `WANDB_MODE` when the user set it; else online when logged in (WANDB_API_KEY, an identity token
file, or a netrc entry for the W&B host), offline otherwise: the run is written under
`<run dir>/wandb/` and `wandb sync <run dir>/wandb/offline-run-*` uploads it later. Project
`WANDB_PROJECT` or `sft`; a sweep's jobs share the sweep's directory name as their W&B group. Config =
the resolved config, every metric with its step, summary = the final test and validation metrics.

Resume: trackers.json keeps the W&B run id, and a resumed sft run continues it (`resume="allow"`). W&B
takes steps in increasing order only, so the steps the interrupted attempt already logged keep their
first values, as with MLflow.
"""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from sftcli.trackers.base import RunFacts

DEFAULT_PROJECT = "sft"
# sft's exit codes on a stop (sftcli/errors.py): W&B shows a run that exits non-zero as failed.
_EXIT_CODES = {"completed": 0, "preempted": 75, "failed": 1}


def logged_in() -> bool:
    """Whether W&B has credentials to go online: an API key or identity token in the environment, or a
    netrc entry for its host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return host is not None and netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def mode() -> str | None:
    """The W&B mode to ask for; None leaves WANDB_MODE, which the user set, to W&B."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if logged_in() else "offline"


class WandbTracker:
    name = "wandb"

    def __init__(self) -> None:
        self._run: Any = None

    def start(self, config: dict[str, Any], facts: RunFacts) -> dict[str, Any]:
        import wandb

        saved = facts.state.get(self.name) or {}
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            group=facts.group,
            name=facts.name,
            dir=str(facts.run_dir),
            config=config,
            mode=mode(),
            id=saved.get("id"),
            resume="allow" if saved.get("id") else None,
        )
        return {"id": self._run.id, "project": self._run.project}

    def log(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=int(step))

    def finish(self, final: dict[str, float], status: str) -> None:
        if self._run is None:
            return
        self._run.summary.update(final)
        if status == "preempted":
            self._run.mark_preempting()
        self._run.finish(exit_code=_EXIT_CODES.get(status, 1))
        self._run = None
