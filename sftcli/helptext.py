"""`sft COMMAND --help`: every command's keys with their one-line meanings, from the single sources.

A key's meaning is its `description` in the typed schema (sftcli/config/schema.py), for every command;
`sft train` and `sft eval` show it next to the value Hydra composes for the command line given. The YAML
files' opening comments describe the group options. Nothing here imports torch or transformers, so help
answers at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcli.catalog import COMMANDS, EXAMPLES, config_dir, config_groups

# Groups that a command adds with +GROUP=OPTION (they are not in its defaults list), and what their
# absence means.
ADDED_GROUPS: dict[str, dict[str, str]] = {
    "train": {"strategy": "none, the supervised baseline", "recipe": "none"},
    "eval": {},
}
HYDRA_FLAGS_HELP = ("Hydra's flags: --cfg job (print the composed config), --info, --hydra-help, "
                    "-m/--multirun (sweeps), --shell-completion")


@dataclass
class YamlDoc:
    """What one config file says about itself: its opening comment, `@package`, defaults and key comments."""

    header: str = ""
    package: str | None = None
    defaults: dict[str, tuple[str, str]] = field(default_factory=dict)  # group -> (option, comment)
    comments: dict[str, str] = field(default_factory=dict)  # dotted key (inside the file's package) -> comment

    @property
    def summary(self) -> str:
        """The opening comment without its "Used by: ..." sentence, cut after its first sentence."""
        text = re.sub(r"^Used by:.*?\.(\s+|$)", "", self.header)
        return re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(".;") if text else ""


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
_DEFAULT = re.compile(r"^\s*-\s*(?:override\s+)?/?(?P<group>[\w/]+)\s*:\s*(?P<option>[^\s#]*)(?P<rest>.*)$")


def split_comment(text: str) -> tuple[str, str]:
    """(value, comment) of the rest of a YAML line: a '#' starts a comment at the line's start or after a
    space, outside quotes (`${now:%Y%m%d}` and 'a # b' are values)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def read_yaml_doc(path: Path) -> YamlDoc:
    """Read a config file's comments line by line (a YAML loader drops them). Nested mappings give dotted
    keys; block scalars and flow collections are not used in configs/ and are not needed here."""
    doc = YamlDoc()
    header: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings around the current line
    in_header = True
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text.startswith("@package"):
                doc.package = text.split(None, 1)[1] if " " in text else None
            elif in_header and text:
                header.append(text)
            continue
        in_header = False
        m = _DEFAULT.match(line)
        if m and stack and stack[-1][1] == "defaults":
            doc.defaults[m["group"]] = (m["option"], split_comment(m["rest"])[1])
            continue
        m = _KEY.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m["key"]])
        comment = split_comment(m["rest"])[1]
        if comment:
            doc.comments[key] = comment
        stack.append((indent, m["key"]))
    doc.header = " ".join(header)
    return doc


def _option_docs() -> dict[str, dict[str, YamlDoc]]:
    root = config_dir()
    return {group: {option: read_yaml_doc(root / group / f"{option}.yaml") for option in options}
            for group, options in config_groups().items()}


def key_comments(command: str, choices: dict[str, Any] | None = None) -> dict[str, str]:
    """{dotted key: one-line meaning} of a Hydra command's keys, from the schema. `choices` (the command
    line's group options) change nothing: a key means the same whichever option sets its value, and a
    preset's own comment on why it picks a value (a recipe's) stays in its file."""
    from sftcli.config.schema import COMMAND_SCHEMAS
    from sftcli.config.store import key_descriptions

    return key_descriptions(COMMAND_SCHEMAS[command])


def compose(command: str, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the composed config without interpolating, the chosen group options) for a command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name=command):
        cfg = hydra_compose(config_name=command, overrides=overrides, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict) and isinstance(choices, dict)
    data.pop("hydra", None)
    return data, {k: v for k, v in choices.items() if not k.startswith("hydra/")}


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted keys and values; top-level keys before the groups' (seed and lambda are read first)."""
    flat = [(f"{prefix}{k}", v) for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            flat += _leaves(v, f"{prefix}{k}.")
    return flat


def show_value(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    return str(value)


def columns(rows: list[tuple[str, str]], indent: int = 2, cap: int = 40) -> list[str]:
    width = min(cap, max((len(a) for a, _ in rows), default=0))
    return [f"{' ' * indent}{a:<{width}}  {b}".rstrip() for a, b in rows]


def hydra_command_help(command: str, overrides: list[str]) -> str:
    """The help page of `sft train` / `sft eval` for this command line (its group choices and values)."""
    data, choices = compose(command, overrides)
    primary = read_yaml_doc(config_dir() / f"{command}.yaml")
    added = ADDED_GROUPS.get(command, {})
    # The command's groups: its defaults list (Hydra's own hydra/... entries aside) and the added ones.
    defaults = {g: entry for g, entry in primary.defaults.items() if "/" not in g}
    docs = _option_docs()
    lines = [f"usage: sft {command} [GROUP=OPTION ...]" + "".join(f" [+{g}=OPTION]" for g in added)
             + " [KEY=VALUE ...] [-m]", "", COMMANDS[command], "", "config groups: GROUP=OPTION picks an option"
             + (f"; {' and '.join(added)} {'are' if len(added) > 1 else 'is'} added with +GROUP=OPTION" if added else "")]
    for group in [*defaults, *(g for g in added if g not in defaults)]:
        if group in defaults:
            option, comment = defaults[group]
            default = option if option != "null" else comment or "none"
        else:
            option, default = "", added[group]
        chosen = choices.get(group)
        picked = f"; chosen: {chosen}" if chosen is not None and chosen != option else ""
        lines.append(f"  {group}: {', '.join(docs.get(group, {}))}  (default: {default}{picked})")
        lines += columns([(name, doc.summary) for name, doc in docs.get(group, {}).items()], indent=6)
    comments = key_comments(command, choices)
    lines += ["", "keys: KEY=VALUE overrides a key (values as composed for this command line; an option's own "
                  f"keys show with it, e.g. sft {command} data=files --help)"]
    # `???` is Hydra's mark of a key without a default: the command line must give it.
    lines += columns([(f"{key}={show_value(value)}", ("required: " if value == "???" else "") + comments.get(key, ""))
                      for key, value in _leaves(data)])
    lines += ["", "examples:", *columns(EXAMPLES[command]), "", HYDRA_FLAGS_HELP,
              "SFT_DEBUG=1 (or debug=true) shows tracebacks."]
    return "\n".join(lines)


def predict_help() -> str:
    """The help page of `sft predict`, from PredictConfig's fields (their defaults and meanings)."""
    from sftcli.config import PredictConfig

    usage = "usage: sft predict checkpoint=PATH input=FILE output=FILE [KEY=VALUE ...]"
    return _plain_command_help("predict", PredictConfig, usage)


def export_help() -> str:
    """The help page of `sft export`, from ExportConfig's fields."""
    from sftcli.config import ExportConfig

    usage = "usage: sft export RUN format=onnx [quantize=int8] [KEY=VALUE ...]   (RUN: or checkpoint=RUN)"
    return _plain_command_help("export", ExportConfig, usage)


def _plain_command_help(command: str, schema: Any, usage: str) -> str:
    from sftcli.config import type_text
    from sftcli.config.store import field_help

    fields = field_help(schema)
    required = [f for f in fields if f[4]]
    optional = [f for f in fields if not f[4]]
    lines = [usage, "", COMMANDS[command], "", "keys (required):"]
    lines += columns([(f"{name}=", meaning) for name, _, _, meaning, _ in required])
    lines += ["", "keys (optional, with their defaults):"]
    lines += columns([(f"{name}={show_value(default)}", f"{meaning} ({type_text(tp)})")
                    for name, tp, default, meaning, _ in optional])
    lines += ["", "examples:", *columns(EXAMPLES[command])]
    return "\n".join(lines)


def select_help() -> str:
    """The help page of `sft select`, from SelectConfig's fields."""
    from sftcli.config import SelectConfig

    usage = "usage: sft select checkpoint=RUN n=N output=FILE [pool=FILE] [strategy=diverse] [KEY=VALUE ...]"
    return _plain_command_help("select", SelectConfig, usage)
