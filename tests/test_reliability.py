"""shared/RELIABILITY.md sections A-E and G on one process: checkpoints, exact resume, preemption,
non-finite values, bad config, malicious state files."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_jsonl
from safetensors.torch import load_file

from sftcli import checkpoint as ckpt
from sftcli.errors import CheckpointError

# Mix strategy, dropout on (tiny BERT keeps 0.1), shuffling on, both streams active; every randomised or
# stateful term on: token masking of the unlabeled rows, and self-training with fresh students and
# soft targets (re-label at step 3, which also restarts the model, optimizer and lr schedule, so a resume
# at step 5 must restore the pseudo-labels and the student's state from the checkpoint).
RESUME_ARGS = [*TINY, "+strategy=mix", "lambda=0.5", "trainer.max_steps=8", "trainer.eval_every=4",
               "trainer.save_every=2", "trainer.keep_last=10", "loss.consistency_weight=0.5",
               "loss.consistency_threshold=0.0", "loss.unlabeled_mask_prob=0.2", "loss.self_training_weight=1",
               "loss.self_training_every=3", "loss.self_training_targets=soft",
               "loss.self_training_student=fresh", "loss.self_training_ensemble=true", "loss.projection=mlp"]


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / ckpt.checkpoint_name(step) / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def consumed(path: Path) -> list[tuple[int, str, list[int]]]:
    """(step, stream, ids) of every consumed global batch; a resumed run re-records from its step on."""
    by_key: dict[tuple[int, str], list[int]] = {}
    for rec in read_jsonl(path):
        by_key[(rec["step"], rec["stream"])] = rec["ids"]  # later records (after resume) supersede
    return [(s, k, v) for (s, k), v in sorted(by_key.items())]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """The uninterrupted run: (run dir, consumed-ids file)."""
    root = tmp_path_factory.mktemp("reference")
    ids = root / "ids.jsonl"
    env = {"OMP_NUM_THREADS": "1", **os.environ, "SFT_CACHE_DIR": str(cache_dir), "SFT_TEST_RECORD_IDS": str(ids)}
    subprocess.run([sys.executable, "-m", "sftcli", "train", *RESUME_ARGS, "run_name=ref"], cwd=root, env=env,
                   check=True, capture_output=True, timeout=300)
    return root / "runs" / "ref", ids


def test_sigterm_then_resume_is_bit_identical(sft, tmp_path, reference) -> None:
    ref_run, ref_ids = reference
    ids = tmp_path / "ids.jsonl"
    env = {"SFT_TEST_RECORD_IDS": str(ids), "SFT_TEST_SIGNAL_AT_STEP": "5"}
    first = sft("train", *RESUME_ARGS, "run_name=r", env=env)
    assert first.returncode == 75, first.stderr
    run = tmp_path / "runs" / "r"
    assert (run / "checkpoints" / "step-000005" / "manifest.json").is_file()
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    second = sft("train", *RESUME_ARGS, "run_name=r", "resume=auto", env={"SFT_TEST_RECORD_IDS": str(ids)})
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stderr
    assert_same_weights(weights(run, 8), weights(ref_run, 8))
    # No example skipped or repeated in either stream across the interruption.
    assert consumed(ids) == consumed(ref_ids)
    steps = [e["step"] for e in read_jsonl(run / "metrics.jsonl") if "train/loss" in e]
    assert steps == list(range(1, 9))


def test_resume_restores_the_projection_head(sft, tmp_path) -> None:
    # Without fresh students (whose re-label resets the head), so the head trained before the
    # interruption shapes every later step.
    args = [*TINY, "+strategy=mix", "lambda=0.5", "loss.projection=mlp"]
    assert sft("train", *args, "run_name=ref").returncode == 0
    first = sft("train", *args, "run_name=r", env={"SFT_TEST_SIGNAL_AT_STEP": "2"})
    assert first.returncode == 75, first.stderr
    second = sft("train", *args, "run_name=r", "resume=auto")
    assert second.returncode == 0, second.stderr
    ref, run = tmp_path / "runs" / "ref", tmp_path / "runs" / "r"
    assert_same_weights(weights(run, 4), weights(ref, 4))
    heads = [ckpt.load_state(r / "checkpoints" / ckpt.checkpoint_name(4) / ckpt.TRAIN_STATE)["objectives"]["con"]["projection"]
             for r in (run, ref)]
    assert_same_weights(*heads)


def test_resume_auto_finds_the_run_of_the_same_command(sft, tmp_path, reference) -> None:
    ref_run, _ = reference
    first = sft("train", *RESUME_ARGS, env={"SFT_TEST_SIGNAL_AT_STEP": "3"})
    assert first.returncode == 75
    second = sft("train", *RESUME_ARGS, "resume=auto")
    assert second.returncode == 0, second.stderr
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1  # the same run dir was continued, not a new one
    assert_same_weights(weights(runs[0], 8), weights(ref_run, 8))


@pytest.mark.parametrize("point", ["step", "files", "manifest", "rename"])
def test_sigkill_anywhere_then_resume_is_bit_identical(sft, tmp_path, reference, cache_dir, point) -> None:
    ref_run, _ = reference
    run = tmp_path / "runs" / "k"
    env = {"OMP_NUM_THREADS": "1", **os.environ, "SFT_CACHE_DIR": str(cache_dir)}
    marker = tmp_path / "paused"
    if point == "step":
        env["SFT_TEST_KILL_AT_STEP"] = "6"
    else:
        env |= {"SFT_TEST_SAVE_PAUSE": f"{point}:120:4", "SFT_TEST_SAVE_PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "sftcli", "train", *RESUME_ARGS, "run_name=k"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if point != "step":
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the save never reached the pause point"
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    if point != "step":
        assert ckpt.newest_valid(run / "checkpoints").name == "step-000002"  # step 4 was never committed
    resumed = sft("train", *RESUME_ARGS, "run_name=k", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    assert_same_weights(weights(run, 8), weights(ref_run, 8))


def test_damaged_checkpoints_are_detected(tmp_path) -> None:
    def writer(content: bytes):
        def write(d: Path) -> None:
            (d / "model.safetensors").write_bytes(content)
            (d / "train_state.pt").write_bytes(b"state")
        return write

    root = tmp_path / "checkpoints"
    good = ckpt.save(root, 2, writer(b"a" * 100), {})
    damaged = []
    for step, damage in ((4, "truncate"), (6, "flip"), (8, "missing")):
        path = ckpt.save(root, step, writer(b"b" * 100), {})
        target = path / "model.safetensors"
        if damage == "truncate":
            target.write_bytes(b"b" * 50)
        elif damage == "flip":
            target.write_bytes(b"b" * 99 + b"c")
        else:
            target.unlink()
        damaged.append(path)
    for path in damaged:
        with pytest.raises(CheckpointError, match="model.safetensors"):
            ckpt.verify(path)
    assert ckpt.newest_valid(root) == good  # falls back past all three


def test_explicit_resume_from_a_damaged_checkpoint_fails_naming_the_file(sft, tmp_path) -> None:
    # Two checkpoints with training state, so resume=auto has a previous one to fall back to.
    sft("train", *TINY, "trainer.keep_last=2", "trainer.keep_train_state=2", "run_name=d", check=True)
    target = tmp_path / "runs" / "d" / "checkpoints" / "step-000004"
    blob = target / "model.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = sft("train", *TINY, "trainer.max_steps=6", f"resume={target}", "run_name=d2")
    assert proc.returncode == 2
    assert "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    auto = sft("train", *TINY, "trainer.max_steps=6", "run_name=d", "resume=auto")
    assert auto.returncode == 0, auto.stderr
    assert "skipping damaged checkpoint" in auto.stderr and "resumed from" in auto.stderr
    assert "step-000002" in auto.stderr


def test_retention_keeps_last_n_and_the_best_and_the_resume_source(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    paths = {s: ckpt.save(root, s, lambda d: (d / "w").write_text("x"), {}) for s in (1, 2, 3, 4, 5)}
    (root / ".tmp-step-000006-123").mkdir()
    ckpt.clean_temporary(root)
    ckpt.apply_retention(root, keep_last=2, protect={paths[1], paths[3]})
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000003", "step-000004", "step-000005"]


def test_retention_in_a_run(sft, tmp_path) -> None:
    sft("train", *TINY, "trainer.max_steps=6", "trainer.save_every=1", "trainer.eval_every=1",
        "trainer.keep_last=1", "run_name=ret", check=True)
    run = tmp_path / "runs" / "ret"
    summary = json.loads((run / "summary.json").read_text())
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-000006" in names and Path(summary["best_checkpoint"]).name in names
    assert len(names) <= 2


def test_nan_in_the_contrastive_loss_stops_before_the_update(sft, tmp_path) -> None:
    proc = sft("train", *TINY, "+strategy=mix", "lambda=0.5", "run_name=nan",
               env={"SFT_TEST_NAN_AT_STEP": "3"})
    assert proc.returncode == 3
    assert "step 3" in proc.stderr and "loss_con" in proc.stderr and "Traceback" not in proc.stderr
    ckpts = ckpt.listed(tmp_path / "runs" / "nan" / "checkpoints")
    assert [s for s, _ in ckpts] == [2]
    assert all(torch.isfinite(t).all() for t in load_file(ckpts[0][1] / "model.safetensors").values())


def test_skip_policy_counts_and_is_bounded(sft, tmp_path) -> None:
    ok = sft("train", *TINY, "+strategy=mix", "lambda=0.5", "trainer.nonfinite=skip", "run_name=skip1",
             env={"SFT_TEST_NAN_AT_STEP": "3"})
    assert ok.returncode == 0, ok.stderr
    events = read_jsonl(tmp_path / "runs" / "skip1" / "metrics.jsonl")
    assert any(e.get("train/nonfinite_skips") == 1 for e in events)
    bounded = sft("train", *TINY, "+strategy=mix", "lambda=0.5", "trainer.nonfinite=skip",
                  "trainer.max_nonfinite_skips=2", "run_name=skip2", env={"SFT_TEST_NAN_AT_STEP": "2+"})
    assert bounded.returncode == 3
    assert "2 non-finite steps skipped" in bounded.stderr


def test_a_nonfinite_validation_metric_is_never_the_best() -> None:
    import numpy as np

    from sftcli.evaluate import metrics

    result = metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])
    assert result["accuracy"] == 1.0
    import sftcli.engine.loop as loop
    from sftcli.engine.loop import Engine

    t = Engine.__new__(Engine)
    t.best_metric, t.best_step, t.step = 0.5, 2, 4
    t.tc = type("T", (), {"select_metric": "val/accuracy", "eval_batch_size": 8, "precision": "fp32"})()
    t.precision = "fp32"
    t.metrics = type("M", (), {"write": lambda self, *a: None})()
    original = loop.evaluate
    loop.evaluate = lambda *a, **k: {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 2}
    try:
        t.enc_val = t.data = t.model = t.pad_id = t.env = t.average = None
        t.objectives = []
        t.data = type("D", (), {"validation": type("V", (), {"labels": None})(), "label_names": []})()
        t.env = type("E", (), {"device": "cpu"})()
        assert t._validate() is False
        assert t.best_metric == 0.5 and t.best_step == 2
    finally:
        loop.evaluate = original


@pytest.mark.parametrize("override,key", [
    ("trainer.max_stepz=3", "trainer.max_steps"),
    ("+optim.lrr=0.1", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("tau=-1", "tau"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.keep_last=-1", "trainer.keep_last"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio"),
    ("trainer.max_steps=ten", "trainer.max_steps"),
    ("model=tinyy", "model=tiny"),
    ("lambda=0.5", "lambda"),
    ("run_name=../../escape", "run_name"),
    ("loss.self_training_top_step=2", "loss.self_training_top_step"),
    ("loss.self_training_student=new", "loss.self_training_student"),
    ("trainer.sdpa_math_max_length=-1", "trainer.sdpa_math_max_length: must be >= 0 (0 = never)"),
    # A renamed key names its new name, from the command line and from a config added to the tree.
    ("loss.consistency_mask_prob=0.1", "renamed to 'loss.unlabeled_mask_prob'"),
    ("+loss.consistency_mask_prob=0.1", "renamed to 'loss.unlabeled_mask_prob'"),
    # A removed key says so and why, in either form.
    ("trainer.embedding_grad_rows=false", "trainer.embedding_grad_rows: removed: measured below 3% (docs/benchmark.md)"),
    ("+trainer.cpu_dropout=torch", "trainer.cpu_dropout: removed: measured below 3% (docs/benchmark.md)"),
    ("optim.fused_clipping=false", "optim.fused_clipping: removed: measured below 3% (docs/benchmark.md)"),
    # The recipe already picks the strategy.
    ("+recipe=self_training +strategy=alternate", "strategy=OPTION, without the +"),
    # A group that is added with a + (strategy, recipe) and was not: the + is named, not a spelling guess.
    ("strategy=mix", "write +strategy=mix"),
    ("strategy.name=mix", "write +strategy=mix"),
    ("recipe=self_training", "write +recipe=self_training"),
    ("strategy.labeled_steps=2", "add one first with +strategy=OPTION (options: alternate, mix)"),
])
def test_config_mistakes_exit_2_naming_the_key(sft, tmp_path, override, key) -> None:
    proc = sft("train", *TINY, *override.split())
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("metrics.jsonl"))  # nothing was trained
    assert not (tmp_path.parent / "escape").exists()


def test_a_saved_config_holding_a_removed_key_still_loads() -> None:
    # A checkpoint's config from before the removal (sft eval reads it): the key no longer changes anything.
    from sftcli.config import REMOVED_KEYS, TrainConfig, from_plain, to_plain

    saved = to_plain(TrainConfig())
    for key in REMOVED_KEYS:
        section, _, name = key.partition(".")
        saved[section][name] = True
    assert from_plain(saved) == TrainConfig()


def test_all_config_mistakes_reported_at_once(sft) -> None:
    proc = sft("train", *TINY, "optim.lr=-1", "trainer.batch_size=0", "+strategy=mix", "tau=0")
    assert proc.returncode == 2
    for key in ("optim.lr", "trainer.batch_size", "tau"):
        assert key in proc.stderr


def test_one_bad_job_in_a_multirun_fails_alone(sft, tmp_path) -> None:
    proc = sft("train", "-m", "optim.lr=1e-4,-1,2e-4", *TINY, "trainer.max_steps=2", "trainer.eval_every=0",
               "trainer.save_every=0", timeout=600)
    assert proc.returncode == 2
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "sweeps").rglob("summary.json")]
    assert sorted(s["status"] for s in summaries) == ["completed", "completed", "failed"]
    assert "optim.lr" in next(s["error"] for s in summaries if s["status"] == "failed")


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_training_state_is_refused(sft, tmp_path) -> None:
    sft("train", *TINY, "trainer.max_steps=2", "run_name=m", check=True)
    target = tmp_path / "runs" / "m" / "checkpoints" / "step-000002"
    marker = tmp_path / "pwned"
    with (target / "train_state.pt").open("wb") as fh:
        pickle.dump({"step": _Evil(str(marker))}, fh)
    # Re-seal the manifest so only the weights_only protection stands between the pickle and execution.
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"]["train_state.pt"] = {"size": (target / "train_state.pt").stat().st_size,
                                           "sha256": ckpt._sha256(target / "train_state.pt")}
    (target / "manifest.json").write_text(json.dumps(manifest))
    proc = sft("train", *TINY, f"resume={target}", "run_name=m2")
    assert proc.returncode == 2, proc.stderr
    assert "refusing to load" in proc.stderr and "train_state.pt" in proc.stderr
    # sft eval reads the checkpoint's JSON state and safetensors weights only: no pickle at all.
    assert sft("eval", f"checkpoint={target}").returncode == 0
    assert not marker.exists()


def test_resume_with_a_changed_config_shows_a_diff(sft, tmp_path) -> None:
    sft("train", *TINY, "run_name=c", check=True)
    target = tmp_path / "runs" / "c"
    proc = sft("train", *TINY, "trainer.max_steps=6", "seed=3", "trainer.batch_size=4", f"resume={target}",
               "run_name=c2")
    assert proc.returncode == 2
    assert "seed: checkpoint 0 != now 3" in proc.stderr and "trainer.batch_size" in proc.stderr
    allowed = sft("train", *TINY, "trainer.max_steps=6", "seed=3", f"resume={target}", "run_name=c3",
                  "allow_resume_mismatch=true")
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_a_checkpoint_written_before_new_keys_existed_resumes(sft, tmp_path) -> None:
    """A checkpoint of an earlier sft version lacks the keys added since: they count as their defaults,
    so it resumes while they are left alone, and a changed one is still named."""
    sft("train", *TINY, "run_name=old", check=True)
    target = tmp_path / "runs" / "old" / "checkpoints" / "step-000004"
    state = torch.load(target / "train_state.pt", weights_only=False)
    config = json.loads(state["config"])
    del config["loss"]["label_smoothing"], config["optim"]["layer_decay"]  # as written before they existed
    state["config"] = json.dumps(config)
    torch.save(state, target / "train_state.pt")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"]["train_state.pt"] = {"size": (target / "train_state.pt").stat().st_size,
                                           "sha256": ckpt._sha256(target / "train_state.pt")}
    (target / "manifest.json").write_text(json.dumps(manifest))
    resumed = sft("train", *TINY, "trainer.max_steps=6", f"resume={target}", "run_name=new")
    assert resumed.returncode == 0, resumed.stderr
    changed = sft("train", *TINY, "trainer.max_steps=6", "optim.layer_decay=0.8", f"resume={target}",
                  "run_name=new2")
    assert changed.returncode == 2
    assert "optim.layer_decay: checkpoint 1.0 != now 0.8" in changed.stderr


def test_read_only_run_root_fails_before_training(sft, tmp_path) -> None:
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file is unwritable for everyone
        blocker = tmp_path / "file"
        blocker.write_text("x")
        root = blocker / "runs"
    else:
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
    proc = sft("train", *TINY, f"run_root={root}")
    assert proc.returncode != 0
    assert str(root) in proc.stderr or "Not a directory" in proc.stderr


def test_a_disk_too_full_for_a_checkpoint_fails_before_training(sft, tmp_path) -> None:
    proc = sft("train", *TINY, "run_name=full", env={"SFT_TEST_DISK_FREE": str(2**20)})
    assert proc.returncode == 2, proc.stderr
    assert str(tmp_path / "runs" / "full") in proc.stderr and "1 MB free" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing was trained or saved.
    assert not [e for f in tmp_path.rglob("metrics.jsonl") for e in read_jsonl(f) if "train/loss" in e]
    assert not list(tmp_path.rglob("step-*"))


@pytest.mark.slow  # about 20 s: CI runs it after the default suite
def test_a_disk_that_fills_during_a_save_loses_nothing(sft, tmp_path) -> None:
    proc = sft("train", *TINY, "run_name=r", env={"SFT_TEST_DISK_FULL_AT_SAVE": "4"})
    assert proc.returncode == 2, proc.stderr
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    assert f"cannot save checkpoint {ckpts / 'step-000004'}: the disk is full" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The half-written save is gone and the earlier checkpoint is whole, so the run continues from it.
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002"]
    assert ckpt.verify(ckpts / "step-000002")
    again = sft("train", *TINY, "run_name=r", "resume=auto")
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and ckpt.verify(ckpts / "step-000004")
