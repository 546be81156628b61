"""Run the real Flower app in tests: a private SuperLink per test, `flwr run`, and a cleanup that kills
every process it started.

Each sandbox has its own FLWR_HOME (so `flwr run` writes its config and FABs there) and its own ports
(FLWR_LOCAL_SUPERLINK_HTTP_API_PORT / FLWR_LOCAL_CONTROL_API_PORT, which `flwr run`'s ":local:" connection
reads), so tests never touch a user's SuperLink or each other's. The SuperLink is started here in its own
session; on exit the whole process tree below it (superexec, flwr-simulation, Ray workers) is collected
from /proc and terminated by PID, then the test can assert none survived.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pids: set[int], grace: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        if not any(alive(p) for p in pids):
            return


class FlowerSandbox:
    """``with FlowerSandbox(tmp_path) as fl: fl.run(app_dir, {...}, num_supernodes=3)``."""

    def __init__(self, root: Path, cwd: Path | None = None) -> None:
        self.root = Path(root)
        self.cwd = Path(cwd or root)
        self.port, self.control_port = free_port(), free_port()
        self.env = {**os.environ, "FLWR_HOME": str(self.root / "flwr_home"),
                    "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
                    "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "RAY_DEDUP_LOGS": "0", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.superlink: subprocess.Popen | None = None
        self.seen: set[int] = set()

    def __enter__(self) -> FlowerSandbox:
        log = (self.root / "superlink.log").open("wb")
        self.superlink = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(self.port),
             "--control-api-address", f"127.0.0.1:{self.control_port}",
             "--disable-runtime-dependency-installation"],
            cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                tail = (self.root / "superlink.log").read_text()[-2000:]
                raise RuntimeError(f"flower-superlink exited: {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=0.5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("flower-superlink did not become healthy within 60 s")

    def run(self, app: Path, run_config: dict[str, object], num_supernodes: int, timeout: float = 240,
            cpus_per_node: int = 1) -> subprocess.CompletedProcess:
        """`flwr run APP --stream` with run-config overrides; returns the finished process (never raises
        on a failed run: tests assert on the output)."""
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        cmd = [str(BIN / "flwr"), "run", str(app), "--stream",
               "--federation-config",
               f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_node}"]
        if overrides:
            cmd += ["--run-config", overrides]
        proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree({proc.pid} | descendants(proc.pid))
            out, _ = proc.communicate()
            out += f"\n[flwr_utils] `{shlex.join(cmd)}` timed out after {timeout} s"
        self._remember()
        return subprocess.CompletedProcess(cmd, proc.returncode, out, "")

    def _remember(self) -> None:
        if self.superlink is not None:
            self.seen |= descendants(self.superlink.pid)

    def close(self) -> None:
        if self.superlink is None:
            return
        self._remember()
        self.seen.add(self.superlink.pid)
        kill_tree(self.seen | descendants(self.superlink.pid))
        self.superlink.wait(timeout=10)

    def survivors(self) -> list[int]:
        """PIDs started by this sandbox that are still alive, plus anything still bound to its ports."""
        left = [p for p in self.seen if alive(p)]
        found = subprocess.run(["pgrep", "-f", f"127.0.0.1:{self.port}"], capture_output=True, text=True)
        return left + [int(p) for p in found.stdout.split()]

    def __exit__(self, *exc: object) -> None:
        self.close()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
