"""The run's objectives, made from the registry: each entry's module builds its objective, or leaves it
out of the run (a weight of 0, or a term on the pile in a run without one)."""

from __future__ import annotations

from sftcli.objectives.base import BuildContext, Objective
from sftcli.objectives.registry import OBJECTIVES


def build_objectives(ctx: BuildContext) -> list[Objective]:
    """The objectives in the order their terms are summed (the registry's). A term left out costs nothing:
    no frozen-encoder cache, no extra forward."""
    return [objective for entry in OBJECTIVES if (objective := entry.build(ctx)) is not None]
