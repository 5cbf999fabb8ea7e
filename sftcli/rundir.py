"""Which directories a command may write into and remove: nothing it did not create, except a run it
continues with `resume=`.

Before Hydra makes a run (or sweep) directory, :func:`claim` records what is already there. A new run whose
directory exists and holds anything is refused then, before a byte is written. When a command is refused
later, :meth:`Claim.release` removes what this command made and nothing else: the run directory when this
command created it (its contents when it was there, empty, before), and the empty folders above it that
did not exist before.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sftcli.errors import ConfigError


def absolute(path: Path) -> Path:
    # Not resolve(): a symlinked runs root stays the path the user gave. normpath folds '..' so two
    # spellings of one path compare equal.
    return Path(os.path.normpath(Path.cwd() / Path(path).expanduser()))


def holds_anything(path: Path) -> bool:
    """Whether `path` is a directory with at least one entry (hidden ones count)."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


@dataclass
class Claim:
    """What existed, before this command ran, at and above the directory it is about to use."""

    planned: Path
    # The planned directory and those of its ancestors that existed before the command (absolute paths).
    existed: set[Path] = field(default_factory=set)
    # The planned directory was there before, and empty.
    was_empty: bool = False

    def created_by_us(self, path: Path) -> bool:
        return absolute(path) not in self.existed

    def release(self, run_dir: Path) -> None:
        """A refused command: remove what it made at and above `run_dir`, leave everything else as it was.

        run_dir differs from the planned path only where the name holds the start time (run_name's
        default), which names a directory that did not exist before."""
        run_dir = absolute(run_dir)
        if not run_dir.is_dir():
            return
        if not self.created_by_us(run_dir):
            if run_dir == self.planned and self.was_empty:
                # There before and empty: everything in it is this command's.
                for entry in list(run_dir.iterdir()):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            return  # otherwise a run this command continued: what it wrote belongs to that run
        shutil.rmtree(run_dir, ignore_errors=True)
        # The folders above it that this command made (mkdir -p), unless something else went into them.
        for folder in run_dir.parents:
            if not self.created_by_us(folder) or holds_anything(folder):
                break
            try:
                folder.rmdir()
            except OSError:
                break


def cache_root(cache_dir: str | None) -> Path:
    """Where the token and frozen-encoder caches go: cache_dir, else $SFT_CACHE_DIR, else ~/.cache/sft."""
    return Path(cache_dir or os.environ.get("SFT_CACHE_DIR") or Path.home() / ".cache" / "sft").expanduser()


def check_path(path: Path, keys: str) -> None:
    """A directory path sft can create: no part of it a file, no name longer than the filesystem allows.
    keys: the config keys that built the path, for the message."""
    path = absolute(path)
    existing = Path(path.anchor)
    for part in path.parts[1:]:  # from the root down: the deepest folder that exists decides the limits
        try:
            if not (existing / part).exists():
                break
        except OSError:  # a name too long to even look up
            break
        existing = existing / part
    if not existing.is_dir():
        raise ConfigError(f"{keys}: {existing} is a file, so {path} cannot be a directory")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(f"{keys}: the name {part[:40]!r}... has {len(os.fsencode(part))} bytes; the "
                              f"filesystem allows {name_max}")
    if len(os.fsencode(str(path))) >= path_max:
        raise ConfigError(f"{keys}: the path {str(path)[:60]!r}... is longer than the filesystem allows "
                          f"({path_max} bytes)")


def claim(run_dir: Path, *, continues: bool, what: str, keys: str, hint: str) -> Claim:
    """Record what is at and above `run_dir`; refuse a new run (continues=False) whose directory exists and
    holds anything, before anything is written. what: the directory's role ("run directory"); keys: the
    config keys that name it; hint: how to continue this run or pick another directory."""
    check_path(run_dir, keys)
    path = absolute(run_dir)
    if not continues and holds_anything(path):
        raise ConfigError(f"{what} {path} ({keys}) already exists and is not empty, and sft never writes into "
                          f"a directory it did not create; nothing was written. {hint}")
    existed = {p for p in (path, *path.parents) if p.exists()}
    return Claim(planned=path, existed=existed, was_empty=path.is_dir() and not holds_anything(path))
