"""Everything distributed, in one module: process-group setup, collectives, DDP wrapping, launching.

No other module imports torch.distributed. With one process every function here is a cheap no-op, so
the trainer reads the same for 1 and N processes. Rank 0 writes files; every stop decision goes
through :func:`any_flag` so all ranks agree and none waits forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td

from sftcli.cluster import torchrun_world_size


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from sftcli.errors import ConfigError

        raise ConfigError("trainer.device: cuda was asked for but no CUDA device is available")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init(device_preference: str, timeout_s: int) -> DistEnv:
    """Join the process group when launched with several processes; otherwise a single-process env."""
    if torchrun_world_size() == 1:
        return DistEnv(device=pick_device(device_preference, 0))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = pick_device(device_preference, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not td.is_initialized():
        # A short timeout turns a dead peer into an error in seconds instead of the 30-minute default.
        td.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                              device_id=device if device.type == "cuda" else None)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def set_timeout(env: DistEnv, timeout_s: int) -> None:
    """Change the collectives' timeout of a joined process group (a rank that joined before it knew the
    run's trainer.dist_timeout_s). torch has no public call for it; without the private one the join's
    timeout stays."""
    setter = getattr(td.distributed_c10d, "_set_pg_timeout", None)
    if env.distributed and setter is not None:
        setter(datetime.timedelta(seconds=timeout_s))


def stop_with_parent() -> None:
    """Linux: ask the kernel to send this worker SIGTERM when its launcher dies (torchrun's agent, sft's
    parent), so that a killed agent does not leave its workers training on without it: they stop after
    the step, with a checkpoint, as on preemption (the other ranks stop at the same step)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def close() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        td.barrier()


def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place; returns the tensor)."""
    if env.distributed:
        td.all_reduce(tensor, op=td.ReduceOp.SUM)
    return tensor


def any_flag(env: DistEnv, *flags: bool | torch.Tensor) -> list[bool]:
    """Agree on boolean flags: each result is True when it is True on any rank (one collective, and one
    host sync when a flag is a device tensor)."""
    t = torch.stack([torch.as_tensor(f, device=env.device).reshape(()).float() for f in flags])
    if env.distributed:
        td.all_reduce(t, op=td.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (SimCLR-style)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = td.get_world_size(), td.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        td.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Each rank's loss depends on every rank's rows: sum the gradients over ranks, keep our slice.
        grad = grad.contiguous()
        td.all_reduce(grad, op=td.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from all ranks along dim 0; gradients flow back to each rank."""
    if not env.distributed:
        return tensor
    if not tensor.requires_grad:
        parts = [torch.empty_like(tensor) for _ in range(env.world_size)]
        td.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)
    return _GatherWithGrad.apply(tensor)


def all_gather_object(env: DistEnv, obj: Any) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    td.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj: Any, src: int = 0) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def wrap_model(env: DistEnv, model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around the model when there are several processes."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_workers(fn: Callable[..., Any], args: tuple[Any, ...], nproc: int, run_id: str,
                   nnodes: int = 1, rdzv_endpoint: str | None = None,
                   keep_signals: Iterable[signal.Signals] = (), quiet: bool = True) -> dict[int, Any]:
    """Start `nproc` processes running fn(*args) through torch.distributed's elastic launcher.

    Returns {rank: return value}. A failing worker raises ChildFailedError, whose per-rank records
    carry the worker's error message and exit code (see :func:`worker_failures`). keep_signals: signals
    the caller handles itself, which the elastic agent must leave alone (torch >= 2.9 lets it choose;
    older agents take SIGTERM, SIGINT, SIGHUP and SIGQUIT, see :func:`agent_signal`). quiet: leave the
    reporting of failed workers to the caller (see :func:`_quiet_agent_logs`).
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    endpoint = rdzv_endpoint or f"127.0.0.1:{_free_port()}"
    extra: dict[str, Any] = {}
    if "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}:
        kept = {s.name for s in keep_signals}
        extra["signals_to_handle"] = ",".join(s for s in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if s not in kept)
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint=endpoint, max_restarts=0, monitor_interval=0.5,
        start_method="spawn", **extra,
    )
    with _quiet_agent_logs() if quiet else contextlib.nullcontext():
        return elastic_launch(config, fn)(*args)


@contextlib.contextmanager
def _quiet_agent_logs() -> Iterator[None]:
    """The elastic agent logs each failed worker with a traceback of its own process bookkeeping and
    each peer it stops; sft reports the exit codes and messages itself (one message, no traceback).
    The workers' own output is untouched."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed.elastic")]
    levels = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


def agent_signal(exc: BaseException) -> int | None:
    """The signal number when the elastic agent itself was stopped by a signal (SignalException)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    return int(exc.sigval) if isinstance(exc, SignalException) else None


def worker_failures(exc: BaseException) -> list[tuple[int, int, str]] | None:
    """(rank, exit code, message) for each failed worker of a ChildFailedError, else None."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not isinstance(exc, ChildFailedError):
        return None
    out = []
    for rank, failure in sorted(exc.failures.items()):
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", str(message))
        out.append((rank, failure.exitcode, str(message)))
    return out
