"""Run the real Flower app in tests: a private SuperLink per test (``clin_jepa.localrun.LocalFlower``:
own FLWR_HOME, own ports, runtime dependency installation disabled) and `flwr run`; on exit every
process it started is killed by PID and ``survivors()`` lets the test assert that none is left."""

from __future__ import annotations

from pathlib import Path

from clin_jepa.localrun import LocalFlower, alive, descendants, kill_tree

REPO = Path(__file__).resolve().parents[1]


class FlowerSandbox(LocalFlower):
    """``with FlowerSandbox(tmp_path) as fl: fl.run(REPO, {...}, num_supernodes=3)``; the SuperLink (and
    so the ServerApp and ClientApps) run in ``cwd`` (default: the repository)."""

    def __init__(self, root: Path, cwd: Path | None = None) -> None:
        super().__init__(Path(root) / "flwr_home", cwd or REPO, Path(root) / "superlink.log")


__all__ = ["REPO", "FlowerSandbox", "alive", "descendants", "kill_tree"]
