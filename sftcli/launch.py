"""After Hydra, in the parent process: the typed config of a job, then 1 worker in-process or N through
torch.distributed's elastic launcher. Hydra never runs inside a worker: workers get the typed config."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftcli import cluster, dist, rundir
from sftcli.checkpoint import probe_writable
from sftcli.config import TrainConfig
from sftcli.errors import EXIT_USER_ERROR, NonFiniteError, Preempted, UserError
from sftcli.runlog import setup_logging
from sftcli.trackers import check_installed

log = logging.getLogger("sft")

# The file through which rank 0 checks that every node sees the run dir and the caches it writes.
NODE_CHECK = ".sft-node-check"


class WorkersFailed(Exception):
    """One or more worker processes failed; carries the exit code to report."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def train_in_run_dir(tc: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """Launch the workers of a validated config in its run dir; returns the run's summary. The workers
    write config.yaml (sftcli/engine) once the data has resolved what the config leaves open."""
    external = cluster.torchrun_world_size() > 1
    check_installed(tc.trainer)  # the trackers' packages, before the run dir is written to
    probe_writable(run_dir)
    setup_logging(run_dir, is_main=True)
    for note in tc.notes:
        log.info("config: %s", note)
    if external:
        # External torchrun: this is rank 0 (the others wait in follow_external_launch). They learn the
        # run dir from it, and all check that they see the files rank 0 writes before any training.
        dist.stop_with_parent()
        env = dist.init(tc.trainer.device, tc.trainer.dist_timeout_s)
        _share_run_dir(env, run_dir.resolve(), _cache_root(tc), tc)
        return worker_main(str(run_dir), "cli", tc)
    if tc.trainer.nproc == 1:
        from sftcli.engine.worker import run_worker

        return run_worker(str(run_dir), tc)
    log.info("launching %d worker processes (torch.distributed elastic launch)", tc.trainer.nproc)
    if "OMP_NUM_THREADS" not in os.environ:
        # N CPU workers each using every core oversubscribe the machine (several times slower); share
        # the cores out as torchrun does. Workers inherit this environment.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // tc.trainer.nproc))
    with _relay_stop_signals() as received:
        try:
            # The workers get the typed config itself (pickled by the launcher), not a file to parse again.
            results = dist.launch_workers(worker_main, (str(run_dir), "sft", tc), tc.trainer.nproc,
                                          run_id=run_dir.name, keep_signals=cluster.stop_signals(),
                                          quiet=not tc.debug)
        except Exception as exc:
            raise _launch_failure(exc, run_dir, received) from None
    return results[0]


def _launch_failure(exc: Exception, run_dir: Path, received: list[int]) -> Exception:
    """The one error a failed launch reports: the workers' most telling exit code and their messages."""
    failures = dist.worker_failures(exc)
    if failures is None:
        signum = dist.agent_signal(exc)
        if signum is None:
            return exc
        # A signal the elastic agent handles itself (SIGHUP, SIGQUIT): it has stopped the workers.
        name = signal.Signals(signum).name
        return WorkersFailed(f"stopped by {name}; the workers were stopped with it", 128 + signum)
    codes = [code for _, code, _ in failures]
    # The most telling exit code: a user error or preemption wins over a peer's collateral failure.
    for wanted in (EXIT_USER_ERROR, Preempted.exit_code, NonFiniteError.exit_code):
        if wanted in codes:
            code = wanted
            break
    else:
        code = codes[0] if codes and codes[0] > 0 else 1
    if code == Preempted.exit_code:
        # Every rank stopped after the same step and rank 0 saved it: report it once, as one process does.
        return Preempted(preempted_message(run_dir))
    if received:
        # The workers were not in the training loop (whose handler saves): they ended without a checkpoint.
        name = signal.Signals(received[0]).name
        return WorkersFailed(f"stopped by {name} outside the training loop (no checkpoint saved for it)",
                             128 + received[0])
    lines = "; ".join(f"rank {r} exited with {c}" + (f": {m}" if m and m != "<N/A>" else "")
                      for r, c, m in failures)
    return WorkersFailed(f"worker processes failed ({lines})", code)


def preempted_message(run_dir: Path) -> str:
    from sftcli import checkpoint as ckpt

    newest = ckpt.newest_valid(run_dir / "checkpoints")
    if newest is None:
        return "stopped by a signal; no checkpoint was saved"
    step = int(ckpt.NAME_RE.match(newest.name).group(1))  # type: ignore[union-attr]
    # The words of the one-process run (sftcli/engine/loop.py), so both read the same.
    return f"stopped by a signal at step {step}; checkpoint saved; continue with resume=auto"


@contextlib.contextmanager
def _relay_stop_signals() -> Iterator[list[int]]:
    """While the workers run: pass a stop signal the parent receives (kill, timeout, a scheduler, Ctrl-C)
    on to them. They finish the step, save and exit 75, and the elastic agent reports their exit codes.
    Left to the agent, the signal would end the parent with a traceback and the workers would be
    killed after a fixed grace period, however long the save takes. Yields the signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def relay(signum: int, frame: Any) -> None:
        received.append(signum)
        cluster.note_stop_signal(signum)
        if len(received) == 1:
            log.warning("received %s: passing it on to the workers (they finish the step, save, then exit)",
                        signal.Signals(signum).name)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)  # type: ignore[arg-type]

    old = {sig: signal.signal(sig, relay) for sig in cluster.stop_signals()}
    try:
        yield received
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _cache_root(tc: TrainConfig) -> Path:
    return rundir.cache_root(tc.cache_dir).resolve()


def _share_run_dir(env: dist.DistEnv, run_dir: Path, cache: Path, cfg: TrainConfig) -> None:
    """Rank 0: give every rank the run dir and the typed config, then check with them that they see the
    run dir and the caches."""
    shared = {"run_dir": str(run_dir), "cache": str(cache), "token": uuid.uuid4().hex,
              "timeout_s": cfg.trainer.dist_timeout_s, "config": cfg}
    written = []
    for folder in (run_dir, cache):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{NODE_CHECK}-{shared['token']}"
        path.write_text(shared["token"])
        written.append(path)
    try:
        dist.broadcast_object(env, shared)
        _agree_on_shared_dirs(env, shared, cache)
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _visible(path: Path, token: str, patience_s: float) -> bool:
    """Whether `path` holds `token`, waiting a little: a network filesystem may show another node's new
    file only after its directory cache expires; listing the directory makes it look again."""
    deadline = time.monotonic() + patience_s
    while True:
        with contextlib.suppress(OSError):
            os.listdir(path.parent)
            if path.read_text() == token:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _agree_on_shared_dirs(env: dist.DistEnv, shared: dict[str, Any], cache: Path | None) -> None:
    """Every rank checks the files rank 0 wrote into the run dir and its cache dir; all raise the same
    error when one rank misses them, so no rank waits for a file that never appears on its node (a
    run_root or cache dir that is not shared). cache: this rank's cache dir, None to read it from the
    run's config once the run dir is seen."""
    # Wait less than the collective below allows, so rank 0 hears the answer instead of a timeout.
    patience = max(1.0, min(30.0, shared["timeout_s"] / 3))
    run_dir, token = Path(shared["run_dir"]), shared["token"]
    problems = []
    if not _visible(run_dir / f"{NODE_CHECK}-{token}", token, patience):
        problems.append(f"does not see the run dir {run_dir}")
    elif cache is None:
        cache = _cache_root(shared["config"])
    if cache is not None and not _visible(cache / f"{NODE_CHECK}-{token}", token, patience):
        problems.append(f"has the cache dir {cache}, which does not hold what rank 0 wrote into {shared['cache']}")
    reports = dist.all_gather_object(env, (env.rank, socket.gethostname(), problems))
    missing = [f"rank {rank} on {host} {' and '.join(p)}" for rank, host, p in reports if p]
    if missing:
        raise UserError(f"{'; '.join(missing)} (rank 0 runs on {reports[0][1]}): every node must see the same "
                        "run_root and cache dir (cache_dir, or $SFT_CACHE_DIR), a shared filesystem mounted at the "
                        "same path")


def follow_external_launch() -> int:
    """A torchrun rank other than 0: receive the run dir from rank 0, then train as a worker."""
    dist.stop_with_parent()
    # Long enough for rank 0 to compose and check the config before it joins; the run's own
    # trainer.dist_timeout_s applies once rank 0 has sent it.
    env = dist.init("auto", 600)
    shared = dist.broadcast_object(env, None)
    dist.set_timeout(env, shared["timeout_s"])
    run_dir = Path(shared["run_dir"])
    try:
        _agree_on_shared_dirs(env, shared, None)
        worker_main(str(run_dir), "torchrun", shared["config"])
    except UserError as exc:
        print(f"sft: error (rank {env.rank}): {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def worker_main(run_dir: str, launched_by: str, cfg: TrainConfig) -> dict[str, Any]:
    """A worker process: known failures end with their own exit code and one message, no traceback.

    cfg: the run's typed config, as the parent validated it. launched_by: "cli" when this process also runs the CLI (rank 0 under the user's torchrun), which
    reports errors itself; "sft" for workers of sft's own launch, whose parent reports a preemption
    once (all ranks stop after the same step); "torchrun" for the other ranks of the user's torchrun,
    where each node's first worker reports it.
    """
    from sftcli.engine.worker import run_worker

    if launched_by == "sft":
        dist.stop_with_parent()
    try:
        return run_worker(run_dir, cfg)
    except (UserError, NonFiniteError, Preempted) as exc:
        if launched_by == "cli" or not cluster.launched_by_torchrun():
            raise  # in-process: the CLI reports it
        rank = os.environ.get("RANK", "0")
        if not isinstance(exc, Preempted):
            print(f"sft: error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        elif launched_by == "torchrun" and os.environ.get("LOCAL_RANK") == "0":
            print(f"sft: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


def selection_value(summary: dict[str, Any]) -> float | None:
    value = summary.get("select_value")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
