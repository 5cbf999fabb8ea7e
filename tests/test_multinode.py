"""Two nodes on one machine: two torchrun agents (--nnodes=2, one process each, c10d rendezvous on
127.0.0.1) running `python -m sftcli train`. One run dir, the losses of one process, exact resume after
a SIGTERM to one node, a lost node ending the other quickly, and a cache dir that only one node sees."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_env, free_port, read_jsonl, run_dirs, wait_for
from safetensors.torch import load_file

from sftcli import checkpoint as ckpt

# Dropout off: each rank draws its own masks, so only a dropout-free run logs one process's losses.
ARGS = [*TINY, "+strategy=mix", "lambda=0.5", "model.dropout=0", "trainer.max_steps=6", "trainer.eval_every=3",
        "trainer.dist_timeout_s=10"]


def start_nodes(cwd: Path, args: list[str], env: dict[str, str], node1_env: dict[str, str] | None = None
                ) -> list[Agent]:
    """Two torchrun agents, as two nodes would start them, meeting at a fresh port. Node 0 starts first
    and so hosts the rendezvous store (on one machine either agent could), as the node named in
    --rdzv_endpoint does on a cluster."""
    port = free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "-m", "sftcli", "train", *args]
        procs.append(Agent(cmd, cwd / f"node{node}-{port}.err", cwd=cwd,
                           env={**env, **(node1_env or {})} if node else env))
        if node == 0:
            wait_for(lambda: listening(port), 60, "node 0's rendezvous store", procs[0])
    return procs


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def finish(procs: list[Agent], timeout: float = 300) -> list[tuple[int, str]]:
    """(exit code, stderr) of each agent, once both have ended; on a timeout, both agents' stderr, so
    that a hang says which node and phase it was in."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        pytest.fail("the agents did not end in time:\n" + "\n".join(
            f"--- node {i} (exit {p.returncode}):\n{p.stderr_text()[-6000:]}" for i, p in enumerate(procs)))
    return [(p.returncode, p.stderr_text()) for p in procs]


class Agent(subprocess.Popen):
    """A torchrun agent whose stderr goes to a file, not a pipe: a pipe nobody reads while the test
    waits on the other node would stop this one once it fills."""

    def __init__(self, cmd: list[str], err_path: Path, **kwargs) -> None:
        self.err_path = err_path
        with open(err_path, "w") as err:
            super().__init__(cmd, stdout=subprocess.DEVNULL, stderr=err, **kwargs)

    def stderr_text(self) -> str:
        return self.err_path.read_text()


def losses(run: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["train/loss"]) for e in read_jsonl(run / "metrics.jsonl") if "train/loss" in e]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """(one process, two nodes): the same command, uninterrupted."""
    root = tmp_path_factory.mktemp("nodes")
    env = cli_env(cache_dir)
    subprocess.run([sys.executable, "-m", "sftcli", "train", *ARGS, "run_name=one"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=300)
    results = finish(start_nodes(root, [*ARGS, "run_name=two"], env))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    return root / "runs" / "one", root / "runs" / "two"


def test_two_nodes_make_one_run_and_match_one_process(runs) -> None:
    one, two = runs
    assert sorted(p.name for p in run_dirs(two.parent)) == ["one", "two"]  # rank 0 made it; rank 1 followed
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    diff = max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))
    print(f"max |loss(1 process) - loss(2 nodes)| = {diff:.2e}")
    assert diff < 1e-4
    val = [[(e["step"], e["val/accuracy"]) for e in read_jsonl(r / "metrics.jsonl") if "val/accuracy" in e]
           for r in runs]
    assert val[0] == val[1]


@pytest.mark.slow  # about 30 s on 2 cores; CI runs it after the default suite
def test_sigterm_to_one_node_then_resume_is_exact(runs, tmp_path, cache_dir) -> None:
    _, two = runs
    env = cli_env(cache_dir)
    run = tmp_path / "runs" / "r"
    procs = start_nodes(tmp_path, [*ARGS, "run_name=r"], {**env, "SFT_TEST_STEP_DELAY": "0.3"})
    wait_for(lambda: (run / "checkpoints" / "step-000002").is_dir(), 120, "the first checkpoint", procs[0])
    procs[1].send_signal(signal.SIGTERM)  # node 1's agent, as a scheduler signals one node
    (code0, err0), (code1, _) = finish(procs, 120)
    assert code0 != 0 and code1 != 0
    assert "stopped by a signal at step" in err0  # rank 0's message; torchrun reports the exit codes itself
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["exit_code"] == 75
    stopped = ckpt.newest_valid(run / "checkpoints")
    assert stopped is not None and stopped.name > "step-000002"  # the stop saved its own checkpoint
    results = finish(start_nodes(tmp_path, [*ARGS, "run_name=r", "resume=auto"], env))
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    assert f"resumed from {stopped}" in results[0][1]
    a = load_file(run / "checkpoints" / "step-000006" / "model.safetensors")
    b = load_file(two / "checkpoints" / "step-000006" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(run) == losses(two)
    final = [json.loads((r / "summary.json").read_text()) for r in (run, two)]
    assert final[0]["test/accuracy"] == final[1]["test/accuracy"] and final[0]["status"] == "completed"


@pytest.mark.parametrize("lost", ["agent", "node"])
def test_a_killed_node_ends_the_other_within_the_timeout(tmp_path, cache_dir, lost) -> None:
    """agent: SIGKILL to node 1's torchrun agent alone, which does not host the rendezvous (its worker is
    told by the kernel and stops with the others after the step, saving; left alone, it would train on
    with node 0 to the end); node: the agent and its worker at once (a machine lost)."""
    timeout_s = 8
    run = tmp_path / "runs" / "k"
    procs = start_nodes(tmp_path, [*ARGS, "trainer.max_steps=200", f"trainer.dist_timeout_s={timeout_s}", "run_name=k"],
                        cli_env(cache_dir, {"SFT_TEST_STEP_DELAY": "0.3"}))
    wait_for(lambda: (run / "checkpoints" / "step-000002").is_dir(), 120, "the first checkpoint", procs[0])
    workers = children(procs[1].pid)
    assert len(workers) == 1
    others = children(procs[0].pid)
    try:
        killed = time.monotonic()
        procs[1].send_signal(signal.SIGKILL)
        if lost == "node":
            subprocess.run(["kill", "-KILL", str(workers[0])], check=True)
        procs[0].wait(timeout=60)
        elapsed = time.monotonic() - killed
        print(f"{lost} killed: node 0 ended after {elapsed:.1f}s")
        assert elapsed < timeout_s
        assert procs[0].returncode != 0
        wait_for(lambda: not alive(workers[0]), 10, "node 1's worker to end")
    finally:  # a failure here must not leave training processes behind
        for pid in [*workers, *others, *(p.pid for p in procs)]:
            if alive(pid):
                subprocess.run(["kill", "-KILL", str(pid)], check=False)
        for p in procs:
            p.wait()
    newest = ckpt.newest_valid(run / "checkpoints")
    assert newest is not None and ckpt.verify(newest)
    assert not any(p.name.startswith(ckpt.TMP_PREFIX) for p in (run / "checkpoints").iterdir())
    steps = [s for s, _ in losses(run)]
    assert steps and max(steps) < 200  # it stopped, it did not train on alone
    if lost == "agent":
        assert int(newest.name.split("-")[1]) == max(steps)  # the stop saved the last step


def test_a_cache_dir_that_one_node_does_not_see_fails_on_both(tmp_path, cache_dir) -> None:
    # Node 1 uses its own cache dir, as a node whose $SFT_CACHE_DIR is not on the shared filesystem:
    # it would wait forever for the frozen encoder's cache that rank 0 writes elsewhere.
    start = time.monotonic()
    results = finish(start_nodes(tmp_path, [*ARGS, "trainer.dist_timeout_s=6", "run_name=c"], cli_env(cache_dir),
                                 node1_env={"SFT_CACHE_DIR": str(tmp_path / "node1-cache")}), 120)
    assert time.monotonic() - start < 60
    for code, err in results:
        assert code != 0
        assert f"rank 1 on {socket.gethostname()} has the cache dir {tmp_path / 'node1-cache'}" in err
        assert "every node must see the same run_root and cache dir" in err
    assert not list(tmp_path.rglob("step-*"))  # nothing was trained
