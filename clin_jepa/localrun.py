"""A private local Flower SuperLink for simulations, and a cleanup that leaves no process behind.

`flwr run .` in Flower 1.42 starts a local SuperLink on fixed ports (39091/39093) that keeps running in the
background after the run. The demo and the tests instead start their own SuperLink here: its own
FLWR_HOME (config, installed FABs), free ports (FLWR_LOCAL_SUPERLINK_HTTP_API_PORT and
FLWR_LOCAL_CONTROL_API_PORT, read by `flwr run`'s ":local:" connection), and its own session. On close the
whole process tree below it (superexec, flwr-simulation, Ray workers) is collected from /proc and
terminated by PID. The SuperLink's working directory is the project root, so relative paths in the run
config resolve there. Its simulated sites act on test hooks (run config ``inject-faults``) unless
``allow_test_faults=False``: Flower's simulation cannot give nodes an ``allow-test-faults`` node config, so
the opt-in travels in the environment (``clin_jepa.site_policy.SIMULATION_OPT_IN_ENV``). This module
starts processes only; it does not import Flower.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from clin_jepa.site_policy import SIMULATION_OPT_IN_ENV

BIN = Path(sys.executable).parent


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


class LocalFlower:
    """``with LocalFlower(home, cwd, log) as fl: fl.run(app_dir, {...}, num_supernodes=3)``.

    Invariant: every process below the SuperLink is recorded in ``seen`` while it lives (a watcher polls
    /proc during runs), so ``close()`` can end even processes that were re-parented.
    """

    def __init__(self, home: Path, cwd: Path, log_path: Path, allow_test_faults: bool = True) -> None:
        self.home, self.cwd, self.log_path = Path(home), Path(cwd), Path(log_path)
        self.port, self.control_port = free_port(), free_port()
        self.env = {**os.environ, "FLWR_HOME": str(self.home),
                    "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
                    "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "RAY_DEDUP_LOGS": "0", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    # Ray starts its workers at nice 15; the ClientApps (all of the training) then starve
                    # behind any other busy process on a shared machine: 5x slower per step than the same
                    # steps in `clin-jepa train` at load ~8 on 2 cores (bench/fl_overhead.py).
                    "RAY_worker_niceness": "0",
                    SIMULATION_OPT_IN_ENV: "1" if allow_test_faults else "0"}
        self.superlink: subprocess.Popen | None = None
        self.seen: set[int] = set()

    def __enter__(self) -> LocalFlower:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.superlink = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(self.port),
             "--control-api-address", f"127.0.0.1:{self.control_port}",
             "--disable-runtime-dependency-installation"],
            cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
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
            cpus_per_node: int = 1, echo: bool = False,
            federation: dict[str, object] | None = None) -> subprocess.CompletedProcess:
        """`flwr run APP --stream` with run-config overrides; returns the finished process with its output
        (``echo`` also prints it live). ``federation`` adds simulation settings to `--federation-config`
        (e.g. ``{"client-resources-num-gpus": 0.5}``). Never raises on a failed run: callers check it."""
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        sim = {"num-supernodes": num_supernodes, "client-resources-num-cpus": cpus_per_node,
               **(federation or {})}
        cmd = [str(BIN / "flwr"), "run", str(app), "--stream",
               "--federation-config", " ".join(f"{k}={_toml(v)}" for k, v in sim.items())]
        if overrides:
            cmd += ["--run-config", overrides]
        proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(done,), daemon=True)
        watcher.start()
        timer = threading.Timer(timeout, lambda: kill_tree({proc.pid} | descendants(proc.pid)))
        timer.start()
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
        proc.wait()
        timed_out = not timer.is_alive()
        timer.cancel()
        done.set()
        watcher.join()
        if timed_out:
            lines.append(f"\n[localrun] `{shlex.join(cmd)}` timed out after {timeout} s\n")
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")

    def _watch(self, done: threading.Event) -> None:
        while not done.wait(0.5):
            self._remember()
        self._remember()

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
        """PIDs started here that are still alive, plus anything still bound to its ports."""
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
