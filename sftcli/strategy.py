"""Strategies: which batches an optimizer step gets."""

from __future__ import annotations

from sftcli.config import StrategyConfig

SUPERVISED, CONTRASTIVE, MIX = "sup", "con", "mix"


def step_kind(strategy: StrategyConfig | None, step: int) -> str:
    """The kind of step `step` (0-based): sup (labeled only), con (unlabeled only) or mix (both).

    No strategy: every step is supervised. alternate: `labeled_steps` labeled steps, then one unlabeled
    step, repeating. mix: every step draws both batches.
    """
    if strategy is None:
        return SUPERVISED
    if strategy.name == "mix":
        return MIX
    period = strategy.labeled_steps + 1
    return CONTRASTIVE if step % period == strategy.labeled_steps else SUPERVISED


def uses_unlabeled(strategy: StrategyConfig | None) -> bool:
    return strategy is not None


def steps_for_labeled(strategy: StrategyConfig | None, labeled_steps: int) -> int:
    """How many steps it takes until `labeled_steps` of them have drawn a labeled batch: as many with no
    strategy or mix; with alternate, the unlabeled steps in between too (ending on a labeled step)."""
    if strategy is None or strategy.name == "mix":
        return labeled_steps
    per = strategy.labeled_steps  # labeled steps before each unlabeled one
    return (labeled_steps - 1) // per * (per + 1) + (labeled_steps - 1) % per + 1
