"""The `sft` entry point: dispatch to a command. Heavy imports (torch, transformers) happen only inside
commands, so `sft` and `sft --help` answer at once."""

from __future__ import annotations

import difflib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftcli import jobs
from sftcli.catalog import COMMANDS, HYDRA_COMMANDS, config_dir, config_groups

__all__ = ["COMMANDS", "config_dir", "config_groups", "main", "usage"]

def usage() -> str:
    from sftcli.catalog import EXAMPLES, USAGE_EXAMPLES
    from sftcli.helptext import columns, read_yaml_doc

    lines = ["usage: sft COMMAND [key=value ...]", "", "Semi-supervised fine-tuning of text encoders:",
             "  L = L_sup (cross-entropy on labels) + lambda * L_con (InfoNCE towards the frozen encoder)", "",
             "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "config groups (sft train GROUP=OPTION; strategy and recipe are added with +GROUP=OPTION):"]
    defaults = read_yaml_doc(config_dir() / "train.yaml").defaults
    for group, options in config_groups().items():
        default = defaults.get(group, ("",))[0]
        shown = ", ".join(f"{o} (default)" if o == default else o for o in options)
        lines.append(f"  {group + ':':<10} {shown}")
    examples = [EXAMPLES[command][i] for command, i in USAGE_EXAMPLES]
    lines += ["", "examples:", *columns(examples, cap=46),
              "", "sft COMMAND --help shows a command's options. SFT_DEBUG=1 (or debug=true) shows tracebacks."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # The reader of sft's output went away (`sft train --help | head`): not a fault of sft's. Python's
        # documented recipe: point stdout at devnull so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0)
    if argv[0] in ("-V", "--version"):
        from sftcli import __version__

        print(f"sft {__version__}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = difflib.get_close_matches(command, list(COMMANDS), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        print(f"sft: unknown command {command!r}{extra}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    debug = _debug_requested(rest)
    if any(a in ("-h", "--help") for a in rest):
        sys.exit(_guarded(lambda: _print_help(command, rest), debug))
    if command in HYDRA_COMMANDS:
        code = _run_hydra(command, rest, debug)
    elif command == "predict":
        code = _guarded(lambda: _predict(rest), debug)
    else:
        code = _guarded(lambda: _report(rest), debug)
    sys.exit(code)


def _print_help(command: str, args: list[str]) -> int:
    """`sft COMMAND --help`: the command's own keys and their meanings (sftcli/helptext.py). Handled here,
    not by Hydra, whose help page cannot show the YAML comments; Hydra's own --hydra-help stays Hydra's."""
    if command == "report":
        from sftcli.report.command import USAGE

        print(USAGE)
        return 0
    from sftcli import helptext

    if command == "predict":
        print(helptext.predict_help())
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sftcli.errors import ConfigError
    from sftcli.precheck import composition_message

    overrides = [a for a in args if not a.startswith("-") and not a.lstrip("+~").startswith("hydra.")]
    try:
        text = helptext.hydra_command_help(command, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_message(command, str(exc), overrides)) from None
    print(text)
    return 0


def _debug_requested(args: list[str]) -> bool:
    return os.environ.get("SFT_DEBUG", "") not in ("", "0") or "debug=true" in args or "debug=True" in args


def _guarded(fn: Callable[[], Any], debug: bool) -> int:
    """Run a command; user errors become one message and exit code 2 (tracebacks only with debug)."""
    from sftcli.errors import UserError

    try:
        result = fn()
        return int(result) if isinstance(result, int) else 0
    except UserError as exc:
        _report_error(exc, debug)
        return exc.exit_code
    except Exception as exc:
        exc = _path_error(exc)
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        _report_error(exc, debug)
        return int(code)


def _path_error(exc: BaseException) -> BaseException:
    """An OSError about a path the command was given (a name too long, a folder that is a file, no
    permission) is the user's to fix: one message naming the path, exit 2. Other errors stay as they are."""
    from sftcli.errors import UserError

    if isinstance(exc, OSError) and exc.filename is not None:
        error = UserError(f"{exc.filename}: {exc.strerror or exc}")
        error.__cause__ = exc
        return error
    return exc


def _report_error(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    print(f"sft: error: {exc}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Hydra commands


# What the command's Hydra jobs ended in (sftcli/jobs.py), read for the exit code.
_STATE = jobs.STATE


def _run_hydra(command: str, args: list[str], debug: bool) -> int:
    if command == "train" and os.environ.get("RANK", "0") != "0":
        from sftcli import dist  # imports torch: only under a launcher that set RANK

        if dist.launched_by_torchrun():
            # External torchrun: only rank 0 runs Hydra and makes the run dir; the others follow it.
            from sftcli.launch import follow_external_launch

            return _guarded(follow_external_launch, debug)
    if command == "train":
        args = _resolve_auto_resume(args)
    _STATE.pop("claim", None)
    code = _guarded(lambda: _precheck(command, args), debug)
    if code:
        return code
    from sftcli.cluster import launcher_overrides

    extra = launcher_overrides(args)
    if extra:
        from hydra_plugins.sft_submitit._launcher import register

        register()
        args = [*args, *extra]
    import hydra

    multirun = any(a in ("-m", "--multirun") for a in args)
    _STATE.update(command=command, debug=debug, multirun=multirun, failures=[], exit_code=0)
    task = _train_task if command == "train" else _eval_task
    app = hydra.main(version_base=None, config_path=str(config_dir()), config_name=command)(task)
    # -m first and the overrides together: argparse takes one run of overrides, not two split by a flag.
    multirun_flags = [a for a in args if a in ("-m", "--multirun")]
    args = [*multirun_flags, *(a for a in args if a not in multirun_flags)]
    sys.argv = [f"sft-{command}", *args, f"hydra.job.name={command}"]
    if any(a in _HYDRA_FLAGS or a.startswith(("--cfg", "--info")) for a in args):
        sys.argv = [sys.argv[0], *args]  # Hydra's own flags: leave the job name alone
    try:
        app()
    except SystemExit as exc:
        if _STATE["failures"]:
            return _STATE["exit_code"] or 1
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    if multirun and _STATE["failures"]:
        print(f"sft: {len(_STATE['failures'])} job(s) of the sweep failed: " + "; ".join(_STATE["failures"]),
              file=sys.stderr)
        _release_refused_sweep()
        return _STATE["exit_code"] or 1
    return _STATE["exit_code"]


_HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                "--resolve", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun")


def _precheck(command: str, args: list[str]) -> None:
    """Compose and validate once before Hydra runs, so a mistyped key, group option or value is a
    ConfigError (exit 2, with a "did you mean") before Hydra makes a run dir; and claim the directory Hydra
    will make (sftcli/rundir.py): a new run never goes into a directory that holds anything. Sweeps are
    composed and validated per job by Hydra (one bad job does not stop the others)."""
    from sftcli.precheck import check_config, check_plugins
    from sftcli.rundir import cache_root, check_path, claim

    check_plugins(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # Hydra's own flags (--cfg, --info, ...): Hydra handles them, and they write nothing
    planned = check_config(command, [a for a in args if not a.startswith("-")], multirun)
    if planned.config is not None:
        check_path(cache_root(planned.config.cache_dir), "cache_dir (or $SFT_CACHE_DIR)")
    if planned.directory is None:
        return
    if multirun:
        what, keys = "the sweep directory", "hydra.sweep.dir"
        hint = "Name another one with hydra.sweep.dir=DIR, or add resume=auto to continue each job of that sweep."
    elif command == "eval":
        what, keys = "the eval directory", "run_root/run_name (hydra.run.dir)"
        hint = "Name another one with run_name=NAME."
    else:
        what, keys = "the run directory", "run_root/run_name (hydra.run.dir)"
        hint = ("To continue that run, add resume=auto; to start a new run, name another directory with "
                "run_name=NAME.")
    _STATE["claim"] = claim(planned.directory, continues=planned.continues, what=what, keys=keys, hint=hint)


def _release_refused_sweep() -> None:
    """A sweep whose every job was refused before training (all ran in this process) made nothing worth
    keeping: its directory goes, as a refused single run's does. A sweep with one job that trained keeps
    every job's directory and sweep.csv."""
    claim, sweep_dir = _STATE.get("claim"), _STATE.get("sweep_dir")
    refused_all = _STATE.get("jobs_run", 0) == len(_STATE["failures"]) and not _STATE.get("jobs_started")
    if claim is not None and sweep_dir is not None and refused_all and not _STATE.get("remote_jobs"):
        claim.release(Path(sweep_dir))


def _job_failed(exc: BaseException, code: int) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        run_dir, overrides = None, []
    _STATE["failures"].append(f"[{' '.join(overrides)}] {exc}")
    _STATE["exit_code"] = _STATE["exit_code"] or code
    if run_dir is None or not run_dir.is_dir():
        return
    claim = _STATE.get("claim")
    started = any((run_dir / name).exists() for name in ("checkpoints", "metrics.jsonl", "summary.json"))
    _STATE["jobs_started"] = _STATE.get("jobs_started", 0) + started
    if not _STATE["multirun"] and (_STATE["command"] == "eval" or not started):
        # A single command refused before it trained (or an evaluation, which writes eval.json last):
        # remove what it made, so a mistyped command leaves nothing behind and touches nothing it found.
        # Sweep jobs keep their directories: the sweep's summary records the failure.
        if claim is not None:
            claim.release(run_dir)
        return
    if _STATE["command"] == "eval" or (claim is not None and not claim.created_by_us(run_dir)):
        return  # a run this command continued keeps its files as they were
    import json

    summary = run_dir / "summary.json"
    if not summary.exists():
        from sftcli.errors import EXIT_PREEMPTED

        status = "preempted" if code == EXIT_PREEMPTED else "failed"
        summary.write_text(json.dumps({"status": status, "error": str(exc), "exit_code": code}, indent=2))
    if not _STATE["multirun"]:
        print(f"run dir: {run_dir.resolve()}", file=sys.stderr, flush=True)  # what it kept, for resume=auto


def _handle(fn: Callable[[Any], Any], cfg: Any) -> Any:
    from sftcli.errors import UserError

    _job_process_state()
    _STATE["jobs_run"] = _STATE.get("jobs_run", 0) + 1
    try:
        result = fn(cfg)
        _STATE["jobs_started"] = _STATE.get("jobs_started", 0) + 1
        return result
    except (UserError, Exception) as exc:
        exc = _path_error(exc)
        code = getattr(exc, "exit_code", None)
        if code is None and not isinstance(exc, UserError):
            if not _STATE["multirun"]:
                _job_failed(exc, 1)  # a bug: its traceback follows, but what the command made goes first
                raise
            code = 1
            traceback.print_exception(exc)
        _report_error(exc, _STATE["debug"] and code != 1)
        _job_failed(exc, int(code))
        from sftcli import cluster
        from sftcli.errors import EXIT_PREEMPTED

        if code == EXIT_PREEMPTED and cluster.in_submitit_job():
            cluster.end_preempted_job()  # requeued by submitit, or exit 75: no result either way
        if _STATE["multirun"]:
            # The sweep goes on; the job's value is missing (NaN for sweepers that need a number).
            return jobs.missing_value()
        sys.exit(int(code))


def _job_process_state() -> None:
    """A job that an out-of-process launcher (submitit) runs starts with this module fresh: set what
    _run_hydra sets in the parent from the job's own Hydra config."""
    if _STATE:
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    name = str(hydra_cfg.job.name)
    _STATE.update(command=name if name in HYDRA_COMMANDS else "train", multirun=hydra_cfg.mode == RunMode.MULTIRUN,
                  debug=_debug_requested([str(o) for o in hydra_cfg.overrides.task]), failures=[], exit_code=0)


def _train_task(cfg: Any) -> Any:
    def run(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig

        from sftcli.launch import selection_value, train_in_run_dir

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        summary = train_in_run_dir(cfg, run_dir)
        logging.getLogger("sft").info("run dir: %s", run_dir.resolve())  # the last line: where it all went
        return selection_value(summary)

    return _handle(run, cfg)


def _eval_task(cfg: Any) -> Any:
    def run(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig

        from sftcli.commands import run_eval

        return run_eval(cfg, Path(HydraConfig.get().runtime.output_dir))

    return _handle(run, cfg)


def _resolve_auto_resume(args: list[str]) -> list[str]:
    """`resume=auto`: re-use the newest run dir made by the same command (same overrides) so re-running
    the command continues it. With no such run, the run starts fresh (resume=auto finds nothing)."""
    if "resume=auto" not in args or any(a in ("-m", "--multirun") for a in args):
        return args
    if any(a.startswith(("hydra.run.dir=", "run_name=")) for a in args):
        return args  # the user named the run dir
    from sftcli.runs import find_resumable_run

    found = find_resumable_run(args)
    if found is None:
        return args
    print(f"sft: resume=auto: continuing {found}", file=sys.stderr)
    return [*args, f"hydra.run.dir={found}"]


# ----------------------------------------------------------------------------------------------------
# Plain commands


def _predict(args: list[str]) -> int:
    from sftcli.commands import run_predict

    return run_predict(args)


def _report(args: list[str]) -> int:
    from sftcli.report import run_report

    return run_report(args)


if __name__ == "__main__":
    main()
