"""Each bad input that once ended in a traceback, a lost file or an accepted bad value (RELIABILITY.md E, H):
now exit 2 with a message naming the key, file or row, and nothing left behind or changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import FAST, data_args
from generated import check_promise, snapshot

from sftcli.checkpoint import MANIFEST


class Case:
    """A workspace with the reference run copied in (when asked), for one command line."""

    def __init__(self, root: Path, reference: Path | None = None) -> None:
        self.path = root
        if reference is not None:
            shutil.copytree(reference, root / "runs" / "ref")
        self.run = root / "runs" / "ref"
        self.ckpt = self.run / "checkpoints" / "step-000002"

    def damage(self, name: str, content: bytes | str, fix_manifest: bool = True) -> Path:
        """Replace a file of the run; fix_manifest: its manifest entry follows, so only the loaders can tell."""
        target = self.run / name
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        manifest = target.parent / MANIFEST
        if fix_manifest and manifest.is_file() and target.name != MANIFEST:
            data = json.loads(manifest.read_text())
            blob = target.read_bytes()
            data["files"][target.name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
            manifest.write_text(json.dumps(data))
        return target

    def edit_json(self, name: str, change) -> Path:
        data = json.loads((self.run / name).read_text())
        change(data)
        return self.damage(name, json.dumps(data))


def _remove_tokenizer(case: Case) -> None:
    """The tokenizer's vocabulary files gone, and the manifest listing only what is left."""
    for name in ("tokenizer.json", "vocab.txt"):
        (case.ckpt / name).unlink(missing_ok=True)
    data = json.loads((case.ckpt / MANIFEST).read_text())
    data["files"] = {k: v for k, v in data["files"].items() if (case.ckpt / k).exists()}
    (case.ckpt / MANIFEST).write_text(json.dumps(data))


# (what is damaged, how) -> the names an exit-2 message must hold one of
DAMAGED = {
    "weights garbage": (lambda c: c.damage("checkpoints/step-000002/model.safetensors", b"\x00garbage" * 40),
                        ["model.safetensors", "step-000002"]),
    "hidden_size a string": (lambda c: c.edit_json("checkpoints/step-000002/config.json",
                                                   lambda d: d.update(hidden_size="wide")),
                             ["config.json", "step-000002"]),
    "id2label with a gap": (lambda c: c.edit_json("checkpoints/step-000002/config.json",
                                                  lambda d: d.update(id2label={"0": "q", "2": "s"})),
                            ["config.json", "step-000002"]),
    "id2label of another size": (lambda c: c.edit_json("checkpoints/step-000002/config.json",
                                                       lambda d: d.update(id2label={"0": "q", "1": "s", "2": "t"},
                                                                          label2id={"q": 0, "s": 1, "t": 2})),
                                 ["config.json", "step-000002"]),
    "manifest a list": (lambda c: c.damage("checkpoints/step-000002/manifest.json", "[]"), ["manifest.json"]),
    "manifest entry null": (lambda c: c.edit_json("checkpoints/step-000002/manifest.json",
                                                  lambda d: d["files"].update({"config.json": None})),
                            ["manifest.json"]),
    "manifest entry without size": (lambda c: c.edit_json("checkpoints/step-000002/manifest.json",
                                                          lambda d: d["files"]["config.json"].pop("size")),
                                    ["manifest.json"]),
    "sft_state without config": (lambda c: c.damage("checkpoints/step-000002/sft_state.json", "{}"),
                                 ["sft_state.json"]),
    "sft_state not JSON": (lambda c: c.damage("checkpoints/step-000002/sft_state.json", "{not json"),
                           ["sft_state.json"]),
    "sft_state holding an invalid config": (lambda c: c.edit_json("checkpoints/step-000002/sft_state.json",
                                                                  lambda d: d["config"]["optim"].update(lr=-1)),
                                            ["sft_state.json"]),
    "summary not JSON": (lambda c: c.damage("summary.json", "not json"), ["summary.json"]),
    "summary class_prior.shift a string": (lambda c: c.edit_json(
        "summary.json", lambda d: d.update(class_prior={"folded": True, "shift": "up"})), ["summary.json"]),
    "tokenizer files removed": (_remove_tokenizer, ["tokenizer"]),
}


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("what", list(DAMAGED))
def test_a_damaged_checkpoint_is_exit_2_naming_the_file(forked, tmp_path, reference, data_dir, command, what) -> None:
    damage, names = DAMAGED[what]
    case = Case(tmp_path, reference)
    damage(case)
    before = snapshot(tmp_path)
    if command == "eval":
        r = forked("eval", f"checkpoint={case.run}", "run_root=runs", cwd=tmp_path, timeout=120)
    else:
        r = forked("predict", f"checkpoint={case.run}", f"input={data_dir / 'test.csv'}", "output=p/pred.csv",
                   cwd=tmp_path, timeout=120)
    check_promise(r, before, snapshot(tmp_path), names, codes=(2,), case=what)


def test_damaged_training_state_stops_resume_before_step_1(forked, tmp_path, reference, data_dir) -> None:
    resume = [*FAST, *data_args(data_dir), "trainer.max_steps=3", "trainer.save_every=1", "trainer.keep_last=2"]
    for what, damage, names in [
        ("train_state garbage", lambda c: c.damage("checkpoints/step-000002/train_state.pt", b"\x80\x02garbage" * 30),
         ["train_state.pt"]),
        ("sft_state wrong shape", lambda c: c.damage("checkpoints/step-000002/sft_state.json", "[]"),
         ["sft_state.json"]),
        ("config.json wrong shape", lambda c: c.damage("checkpoints/step-000002/config.json", '{"hidden_size": "x"}'),
         ["config.json"]),
    ]:
        root = tmp_path / what.replace(" ", "-")
        root.mkdir()
        case = Case(root, reference)
        damage(case)
        before = snapshot(root)
        r = forked("train", *resume, f"resume={case.ckpt}", "run_root=runs", "run_name=cont", cwd=root, timeout=120)
        check_promise(r, before, snapshot(root), names, codes=(2,), case=what)


MIX = "+strategy=mix data.labels_per_class=3"
BAD_VALUES = [
    ("seed=-1", "seed"), ("model.max_length=1e29", "model.max_length"), ("model=1", "model"), ("data=null", "data"),
    ("trainer.batch_size=4611686018427387904", "trainer.batch_size"), ("model.tiny_heads=1e29", "model.tiny_heads"),
    ("run_name=" + "n" * 300, "run_name"), ("run_root=" + "r" * 300, "run_root"), ("cache_dir=" + "c" * 300, "cache_dir"),
    ("run_name=${foo}", "run_name"), ("run_root=${oc.env:SFT_SURELY_UNSET}", "run_root"),
    ("cache_dir=${oc.env:SFT_SURELY_UNSET}", "cache_dir"), ("run_root=plain.txt", "run_root"),
    ("cache_dir=plain.txt", "cache_dir"), ("trainer.epochs=1e29", "trainer.epochs"),
    *[(f"{key}=inf", key) for key in ("loss.supcon_weight", "optim.lr", "optim.weight_decay", "loss.supcon_tau",
                                      "optim.eps")],
    # With unlabeled texts, so that the terms that read them run (and would meet the inf at step 1).
    *[(f"{key}=inf {MIX}", key) for key in ("loss.self_training_weight", "loss.consistency_weight")],
    (f"lambda=inf {MIX}", "lambda"), (f"tau=inf {MIX}", "tau"), (f"lambda=nan {MIX}", "lambda"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES, ids=[o[:40] for o, _ in BAD_VALUES])
def test_a_bad_value_is_exit_2_at_validation(forked, tmp_path, data_dir, override, key) -> None:
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    before = snapshot(tmp_path)
    args = [a for a in data_args(data_dir) if "labels_per_class" not in a or "labels_per_class" not in override]
    r = forked("train", *FAST, *args, *override.split(" "), cwd=tmp_path, timeout=120)
    check_promise(r, before, snapshot(tmp_path), [key], codes=(2,), case=override)
    assert "step 1" not in r.stdout + r.stderr  # refused before training, not stopped at its first step


@pytest.mark.parametrize("override", ["run_name=" + "n" * 300, "run_root=plain.txt", "cache_dir=plain.txt",
                                      "run_name=${foo}"])
def test_a_bad_path_for_eval_is_exit_2(forked, tmp_path, reference, override) -> None:
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    before = snapshot(tmp_path)
    r = forked("eval", f"checkpoint={reference}", *override.split(" "), cwd=tmp_path, timeout=120)
    check_promise(r, before, snapshot(tmp_path), [override.split("=")[0]], codes=(2,), case=override)


BAD_FILES = [
    ("latin1.jsonl", '{"text": "caf\u00e9", "label": "q"}\n'.encode("latin-1") * 4, "data.train", "latin1.jsonl"),
    ("nan.csv", b"text,label\nhello there,q\nno label here,\nbye,s\n", "data.train", "row 2"),
    ("NaN.csv", b"text,label\nhello there,q\nno label here,NaN\nbye,s\n", "data.train", "row 2"),
    # Valid UTF-8, but a binary file: NUL bytes between the readable parts.
    ("binary.txt", b"\x00\x01\x02\x03 object \x00\x00\x10 data\x7f\n" * 50, "data.unlabeled", "binary.txt"),
]


@pytest.mark.parametrize(("name", "content", "key", "named"), BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_a_bad_data_file_is_exit_2_naming_it(forked, tmp_path, data_dir, name, content, key, named) -> None:
    (tmp_path / name).write_bytes(content)
    before = snapshot(tmp_path)
    args = [a for a in data_args(data_dir) if not a.startswith(f"{key}=")]
    extra = ["+strategy=mix", "lambda=0.1"] if key == "data.unlabeled" else []
    r = forked("train", *FAST, *args, *extra, f"{key}={tmp_path / name}", cwd=tmp_path, timeout=120)
    check_promise(r, before, snapshot(tmp_path), [named], codes=(2,), case=name)


def test_a_model_dir_without_tokenizer_files_is_refused(forked, tmp_path, reference, data_dir) -> None:
    model = tmp_path / "model"
    shutil.copytree(reference / "model", model)
    for name in ("tokenizer.json", "vocab.txt"):
        (model / name).unlink(missing_ok=True)
    before = snapshot(tmp_path)
    r = forked("train", *FAST, *data_args(data_dir), "model=hf", f"model.name_or_path={model}", cwd=tmp_path,
               timeout=120)
    check_promise(r, before, snapshot(tmp_path), ["tokenizer"], codes=(2,))
    assert "model.name_or_path" in r.stderr


@pytest.mark.parametrize("output", ["folder.csv", "/proc/sft-cannot/pred.csv", "o" * 300 + ".csv",
                                    "plain.txt/pred.csv"])
def test_predict_output_that_cannot_be_written_is_exit_2(forked, tmp_path, reference, data_dir, output) -> None:
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "plain.txt").write_text("a file")
    before = snapshot(tmp_path)
    r = forked("predict", f"checkpoint={reference}", f"input={data_dir / 'test.csv'}", f"output={output}",
               cwd=tmp_path, timeout=120)
    check_promise(r, before, snapshot(tmp_path), ["output"], codes=(2,), case=output)


@pytest.mark.slow
def test_a_30_megabyte_line_is_read_in_reasonable_time(forked, tmp_path, data_dir) -> None:
    # A whole file on one line: the tokenizer sees only what max_length tokens can span.
    (tmp_path / "pile.txt").write_text("an ordinary text\n" + "word " * 6_000_000 + "\nanother text\n")
    before = snapshot(tmp_path)
    r = forked("train", *FAST, *data_args(data_dir), "+strategy=mix", "lambda=0.1",
               f"data.unlabeled={tmp_path / 'pile.txt'}", cwd=tmp_path, timeout=120)
    check_promise(r, before, snapshot(tmp_path), [], new_ok=("runs/",), codes=(0,))
