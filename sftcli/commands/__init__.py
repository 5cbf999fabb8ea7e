"""The commands that use a trained model: `sft eval` (eval.py), `sft predict` (predict.py), `sft export`
(export.py) and `sft select` (select.py)."""

from sftcli.commands.eval import print_eval_table, run_eval
from sftcli.commands.predict import run_predict

__all__ = ["print_eval_table", "run_eval", "run_predict"]
