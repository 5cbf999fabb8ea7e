"""`sft train` and `sft eval` as Hydra apps, driven from sft's own argument list.

The one place sft uses Hydra's internals. Hydra's public entry point, `hydra.main`, reads `sys.argv` and
composes the config twice before the job sees it (once to learn the run mode, once to run); sft needs the
composed config before Hydra makes the run dir, to validate it and to claim the directory
(sftcli/rundir.py). So this module does what `Hydra.run` and `Hydra.multirun` do, in their order, with one
composition:

    argv -> Hydra's own argument parser -> compose once -> validate (the typed config) -> claim the directory
         -> Hydra's run_job (single run) or the configured sweeper and launcher (-m) -> Jobs (sftcli/jobs.py)

A sweep is composed once for the sweeper (its directory is claimed then), and each job once by the
launcher, as in Hydra. Hydra's own flags (--cfg, --info, --help, -cp/-cn/-cd, shell completion, ...) go
to Hydra's own handling unchanged: they write nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from sftcli.catalog import config_dir
from sftcli.jobs import Jobs

# Hydra's flags that sft hands to Hydra's own handling (everything but -m/--multirun).
_HYDRA_ONLY = ("help", "hydra_help", "cfg", "info", "shell_completion", "resolve", "package", "config_path",
               "config_name", "config_dir", "experimental_rerun")


def parse_args(args: list[str]) -> argparse.Namespace:
    """The command line as Hydra's own parser reads it (overrides, -m and Hydra's flags)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(args)


def wants_hydra_only(parsed: argparse.Namespace) -> bool:
    """Whether the command line gives one of Hydra's own flags (other than -m), which Hydra handles."""
    return any(getattr(parsed, name, None) not in (None, False) for name in _HYDRA_ONLY)


def hydra_only(command: str, args: list[str], jobs: Jobs) -> None:
    """Hydra's own flags, through Hydra's own entry (with the arguments given, not sys.argv)."""
    from hydra._internal.utils import _run_hydra, get_args_parser

    from sftcli.errors import ConfigError

    parser = get_args_parser()
    try:
        _run_hydra(args=parser.parse_args(args), args_parser=parser, task_function=jobs,
                   config_path=str(config_dir()), config_name=command)
    except ValueError as exc:  # Hydra's check of its own flags (--cfg with -m, --resolve alone)
        raise ConfigError(f"{exc}") from None


class App:
    """Hydra set up for one command: its config search path, and the config composed from overrides."""

    def __init__(self, command: str) -> None:
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import create_config_search_path

        import sftcli.config  # noqa: F401  (registers the schema's base configs with Hydra)

        self.command = command
        # The job name is the command (hydra.job.name), as `sft-train` / `sft-eval` apps.
        self.hydra = Hydra.create_main_hydra2(task_name=command,
                                              config_search_path=create_config_search_path(str(config_dir())))

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()

    def compose(self, overrides: list[str], multirun: bool, configure_logging: bool = True) -> Any:
        """The command's config composed once with the overrides, Hydra's section included (its run or sweep
        dir resolvable). Hydra's logging is configured from it, as Hydra's own run does (configure_logging)."""
        from hydra.types import RunMode

        from sftcli.precheck import composing

        mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        # As Hydra's own entry does: the mode is one of Hydra's overrides, so that the launcher's composition
        # of each job (from the sweep's Hydra overrides) keeps it, and .hydra/hydra.yaml records it.
        given = any(o.lstrip("+~").startswith("hydra.mode=") for o in overrides)
        with composing(self.command, overrides):
            return self.hydra.compose_config(
                config_name=self.command, overrides=[*overrides, *([] if given else [f"hydra.mode={mode.name}"])],
                run_mode=mode, with_log_configuration=configure_logging)

    def run(self, cfg: Any, jobs: Jobs) -> None:
        """One job in the run dir (hydra.run.dir), as `Hydra.run` runs it: Hydra's callbacks, its .hydra/
        record, logging and output_dir."""
        from hydra._internal.callbacks import Callbacks
        from hydra.core.utils import run_job
        from hydra.types import HydraContext

        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name=self.command)
        ret = run_job(hydra_context=HydraContext(config_loader=self.hydra.config_loader, callbacks=callbacks),
                      task_function=jobs, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                      configure_logging=True)
        callbacks.on_run_end(config=cfg, config_name=self.command, job_return=ret)
        _ = ret.return_value  # re-raises what the job raised

    def sweep(self, cfg: Any, jobs: Jobs) -> None:
        """The sweep's jobs through the configured sweeper and launcher, as `Hydra.multirun` runs them."""
        from hydra._internal.callbacks import Callbacks
        from hydra.core.plugins import Plugins
        from hydra.types import HydraContext
        from omegaconf import OmegaConf, read_write

        from hydra_plugins.sft_sweeper import HYDRA_BASIC, register

        if cfg.hydra.sweeper.get("_target_") == HYDRA_BASIC:
            # Hydra's default sweeper, as sft runs it: each job composed once (hydra_plugins/sft_sweeper).
            register()
            with read_write(cfg.hydra.sweeper):
                cfg.hydra.sweeper._target_ = "hydra_plugins.sft_sweeper.Sweeper"
        callbacks = Callbacks(cfg)
        callbacks.on_multirun_start(config=cfg, config_name=self.command)
        sweeper = Plugins.instance().instantiate_sweeper(
            config=cfg, hydra_context=HydraContext(config_loader=self.hydra.config_loader, callbacks=callbacks),
            task_function=jobs)
        task_overrides = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
        assert isinstance(task_overrides, list)
        sweeper.sweep(arguments=task_overrides)
        callbacks.on_multirun_end(config=cfg, config_name=self.command)
