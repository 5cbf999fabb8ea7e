"""The `sft` entry point: dispatch to a command. Heavy imports (torch, transformers) happen only inside
commands, so `sft` and `sft --help` answer at once."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from typing import Any

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
    elif command == "export":
        code = _guarded(lambda: _export(rest), debug)
    elif command == "select":
        code = _guarded(lambda: _select(rest), debug)
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
    if command == "export":
        print(helptext.export_help())
        return 0
    if command == "select":
        print(helptext.select_help())
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sftcli.errors import ConfigError
    from sftcli.precheck import composition_message

    overrides = [a for a in args if not a.startswith("-") and not a.lstrip("+~").startswith("hydra.")]
    try:
        text = helptext.hydra_command_help(command, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(composition_message(command, exc, overrides)) from None
    print(text)
    return 0


def _debug_requested(args: list[str]) -> bool:
    return os.environ.get("SFT_DEBUG", "") not in ("", "0") or "debug=true" in args or "debug=True" in args


def _guarded(fn: Callable[[], Any], debug: bool) -> int:
    """Run a command; user errors become one message and exit code 2 (tracebacks only with debug)."""
    try:
        result = fn()
        return int(result) if isinstance(result, int) else 0
    except Exception as exc:
        return _failure_code(exc, debug)


def _failure_code(exc: Exception, debug: bool) -> int:
    """The exit code of an error that ended a command, reported in one line; a bug is re-raised."""
    from sftcli.errors import report_error, user_error

    error = user_error(exc)
    code = getattr(error, "exit_code", None)
    if code is None:
        raise exc
    report_error(error, debug)
    return int(code)


# ----------------------------------------------------------------------------------------------------
# Hydra commands


def _run_hydra(command: str, args: list[str], debug: bool) -> int:
    """`sft train` / `sft eval`: compose once, validate once and claim the directory (exit 2 for any
    problem, before Hydra makes it), then run the job or the sweep (sftcli/hydra_app.py); the exit code is
    what the jobs ended in (sftcli/jobs.py)."""
    if command == "train" and os.environ.get("RANK", "0") != "0":
        from sftcli import cluster

        if cluster.launched_by_torchrun():
            # External torchrun: only rank 0 runs Hydra and makes the run dir; the others follow it.
            from sftcli.launch import follow_external_launch

            return _guarded(follow_external_launch, debug)
    if command == "train":
        args = _resolve_auto_resume(args)
    from sftcli import hydra_app
    from sftcli.errors import UserError
    from sftcli.jobs import Jobs

    parsed = hydra_app.parse_args(args)
    jobs = Jobs(command=command, multirun=bool(parsed.multirun), debug=debug)
    if hydra_app.wants_hydra_only(parsed):
        # --cfg, --info, ...: Hydra's own handling; they write nothing.
        return _guarded(lambda: (_check_plugins(args), hydra_app.hydra_only(command, args, jobs))[-1], debug)
    with hydra_app.App(command) as app:
        try:
            cfg = _plan(app, command, list(parsed.overrides), jobs)
        except Exception as exc:
            return _failure_code(exc, debug)
        try:
            app.sweep(cfg, jobs) if jobs.multirun else app.run(cfg, jobs)
        except UserError as exc:  # a sweep's jobs refused before any runs (a swept group's option)
            jobs.release_sweep()
            return _failure_code(exc, debug)
        except SystemExit as exc:  # a single job that failed (sftcli/jobs.py reported it)
            if jobs.failures:
                return jobs.exit_code or 1
            return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return jobs.outcome()


def _check_plugins(args: list[str]) -> None:
    from sftcli.precheck import check_plugins

    check_plugins(args)


def _plan(app: Any, command: str, overrides: list[str], jobs: Any) -> Any:
    """Compose the command line once, validate it and claim the directory Hydra will make
    (sftcli/rundir.py): a new run never goes into a directory that holds anything. Returns the composed
    config. A sweep's jobs are composed and validated one by one as they run (one bad job does not stop
    the others)."""
    from sftcli.precheck import check_composed, prepare_train
    from sftcli.rundir import cache_root, check_path, claim

    _check_plugins(overrides)
    cfg = app.compose([*overrides, *_launcher_overrides(overrides)], jobs.multirun)
    prepare = (lambda job, run_dir: prepare_train(job, run_dir, overrides)) if command == "train" else None
    planned = check_composed(command, cfg, jobs.multirun, prepare)
    if planned.config is not None:
        check_path(cache_root(planned.config.cache_dir), "cache_dir (or $SFT_CACHE_DIR)")
    if jobs.multirun:
        what, keys = "the sweep directory", "hydra.sweep.dir"
        hint = "Name another one with hydra.sweep.dir=DIR, or add resume=auto to continue each job of that sweep."
    elif command == "eval":
        what, keys = "the eval directory", "run_root/run_name (hydra.run.dir)"
        hint = "Name another one with run_name=NAME."
    else:
        what, keys = "the run directory", "run_root/run_name (hydra.run.dir)"
        hint = ("To continue that run, add resume=auto; to start a new run, name another directory with "
                "run_name=NAME.")
    jobs.claim = claim(planned.directory, continues=planned.continues, what=what, keys=keys, hint=hint)
    jobs.planned = planned.config
    jobs.sweep_dir = planned.directory if jobs.multirun else None
    return cfg


def _launcher_overrides(overrides: list[str]) -> list[str]:
    """hydra/launcher=submitit_*: sft's subclasses of the plugin's launchers (sftcli/cluster.py)."""
    from sftcli.cluster import launcher_overrides

    extra = launcher_overrides(overrides)
    if extra:
        from hydra_plugins.sft_submitit._launcher import register

        register()
    return extra


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


def _export(args: list[str]) -> int:
    from sftcli.commands.export import run_export

    return run_export(args)


def _select(args: list[str]) -> int:
    from sftcli.commands.select import run_select

    return run_select(args)


def _report(args: list[str]) -> int:
    from sftcli.report import run_report

    return run_report(args)


if __name__ == "__main__":
    main()
