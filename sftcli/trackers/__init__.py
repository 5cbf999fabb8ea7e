"""Experiment trackers, the Hugging Face Trainer's way: `trainer.report_to` names them (tensorboard, mlflow,
wandb), rank 0 starts them, and every metrics event metrics.jsonl records goes to them too.

Modules: base (the Tracker protocol, the run facts, trackers.json), build (config -> started trackers, the
package check), and one module per tracker: tensorboard, mlflow, wandb.
"""

from sftcli.trackers.base import STATE_FILE, RunFacts, Tracker
from sftcli.trackers.build import Trackers, build_trackers, check_installed, tracker_names

__all__ = ["STATE_FILE", "RunFacts", "Tracker", "Trackers", "build_trackers", "check_installed", "tracker_names"]
