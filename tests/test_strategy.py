from sftcli.config import StrategyConfig
from sftcli.strategy import CONTRASTIVE, MIX, SUPERVISED, step_kind


def test_no_strategy_is_supervised_only() -> None:
    assert [step_kind(None, s) for s in range(4)] == [SUPERVISED] * 4


def test_alternate_interleaves_labeled_and_unlabeled_steps() -> None:
    strat = StrategyConfig(name="alternate", labeled_steps=1)
    assert [step_kind(strat, s) for s in range(6)] == [SUPERVISED, CONTRASTIVE] * 3


def test_alternate_ratio() -> None:
    strat = StrategyConfig(name="alternate", labeled_steps=2)
    assert [step_kind(strat, s) for s in range(6)] == [SUPERVISED, SUPERVISED, CONTRASTIVE] * 2


def test_mix_uses_both_every_step() -> None:
    strat = StrategyConfig(name="mix")
    assert {step_kind(strat, s) for s in range(5)} == {MIX}
