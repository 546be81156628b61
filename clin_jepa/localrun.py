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

What a short run spends outside training is kept small here (bench/fl_overhead.py):

* `flwr run APP` builds the FAB by walking *every* file under APP before filtering (47,000 files with the
  project's ``.venv`` inside the checkout: 3-12 s per run). :meth:`LocalFlower.run` hands it a staged
  copy of the app instead (:func:`stage_app`: hard links of the files outside ignored folders), which
  yields the same FAB, byte for byte;
* the SuperExec polls for new runs every 1 s by default (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``): 0.1 s;
* Flower starts Ray with a job runtime env that only repeats ``PYTHONPATH``, which Ray's workers inherit
  anyway; a non-empty runtime env makes Ray discard the workers it prestarted and start new ones through
  its ``setup_worker`` (one more interpreter start per worker before the first message).
  :func:`ray_runtime_env_hook` (``RAY_RUNTIME_ENV_HOOK``) drops exactly that redundant runtime env;
* Ray schedules one simulated site per core, so 3 hospitals on 2 cores trained in two waves (2, then 1
  beside an idle core). :func:`one_wave_cpus` lets every site of a small federation train at once.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from clin_jepa.site_policy import SIMULATION_OPT_IN_ENV

# Flower's commands (flwr, flower-superlink, flwr-simulation): next to this interpreter, or where
# CLIN_JEPA_FLOWER_BIN says (bench/gpu_check.py installs Flower into a folder of its own on a GPU image).
BIN = Path(os.environ.get("CLIN_JEPA_FLOWER_BIN") or Path(sys.executable).parent)
# Folders never part of a Flower app (besides the app's own .gitignore): pruned before walking.
NEVER_IN_APP = (".venv", "__pycache__", ".flwr", ".git", "node_modules")
RAY_HOOK = "clin_jepa.localrun.ray_runtime_env_hook"


def _ignored_dirs_spec(app: Path):  # -> pathspec.PathSpec (imported lazily: a dependency of Flower)
    import warnings

    import pathspec

    gitignore = app / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.is_file() else []
    with warnings.catch_warnings():  # the pattern style `flwr` itself reads .gitignore with
        warnings.simplefilter("ignore", DeprecationWarning)
        return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def stage_app(app: Path, dest: Path) -> Path:
    """``dest`` made a copy of the Flower app in ``app`` holding what `flwr run` could put in its FAB: every
    file except those under folders the app's ``.gitignore`` ignores and under :data:`NEVER_IN_APP`
    (hard links where the file system allows, else copies; symbolic links are left out, as `flwr`
    does). `flwr run dest` then builds the same FAB as `flwr run app`, without walking a virtual
    environment or data folders inside the checkout. Returns ``dest``."""
    app = Path(app).resolve()
    spec = _ignored_dirs_spec(app)
    if dest.exists():
        shutil.rmtree(dest)
    for dirpath, dirnames, filenames in os.walk(app, followlinks=False):
        rel = Path(dirpath).relative_to(app)
        dirnames[:] = [d for d in dirnames if d not in NEVER_IN_APP
                       and not (Path(dirpath) / d).is_symlink()
                       and not spec.match_file(f"{(rel / d).as_posix()}/")]
        for name in filenames:
            src = Path(dirpath) / name
            if src.is_symlink() or spec.match_file((rel / name).as_posix()):
                continue
            target = dest / rel / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
    return dest


def ray_runtime_env_hook(runtime_env: dict | None) -> dict | None:
    """Ray's ``RAY_RUNTIME_ENV_HOOK`` for local simulations: a job runtime env that only sets environment
    variables the driver already has (Flower 1.42 passes ``env_vars={"PYTHONPATH": ...}`` after putting
    the same value into ``os.environ``) becomes no runtime env; the raylet that ``ray.init`` starts, and
    so every worker, inherits those variables. Anything else is returned unchanged."""
    if not runtime_env or set(runtime_env) != {"env_vars"}:
        return runtime_env
    env_vars = runtime_env["env_vars"] or {}
    if all(os.environ.get(k) == v for k, v in env_vars.items()):
        return {}
    return runtime_env


def one_wave_cpus(num_supernodes: int, cpus_per_node: int = 1) -> int | None:
    """Ray's logical CPU count for a simulation whose sites need a little more than the cores: all of
    them at once (one round of 3 sites on 2 cores: 9.0 s instead of 10.5 s for the `wide` model, 25.6
    -> 22.1 s with the 12-step rollout), up to 1.5x the cores; None (Ray's own count) otherwise."""
    cores = len(os.sched_getaffinity(0))
    need = num_supernodes * cpus_per_node
    return need if cores < need <= 1.5 * cores else None


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


def on_port(port: int) -> list[int]:
    """PIDs of processes whose command line names ``127.0.0.1:port`` (a SuperLink started on it)."""
    found = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


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
                    # see the module docstring: no redundant runtime env, no 1 s wait for the SuperExec
                    "RAY_RUNTIME_ENV_HOOK": RAY_HOOK, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
                    "RAY_USAGE_STATS_ENABLED": "0",
                    SIMULATION_OPT_IN_ENV: "1" if allow_test_faults else "0"}
        self.superlink: subprocess.Popen | None = None
        self.seen: set[int] = set()
        self._previous: dict[int, object] = {}  # signal handlers replaced while open (see __enter__)

    def __enter__(self) -> LocalFlower:
        self._trap_termination()
        try:
            return self._start()
        except BaseException:  # a signal or a failure while starting: nothing may be left behind
            self.close()
            raise

    def _start(self) -> LocalFlower:
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
        raise RuntimeError("flower-superlink did not become healthy within 60 s")

    def run(self, app: Path, run_config: dict[str, object], num_supernodes: int, timeout: float = 240,
            cpus_per_node: int = 1, echo: bool = False,
            federation: dict[str, object] | None = None) -> subprocess.CompletedProcess:
        """`flwr run APP --stream` with run-config overrides; returns the finished process with its output
        (``echo`` also prints it live). ``federation`` adds simulation settings to `--federation-config`
        (e.g. ``{"client-resources-num-gpus": 0.5}``). Never raises on a failed run: callers check it."""
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        app = stage_app(Path(app), self.home / "app")
        sim = {"num-supernodes": num_supernodes, "client-resources-num-cpus": cpus_per_node,
               **(federation or {})}
        wave = one_wave_cpus(num_supernodes, cpus_per_node)
        if wave is not None:
            sim.setdefault("init-args-num-cpus", wave)
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
        try:
            for line in proc.stdout:
                lines.append(line)
                if echo:
                    print(line, end="", flush=True)
            proc.wait()
        finally:
            # Interrupted (Ctrl-C, or SIGTERM via :meth:`__enter__`'s handler): `flwr run` is our child in a
            # session of its own, not below the SuperLink, so close() would not reach it; and the timer
            # thread would otherwise keep the interpreter alive until the run's timeout.
            timed_out = not timer.is_alive()
            timer.cancel()
            if proc.poll() is None:
                kill_tree({proc.pid} | descendants(proc.pid))
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

    def _trap_termination(self) -> None:
        """SIGTERM/SIGHUP (``timeout``, a closed terminal, a job scheduler) end the interpreter without
        unwinding ``with`` blocks, which left the SuperLink and its Ray workers running as orphans. While
        this context is open they raise SystemExit instead, so :meth:`close` runs; the previous handlers
        come back on close. Only the main thread may install handlers: elsewhere nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, stop)

    def close(self) -> None:
        # a second signal must not cut the cleanup short; the caller's handlers come back afterwards
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if self.superlink is not None:
                self._remember()
                self.seen.add(self.superlink.pid)
                kill_tree(self.seen | descendants(self.superlink.pid))
                self.superlink.wait(timeout=10)
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

    def survivors(self) -> list[int]:
        """PIDs started here that are still alive, plus anything still bound to its ports."""
        return [p for p in self.seen if alive(p)] + on_port(self.port)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
