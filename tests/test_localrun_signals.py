"""A simulation killed by SIGTERM (``timeout``, a job scheduler) leaves no Flower or Ray process behind:
a real `flwr run` under ``clin_jepa.localrun.LocalFlower`` is signalled mid-training and every process
below it, seen at any point while it ran, must be gone once the interpreter has exited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flwr_utils import REPO, alive, descendants, kill_tree
from test_flower_sim import make_sites

from clin_jepa.localrun import on_port

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from pathlib import Path
from clin_jepa.localrun import LocalFlower
root, sites = Path(sys.argv[1]), sys.argv[2]
config = {"preset": "tiny", "hours": 48, "num-rounds": 200, "local-steps": 2, "batch-size": 8,
          "site-configs": sites, "checkpoint-dir": str(root / "ckpt"), "synth-if-missing": False}
with LocalFlower(root / "home", Path(sys.argv[3]), root / "superlink.log") as fl:
    print("PORT", fl.port, flush=True)
    fl.run(Path(sys.argv[3]), config, num_supernodes=2, timeout=900, echo=True)
print("RUN ENDED", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signalled_simulation_leaves_no_process_behind(tmp_path, sig):
    script = tmp_path / "sim.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path),
                             ",".join(map(str, make_sites(tmp_path / "sites", 2, subjects=30))), str(REPO)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    seen: set[int] = set()
    left: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not any("Round 2/" in line for line in lines):  # training is under way at the sites
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-4000:]
            seen |= descendants(proc.pid)
            time.sleep(0.5)
        seen |= descendants(proc.pid)
        assert any("flwr-simulation" in _cmdline(p) for p in seen), "no simulation process was seen"
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        reader.join(timeout=10)
        left = [p for p in seen if alive(p)]
    finally:
        kill_tree({proc.pid} | seen | descendants(proc.pid), grace=5)  # never leave them, even on failure
    port = next(line.split()[1] for line in lines if line.startswith("PORT"))
    bound = on_port(int(port))
    assert left == [] and bound == [], f"survivors: {left} {bound}"
    assert code == 128 + sig and "RUN ENDED" not in "".join(lines), "".join(lines)[-4000:]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
