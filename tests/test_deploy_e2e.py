"""Fault drills on real processes (127.0.0.1 only): TLS, SuperNode authentication, crashes, resume.

Every test starts the SuperLink and SuperNodes through deploy/*.sh, bounds its time, uses free
loopback ports and temporary FLWR_HOMEs, and stops every process it started, checked with pgrep.
"""

from __future__ import annotations

import pytest
from deploy_harness import Deployment, wait_for

pytestmark = [pytest.mark.slow]


@pytest.fixture
def deployment(tmp_path):
    made: list[Deployment] = []

    def make(node_names: list[str]) -> Deployment:
        dep = Deployment(tmp_path, node_names)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        dep.stop_all()
        assert dep.leftovers() == [], "processes survived the test"


def _site(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"site: {name}\n")
    return path


@pytest.mark.timeout(180)
def test_unregistered_supernode_is_refused(deployment, tmp_path):
    dep = deployment(["node-1", "node-2"])
    dep.start_superlink()
    dep.add_federation()
    registered = dep.register(["node-1"])
    assert registered.returncode == 0, registered.stdout + registered.stderr
    good = dep.start_supernode("node-1", _site(tmp_path, "a"))
    intruder = dep.start_supernode("node-2", _site(tmp_path, "b"))
    intruder.popen.wait(timeout=90)
    assert intruder.popen.returncode != 0
    assert "Failed to activate SuperNode" in intruder.text()
    wait_for(lambda: dep.online_nodes() == 1, 60, "the registered SuperNode to be online")
    assert good.alive()
    assert "Activated node_id" in dep.procs[0].text()
