"""Runs that a cluster scheduler may stop: which signals stop a run, and how a preempted job ends.

Under Hydra's submitit launcher each sweep job is a submitit job. submitit sends its own signal
(SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another) before a SLURM time limit or a preemption and,
when the job function can be checkpointed (Hydra's launcher can), requeues the job with the same
arguments. SIGTERM (scancel, SLURM's own preemption, kill) means stop without requeueing. So a run:

- stops on SIGTERM, SIGINT and, in a submitit job, submitit's signal: the step finishes and a checkpoint
  is saved (sftcli/engine/loop.py);
- then, in a submitit job, hands submitit's signal back to submitit, which requeues the job, or else
  exits 75 without a result, so that submitit and SLURM see an unfinished job rather than a finished
  one with a missing value (a requeued job must not find a stale result);
- continues, once requeued, from its newest checkpoint (see :func:`continues_requeued_job`).

No torch or submitit import here: the trainer and the CLI's parent process both use this module.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import NoReturn

from sftcli.errors import EXIT_PREEMPTED


def launched_by_torchrun() -> bool:
    """True inside a worker started by torchrun / elastic launch (it sets these variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def torchrun_world_size() -> int:
    """The world size of the torchrun / elastic launch this process belongs to; 1 outside one."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


# Hydra's submitit launchers, and sft's subclasses of them (hydra_plugins/sft_submitit/_launcher.py).
LAUNCHERS = {"submitit_local": "hydra_plugins.sft_submitit._launcher.LocalLauncher",
             "submitit_slurm": "hydra_plugins.sft_submitit._launcher.SlurmLauncher"}

# The signals this process received that stop a run (the trainer's handler and the parent's relay
# note them), so a preempted job can tell submitit's signal from a plain SIGTERM.
_received: list[int] = []


def in_submitit_job() -> bool:
    """True inside a job started by submitit (it exports SUBMITIT_EXECUTOR into every job)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def requeue_signal() -> signal.Signals | None:
    """submitit's preemption/timeout signal in a submitit job (None elsewhere)."""
    if not in_submitit_job():
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, f"SIG{name}", None)
    return sig if isinstance(sig, signal.Signals) else None


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals after which a run finishes its step, saves a checkpoint and stops."""
    extra = requeue_signal()
    base = (signal.SIGTERM, signal.SIGINT)
    return base + ((extra,) if extra is not None and extra not in base else ())


def launcher_overrides(args: list[str]) -> list[str]:
    """With hydra/launcher=submitit_local|submitit_slurm: the override that runs the sweep through sft's
    subclass of that launcher (the same jobs and settings; it waits for every job, and a job that ends
    without a result counts as a failed job instead of ending the sweep with a traceback)."""
    chosen = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("hydra/launcher=")]
    if not chosen or chosen[-1] not in LAUNCHERS or any(a.startswith("hydra.launcher._target_=") for a in args):
        return []
    return [f"hydra.launcher._target_={LAUNCHERS[chosen[-1]]}"]


def note_stop_signal(signum: int) -> None:
    _received.append(signum)


def end_preempted_job() -> NoReturn:
    """A submitit job whose run stopped on a signal (its checkpoint is saved): submitit's signal goes
    back to submitit's own handler, which requeues the job and exits; otherwise exit 75. Either way
    the job leaves no result, so submitit keeps waiting for a requeued job instead of reading a stale
    value."""
    sig = requeue_signal()
    if sig is not None and sig in _received:
        handler = signal.getsignal(sig)  # the trainer restored submitit's handler when it stopped
        if callable(handler):
            handler(sig, None)
    raise SystemExit(EXIT_PREEMPTED)


def continues_requeued_job(run_dir: Path) -> bool:
    """A submitit job that finds checkpoints in its own run dir is a requeued attempt of itself (a
    sweep's job dirs are its own), so it continues from them as resume=auto would."""
    if not in_submitit_job():
        return False
    from sftcli import checkpoint as ckpt

    return ckpt.newest_valid(run_dir / "checkpoints") is not None
