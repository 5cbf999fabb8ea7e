"""sft's sweeper: Hydra's basic sweeper (the default of `sft train -m`), with its early check of the jobs
done without composing them.

Hydra's basic sweeper composes every job's config once to check it before any job runs, and the launcher
composes it again to run it. sft composes the sweep once and each job once (sftcli/hydra_app.py). What a
job's composition can fail on that the sweep's own composition has not already checked is a swept config
group's option (`model=tiny,nope`): that is what the check here looks at, before any job runs, with the
message a single run gives. The sweeps, batches and launchers are the basic sweeper's.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

# The sweeper Hydra configures by default, which sft runs as this class.
HYDRA_BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class Sweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from sftcli.precheck import check_group_options

        for overrides in batch:
            check_group_options(list(overrides))


def register() -> None:
    """Make the sweeper instantiable by Hydra (plugins must live in hydra_plugins and be registered)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(Sweeper)
