"""Real Flower deployments on 127.0.0.1 for the fault drills: start, watch and stop every process.

Each process is started through the scripts in ``deploy/`` in its own session, with a temporary
FLWR_HOME and runtime dependency installation disabled. Flower's SuperExec and app processes detach
into sessions of their own, so stopping walks /proc for descendants *and* for any process whose
command line names this deployment's temporary folder or ports; ``leftovers()`` is the check.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clin_jepa.security.certs import PkiLayout, generate_pki

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every visible process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (ppid, cmd)
    return table


def related_pids(roots: list[int], markers: list[str]) -> set[int]:
    """Descendants of ``roots`` plus processes whose command line contains a marker."""
    table = _proc_table()
    found = {pid for pid, (_, cmd) in table.items() if any(m in cmd for m in markers)}
    found |= {pid for pid in roots if pid in table}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    found.discard(os.getpid())
    return found


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Deployment:
    """One coordinator + hospitals on loopback, under ``root`` (a pytest tmp folder)."""

    root: Path
    node_names: list[str]
    insecure: bool = False
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    federation: str = "drill"

    def __post_init__(self) -> None:
        self.pki = PkiLayout(self.root / "pki")
        generate_pki(self.pki.root, ["localhost"], self.node_names)
        self.cli_home = self.root / "coordinator-cli"
        self.ports = [self.port]

    # -- environment -------------------------------------------------------------------------
    def env(self, flwr_home: Path | None = None, cli: bool = True) -> dict[str, str]:
        """No FLWR_* from the caller. The deploy scripts must set their own Flower settings (the
        drills check they do); the coordinator's `flwr` CLI calls get them here."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        if cli:
            env.update(FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0",
                       FLWR_DISABLE_UPDATE_CHECK="1")
        if flwr_home is not None:
            env["FLWR_HOME"] = str(flwr_home)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.root / f"{name}.log"
        fh = log.open("ab")
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                 start_new_session=True)
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run_cli(
        self, argv: list[str], timeout: float, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env(self.cli_home), cwd=cwd or self.root, timeout=timeout,
                              capture_output=True, text=True, start_new_session=True)

    # -- coordinator -------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60) -> Proc:
        argv = [str(DEPLOY / "coordinator" / "start-superlink.sh"), "--bind", "127.0.0.1",
                "--port", str(self.port), "--state", str(self.root / "superlink")]
        argv += ["--insecure"] if self.insecure else ["--certs", str(self.pki.root)]
        proc = self._spawn("superlink", argv, self.env(cli=False))
        wait_for(lambda: "Application startup complete" in proc.text() or not proc.alive(), timeout,
                 "the SuperLink to start")
        assert proc.alive(), f"SuperLink exited:\n{proc.text()[-3000:]}"
        return proc

    def add_federation(self) -> None:
        argv = [sys.executable, str(DEPLOY / "coordinator" / "add-federation.py"), self.federation,
                "--address", f"localhost:{self.port}"]
        argv += ["--insecure"] if self.insecure else ["--ca", str(self.pki.ca_cert)]
        done = self.run_cli(argv, timeout=60)
        assert done.returncode == 0, done.stderr

    def register(self, names: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(DEPLOY / "coordinator" / "register-nodes.sh"), self.federation,
                *(str(self.pki.node_dir(n)) for n in names)]
        return self.run_cli(argv, timeout=timeout)

    # -- hospitals ---------------------------------------------------------------------------
    def start_supernode(self, name: str, site_config: Path, allow_test_faults: bool = False) -> Proc:
        """A hospital's SuperNode through deploy/hospital/start-supernode.sh; with ``allow_test_faults``
        a drill node started with Flower directly, because the hospital script never opts in to test
        hooks: the same settings plus node config ``allow-test-faults=true``."""
        runtime_port = free_port()
        self.ports.append(runtime_port)
        state = self.root / f"node-{name}"
        if allow_test_faults:
            return self._start_drill_supernode(name, site_config, state, runtime_port)
        argv = [str(DEPLOY / "hospital" / "start-supernode.sh"), "--superlink", f"localhost:{self.port}",
                "--site-config", str(site_config), "--state", str(state), "--runtime-port", str(runtime_port)]
        argv += ["--insecure"] if self.insecure else ["--keys", str(self.pki.node_dir(name))]
        return self._spawn(f"supernode-{name}", argv, self.env(cli=False))

    def _start_drill_supernode(self, name: str, site_config: Path, state: Path, runtime_port: int) -> Proc:
        node_config = f'site-config="{Path(site_config).resolve()}" allow-test-faults=true'
        argv = [str(BIN / "flower-supernode"), "--superlink", f"localhost:{self.port}", "--host", "127.0.0.1",
                "--port", str(runtime_port), "--isolation", "subprocess"]
        if self.insecure:
            argv += ["--insecure"]
        else:
            keys = self.pki.node_dir(name)
            node_config += f' coordinator-pubkey="{keys / "coordinator_signing.pub"}"'
            argv += ["--root-certificates", str(keys / "ca.crt"),
                     "--auth-supernode-private-key", str(keys / "node.key")]
        state.mkdir(parents=True, exist_ok=True)
        return self._spawn(f"supernode-{name}", [*argv, "--node-config", node_config],
                           self.env(state / "flwr-home"))

    # -- runs ------------------------------------------------------------------------------
    def _run_argv(self, run_config: dict[str, object]) -> list[str]:
        items = [f"{k}={_toml_value(v)}" for k, v in run_config.items()]
        return [str(BIN / "flwr"), "run", ".", self.federation, "--stream", "--run-config", " ".join(items)]

    def start_run(self, run_config: dict[str, object]) -> Proc:
        """`flwr run . <federation> --stream` from the repository, in the background."""
        log = self.root / f"run-{len(self.procs)}.log"
        fh = log.open("ab")
        popen = subprocess.Popen(self._run_argv(run_config), stdout=fh, stderr=subprocess.STDOUT,
                                 env=self.env(self.cli_home), cwd=REPO, start_new_session=True)
        fh.close()
        proc = Proc(log.stem, popen, log)
        self.procs.append(proc)
        return proc

    def online_nodes(self) -> int:
        done = self.run_cli([str(BIN / "flwr"), "supernode", "ls", self.federation, "--format", "json"],
                            timeout=60)
        return done.stdout.count('"online"')

    # -- teardown ----------------------------------------------------------------------------
    def markers(self) -> list[str]:
        return [str(self.root), *(f"{h}:{p}" for p in self.ports for h in ("127.0.0.1", "localhost"))]

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Kill one started process and everything it spawned (the drills' "crash")."""
        for pid in related_pids([proc.popen.pid], []):
            _signal(pid, sig)
        proc.popen.wait(timeout=30)

    def stop_all(self, grace: float = 10) -> None:
        pids = related_pids([p.popen.pid for p in self.procs], self.markers())
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and related_pids(list(pids), []) - _zombies():
            time.sleep(0.2)
        for pid in related_pids(list(pids), self.markers()):
            _signal(pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def leftovers(self) -> list[str]:
        """Processes of this deployment still running, as `pgrep -af` sees them."""
        out = []
        for marker in self.markers():
            done = subprocess.run(["pgrep", "-af", "--", marker], capture_output=True, text=True)
            out += [line for line in done.stdout.splitlines()
                    if line and int(line.split()[0]) not in _zombies() | {os.getpid()}]
        return out


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | Path):
        return f'"{value}"'
    return str(value)


def _zombies() -> set[int]:
    zombies = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    zombies.add(int(entry.name))
            except (OSError, IndexError):
                pass
    return zombies


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
