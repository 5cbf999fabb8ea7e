"""The typed config of every command: one definition of each key (sftcli/config/schema.py), Hydra's base
configs generated from it (store.py), and the parsing that turns a composed config into typed objects or
one ConfigError listing every problem (parse.py). Everything after this package works with the objects."""

from sftcli.config.parse import (
    REMOVED_KEYS,
    RENAMED_KEYS,
    from_plain,
    parse_eval,
    parse_export,
    parse_predict,
    parse_select,
    parse_train,
    to_plain,
    to_record,
    type_text,
    unknown_key_message,
)
from sftcli.config.schema import (
    ALIASES,
    DataConfig,
    EvalConfig,
    ExportConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PredictConfig,
    SelectConfig,
    StrategyConfig,
    TrainConfig,
    TrainerConfig,
)
from sftcli.config.store import register

# Every compose (the CLI, its help, tests) imports this package first: Hydra then knows every key.
register()

__all__ = ["ALIASES", "REMOVED_KEYS", "RENAMED_KEYS", "DataConfig", "EvalConfig", "ExportConfig", "LossConfig", "ModelConfig", "OptimConfig",
           "PredictConfig", "SelectConfig", "StrategyConfig", "TrainConfig", "TrainerConfig", "from_plain", "parse_eval", "parse_export",
           "parse_predict", "parse_select", "parse_train", "register", "to_plain", "to_record", "type_text", "unknown_key_message"]
