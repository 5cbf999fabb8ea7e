"""The real `sft` entry point, many times a second: a server process imports sft and its heavy libraries
once, then forks a child per command line, which runs `sftcli.cli.main(argv)` exactly as the console
script does, with its own working directory, environment, stdout and stderr. A fresh interpreter spends
about 3 s importing torch and transformers; a forked child starts at once, so the generated tests can
afford hundreds of command lines. The SFT_TEST_* fault hooks (sftcli/faults.py) are read once, at import:
a test that needs one runs a fresh process (the `sft` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SERVER = r"""
import json, os, signal, sys, time, traceback
import numpy, torch, transformers, datasets, hydra, omegaconf, pydantic, safetensors  # once, before forking
import sftcli.cli, sftcli.commands, sftcli.config, sftcli.launch, sftcli.engine, sftcli.data, sftcli.model

def child(req):
    code = 1
    try:
        os.setpgid(0, 0)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = ["sft", *req["argv"]]
        try:
            sftcli.cli.main(req["argv"])
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:  # as the interpreter does with a message
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(req)
    deadline = time.monotonic() + req["timeout"]
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)  # the child and whatever it started
        time.sleep(0.01)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out}), flush=True)
"""


@dataclass
class Result:
    """What a command line did: its exit code (negative: killed by that signal), stdout and stderr."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool


class ForkedCli:
    """sft command lines run by forking one warm server process (see the module's docstring)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._dir = Path(tempfile.mkdtemp(prefix="sft-forked-"))
        self._proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=env)

    def __call__(self, *argv: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        out, err = self._dir / "stdout", self._dir / "stderr"
        req = {"argv": list(argv), "cwd": str(cwd), "env": {**self.env, **(env or {})}, "timeout": timeout,
               "stdout": str(out), "stderr": str(err)}
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the forking server died (exit {self._proc.poll()})")
        reply = json.loads(line)
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return Result(list(argv), reply["rc"], read(out), read(err), reply["timed_out"])

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        for name in ("stdout", "stderr"):
            (self._dir / name).unlink(missing_ok=True)
        os.rmdir(self._dir)
