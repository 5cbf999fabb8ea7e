"""sft's subclasses of Hydra's submitit launchers (in _launcher.py, which Hydra's plugin scan skips: the
sft CLI imports and registers them only when a sweep picks hydra/launcher=submitit_local|submitit_slurm,
so sft runs without the optional plugin never import it)."""
