"""Checkpoints: atomic save, manifest, verification, retention, and finding what to resume from.

A checkpoint is committed in this order: files written into a temporary directory on the same
filesystem and fsynced; `manifest.json` (every file's size and sha256) written last and fsynced; the
directory renamed to `step-NNNNNN`; the parent directory fsynced. A directory without a valid manifest
is not a checkpoint: a save killed at any point leaves the previous checkpoint as the newest valid one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftcli import faults
from sftcli.errors import CheckpointError, first_line

log = logging.getLogger("sft")

MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.pt"
# Step, config, best-so-far and fingerprints: what `sft eval` / `sft predict` read, in every checkpoint.
SFT_STATE = "sft_state.json"
RNG_PREFIX = "rng_state_rank"
NAME_RE = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def save(root: Path, step: int, write: Callable[[Path], None], meta: dict[str, Any]) -> Path:
    """Commit a checkpoint for `step` under `root`: write(tmp_dir) fills it, then manifest, rename."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{TMP_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        faults.disk_full_at_save(step)
        write(tmp)
        files = {}
        for i, path in enumerate(sorted(p for p in tmp.rglob("*") if p.is_file())):
            _fsync_file(path)
            files[path.relative_to(tmp).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
            if i == 0:
                faults.save_pause("files", step)
        faults.save_pause("manifest", step)
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files, **meta}
        mpath = tmp / MANIFEST
        with mpath.open("w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except Exception as exc:
        # The half-written directory goes (it would hold the space a full disk needs); the committed
        # checkpoints were never touched, so resume=auto continues from the newest once there is room.
        shutil.rmtree(tmp, ignore_errors=True)
        # Write failures (OSError; torch.save's RuntimeError; safetensors' own error type) become one
        # message naming the checkpoint; anything else is a bug and keeps its traceback.
        if not isinstance(exc, OSError | RuntimeError) and type(exc).__name__ != "SafetensorError":
            raise
        reason = (f"the disk is full ({_megabytes(faults.disk_free(root))} free)" if _disk_full(exc)
                  else first_line(exc))
        raise CheckpointError(f"cannot save checkpoint {final}: {reason}; the checkpoints already in {root} are "
                              "intact: fix that (free space, or keep fewer with trainer.keep_last), then continue "
                              "with resume=auto") from exc
    faults.save_pause("rename", step)
    if final.exists():  # a checkpoint for this step already exists (e.g. re-saved after resume): replace it
        old = root / f"{TMP_PREFIX}old-{checkpoint_name(step)}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    return final


def _disk_full(exc: BaseException) -> bool:
    """Whether a failed write ran out of space: ENOSPC/EDQUOT from Python, or the same error inside the
    text safetensors wraps it in ("os error 28")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(marker in str(exc) for marker in ("No space left on device", "os error 28", "Disk quota exceeded"))


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def check_free_space(directory: Path, needed: int) -> None:
    """Fail before training, naming the directory, when its disk cannot hold one more checkpoint."""
    existing = next((d for d in (directory, *directory.parents) if d.exists()), Path("."))
    free = faults.disk_free(existing)
    if free < needed:
        raise CheckpointError(f"{directory}: {_megabytes(free)} free on its disk, but a checkpoint of this run "
                              f"needs about {_megabytes(needed)}; free space or choose another run_root")


def read_manifest(path: Path) -> dict[str, Any]:
    from sftcli.runfiles import Manifest, read_checked

    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path} is not a valid checkpoint: {MANIFEST} is missing (incomplete save?)")
    return read_checked(mpath, Manifest)  # the shape: every entry a size and a sha256


def verify(path: Path, full: bool = True) -> dict[str, Any]:
    """Check every file against the manifest (size, and sha256 when `full`); the error names the file."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    manifest = read_manifest(path)
    for name, entry in manifest["files"].items():
        fpath = path / name
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint {path} is damaged: {fpath} is missing")
        size = fpath.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"checkpoint {path} is damaged: {fpath} has {size} bytes, "
                                  f"the manifest says {entry['size']}")
        if full and _sha256(fpath) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path} is damaged: {fpath} does not match its sha256 in the manifest")
    return manifest


def listed(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of directories named like checkpoints, oldest first (not verified)."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = NAME_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def newest_valid(root: Path) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are skipped with a warning."""
    for _, path in reversed(listed(root)):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
    return None


def clean_temporary(root: Path) -> list[Path]:
    """Remove leftovers of interrupted saves (they never count as checkpoints)."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def apply_retention(root: Path, keep_last: int, protect: set[Path]) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints, never one in `protect` (best, resumed-from)."""
    items = listed(root)
    newest = items[-keep_last:] if keep_last > 0 else []
    keep = {p.resolve() for _, p in newest} | {p.resolve() for p in protect if p is not None}
    removed = []
    for _, p in items:
        if p.resolve() not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------------
# Training state: only the newest checkpoints keep it
#
# A checkpoint's training state (optimizer moments, scheduler, data positions, per-rank RNG: about twice
# the weights) serves only exact resume, which needs the newest valid checkpoint. Once a newer one is
# committed, older ones keep their weights, tokenizer and sft_state.json: evaluable, loadable, exportable,
# but not resumable. The manifest is rewritten first (atomically), then the files go: a kill in between
# leaves a valid, weights-only checkpoint with stray files that no manifest lists.


def _is_training_file(name: str) -> bool:
    return name == TRAIN_STATE or (name.startswith(RNG_PREFIX) and name.endswith(".pt"))


def is_resumable(manifest: dict[str, Any]) -> bool:
    """Whether a checkpoint (its manifest) holds the training state that exact resume needs."""
    return TRAIN_STATE in manifest["files"]


def drop_training_state(path: Path) -> None:
    """Turn a committed checkpoint into a weights-only one (see above)."""
    manifest = read_manifest(path)
    names = [name for name in manifest["files"] if _is_training_file(name)]
    if not names:
        return
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k not in names}
    manifest["resumable"] = False
    tmp = path / f"{MANIFEST}.tmp"
    with tmp.open("w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / MANIFEST)
    _fsync_dir(path)
    for name in names:
        (path / name).unlink(missing_ok=True)


def keep_training_state(root: Path, step: int, keep: int) -> None:
    """Right after committing the checkpoint of `step`: drop the training state of the older ones but
    the newest `keep - 1`. (Newer ones exist only when a run was resumed from an older checkpoint; they
    are left for its saves to replace.)"""
    older = [path for s, path in listed(root) if s < step]
    for path in older[:len(older) - (keep - 1)]:
        try:
            drop_training_state(path)
        except CheckpointError as exc:  # a damaged older checkpoint: nothing to resume from it anyway
            log.debug("training state of %s left as is: %s", path, exc)


def newest_resumable(root: Path) -> Path | None:
    """The newest checkpoint that verifies and holds training state; damaged newer ones are skipped with
    a warning. None when there is no checkpoint at all; a CheckpointError when the valid ones hold weights
    only, saying why."""
    weights_only = []
    for _, path in reversed(listed(root)):
        try:
            manifest = verify(path)
        except CheckpointError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
            continue
        if is_resumable(manifest):
            return path
        weights_only.append(path.name)
    if weights_only:
        raise CheckpointError(
            f"no checkpoint in {root} holds training state for exact resume: {', '.join(weights_only)} hold "
            "weights only (trainer.save_only_model=true, or their training state was dropped when a newer "
            "checkpoint was saved; trainer.keep_train_state=2 keeps one more). Start the run afresh, or train "
            "from those weights with model=hf model.name_or_path=CHECKPOINT")
    return None


def read_sft_state(path: Path) -> dict[str, Any]:
    """A checkpoint's step, training config (plain dict) and best-so-far, for `sft eval` / `sft predict`."""
    from sftcli.runfiles import SftState, read_checked

    file = path / SFT_STATE
    if file.is_file():
        return read_checked(file, SftState)
    if (path / TRAIN_STATE).is_file():  # checkpoints written before sft_state.json existed
        state = load_state(path / TRAIN_STATE)
        try:
            return {"step": int(state["step"]), "config": json.loads(state["config"])}
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path / TRAIN_STATE} is damaged: no step and config in it ({exc})") from None
    raise CheckpointError(f"{path} is not an sft checkpoint: {SFT_STATE} is missing")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint dir as given, or a run dir's best checkpoint (from summary.json, else newest valid);
    a run's exported model/ stands for its run dir."""
    if (path / MANIFEST).exists() or NAME_RE.match(path.name):
        return path
    if path.name == "model" and (path.parent / "summary.json").is_file():
        path = path.parent
    summary = path / "summary.json"
    if summary.is_file():
        from sftcli.runfiles import Summary, read_record

        data = read_record(summary, Summary)
        best = data.best_checkpoint or data.last_checkpoint
        if best:
            target = path / best
            if not target.is_dir():
                raise CheckpointError(f"{summary} names the checkpoint {best}, which is not in {path}")
            return target
    newest = newest_valid(path / "checkpoints")
    if newest is None:
        raise CheckpointError(f"{path} holds no valid checkpoint (expected a checkpoint or a run directory)")
    return newest


def probe_writable(directory: Path) -> None:
    """Fail early, naming the path, when a run directory cannot be written (read-only, full disk)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        with probe.open("wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(f"cannot write to {directory}: {exc.strerror or exc}") from exc


def load_weights(path: Path) -> dict[str, Any]:
    """The model tensors of a checkpoint directory, from its safetensors file(s)."""
    from safetensors.torch import load_file

    weights: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        try:
            weights.update(load_file(str(f)))
        except Exception as exc:  # safetensors' own error type, or an OSError: the file is not loadable
            raise CheckpointError(f"{f} is damaged: not a loadable safetensors file ({first_line(exc)})") from None
    if not weights:
        raise CheckpointError(f"{path} holds no weights (no *.safetensors file)")
    return weights



def load_state(file: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only. A file that needs arbitrary
    code to unpickle (a malicious or foreign pickle) is refused before anything in it runs."""
    import pickle

    import torch

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to load {file}: it is not a plain training-state file "
                              f"(loaded with weights_only=True): {first_line(exc)}") from exc
    except Exception as exc:  # torch's loader fails on damaged bytes with whatever error it meets first
        raise CheckpointError(f"{file} is damaged: it does not load as a training-state file "
                              f"({type(exc).__name__}: {first_line(exc)})") from exc
