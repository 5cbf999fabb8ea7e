"""How a config key is declared: its type helpers (text that accepts numbers, a list of trackers), its
default, meaning and limits (`key`), the base of every group of keys (`Group`: strict, no unknown key,
no nan or inf, no integer beyond INT_MAX), and the cross-field checks that report every problem at once.
sftcli/config/schema.py and the objectives' keys (sftcli/objectives/*_keys.py) declare the keys with these.
Outside the config package, so that the registry of objectives can read it without loading the schema."""

from __future__ import annotations

import difflib
from pathlib import Path, PurePath
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def _number_as_text(value: Any) -> Any:
    # A number is text as typed; so is a path given by code that builds a config (scripts, tests).
    if isinstance(value, (int, float, PurePath)) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_number_as_text)]

# The experiment trackers trainer.report_to can name (sftcli/trackers/, one module each).
TRACKERS = ("tensorboard", "mlflow", "wandb")


def _one_or_list(value: Any) -> Any:
    # trainer.report_to=mlflow is one tracker, as trainer.report_to=[mlflow]; null is none.
    if value is None:
        return []
    return [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value


TrackerNames = Annotated[list[Text], BeforeValidator(_one_or_list)]


def key(default: Any, meaning: str, *, note: str | None = None, **limits: Any) -> Any:
    """A config key: its default, its one-line meaning and its limits (ge=, gt=, le=, lt=). `note` is
    added to a limit's error message (what the boundary value means: "0 = never")."""
    return Field(default, description=meaning, json_schema_extra={"note": note} if note else None, **limits)


def required(meaning: str, **limits: Any) -> Any:
    """A key without a usable default: the command line must give it (limits as for `key`)."""
    return Field(description=meaning, **limits)


def group(cls: type, meaning: str) -> Any:
    return Field(default_factory=cls, description=meaning)


class Checks:
    """Problems found by a model's cross-field checks, raised together as one pydantic error whose
    context lists (dotted key, message) pairs; sftcli/config/parse.py turns them into lines."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def require(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            self.problems.append((key, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise PydanticCustomError("sft_checks", "{problems}", {"problems": self.problems})


# No count sft reads goes past this (torch and numpy index with 32-bit ints in places): a larger number is
# a typo, refused at validation rather than met as an overflow or an allocation deep inside a run.
INT_MAX = 2**31 - 1


class Group(BaseModel):
    # Mutable (code sets cfg.trainer.malloc_tuning = False after a check), unknown keys refused; a float
    # key refuses nan and inf (each would only stop a run at its first step, or never update at all).
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _int_in_range(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
            raise PydanticCustomError("int_too_large", "must be at most {limit} in size", {"limit": INT_MAX})
        return value


def saved_config(info: ValidationInfo) -> bool:
    """A config read back from a run (checkpoint, worker): its command line was checked when it ran, and
    what lies outside the config (the resume path) may have changed since."""
    return bool(info.context and info.context.get("saved"))


def check_exists(checks: Checks, key: str, path: str) -> None:
    """key names a path that must exist (an unreadable or over-long name is said as such)."""
    try:
        Path(path).expanduser().stat()
    except FileNotFoundError:
        checks.require(False, key, f"path {path!r} does not exist")
    except OSError as exc:
        checks.require(False, key, f"path {path[:80]!r}: {exc.strerror or exc}")


def check_run_name(checks: Checks, name: str) -> None:
    # A run name becomes a directory under run_root; it must not climb out of it.
    bad = "/" in name or "\\" in name or name in ("", ".", "..") or name.startswith("~")
    checks.require(not bad, "run_name", f"{name!r} must be a plain directory name (no '/', '..' or '~')")


def check_trackers(checks: Checks, names: list[str]) -> list[str]:
    """trainer.report_to as the trackers to start, in order, each once: `none` alone means none (the
    Hugging Face Trainer's convention); an unknown name is refused with the allowed ones."""
    allowed = ", ".join([*TRACKERS, "none"])
    for name in names:
        if name not in TRACKERS and name != "none":
            hint = difflib.get_close_matches(name, [*TRACKERS, "none"], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            checks.require(False, "report_to", f"unknown tracker {name!r}{extra}; allowed: {allowed}")
    checks.require(names == ["none"] or "none" not in names, "report_to",
                   f"none means no tracker and cannot be combined with others: {names}")
    return list(dict.fromkeys(n for n in names if n != "none"))


class ObjectiveKeys(Group):
    """The loss.* keys of one objective, declared beside it (sftcli/objectives/*_keys.py) and assembled
    into the `loss` group by the registry (sftcli/objectives/registry.py). The hooks let a run's validation
    ask each objective instead of knowing its keys; each is called with the assembled `loss` group."""

    def check_keys(self, checks: Checks) -> None:
        """Checks among the loss group's own keys (all objectives' problems are reported together)."""

    def unlabeled_keys(self) -> list[str]:
        """The keys set to train on the unlabeled stream (an error without a strategy)."""
        return []

    def check_run(self, run: Any, checks: Checks) -> None:
        """Checks against the rest of the run's config (run: the TrainConfig)."""

    def drop_unlabeled(self, run: Any, notes: list[str]) -> None:
        """strategy.unlabeled=optional and no unlabeled texts: turn off what only the unlabeled stream
        feeds (notes: what the run's log should say was changed)."""
