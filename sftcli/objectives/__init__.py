"""The training terms, one module each (an Objective and its `build(ctx)`), their keys beside them
(`*_keys.py`, light: the config and `--help` read them without torch), and the registry that lists them
(registry.py). Adding an objective touches this package alone; see registry.py.
"""
