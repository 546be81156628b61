"""Fault drills on real processes (127.0.0.1 only): TLS, SuperNode authentication, crashes, resume.

Every test starts the SuperLink and SuperNodes through deploy/*.sh, bounds its time, uses free
loopback ports and temporary FLWR_HOMEs, and stops every process it started, checked with pgrep.
The drills share one federation (SuperLink with TLS + node auth, three synthetic hospitals) to save
start-up time; each uses its own checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest
from deploy_harness import BIN, Deployment, wait_for

from clin_jepa.checkpoint import load_checkpoint
from clin_jepa.curriculum import PHASES
from clin_jepa.security.signing import verify_file

pytestmark = [pytest.mark.slow]
SITES = {"node-1": "hospital_a", "node-2": "hospital_b", "node-3": "hospital_c"}
ROUNDS = 5  # one round per phase: the whole curriculum, compressed
RUN_TIMEOUT = 700


def _sites(root):
    done = subprocess.run([str(BIN / "clin-jepa"), "synth", "--out", str(root / "synth"), "--sites", "3",
                           "--patients", "40", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {node: root / "synth" / f"{site}.yaml" for node, site in SITES.items()}


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    dep = Deployment(root, list(SITES))
    dep.site_configs = _sites(root)
    try:
        dep.start_superlink()
        dep.add_federation()
        done = dep.register(list(SITES))
        assert done.returncode == 0, done.stdout + done.stderr
        for node, cfg in dep.site_configs.items():
            dep.start_supernode(node, cfg)
        wait_for(lambda: dep.online_nodes() == 3, 120, "three SuperNodes online")
        yield dep
    finally:
        dep.stop_all()
        assert dep.leftovers() == [], "processes survived the drills"


def _run_config(dep, ckpt_dir, **extra):
    return {"num-rounds": ROUNDS, "local-steps": 1, "preset": "tiny",
            "phase-fractions": "0.2,0.2,0.2,0.2,0.2",
            "synth-if-missing": False, "round-timeout": 120.0, "min-sites": 2,
            "site-configs": ",".join(str(p) for p in dep.site_configs.values()),
            "checkpoint-dir": str(ckpt_dir), "signing-key": str(dep.pki.signing_key), **extra}


def _lines(ckpt_dir):
    """The training rounds' lines (evaluation rounds left out)."""
    lines = [json.loads(line) for line in (ckpt_dir / "metrics.jsonl").read_text().splitlines()]
    return [ln for ln in lines if ln.get("phase") != "evaluate"]


def _finish(proc, timeout=RUN_TIMEOUT):
    proc.popen.wait(timeout=timeout)
    assert proc.popen.returncode == 0, proc.text()[-4000:]


def _assert_signed(dep, ckpt_dir):
    files = sorted(ckpt_dir.glob("*.pt"))
    assert {f.name for f in files} >= {"ckpt.pt", *(f"round_{r:04d}.pt" for r in range(ROUNDS + 1))}
    for f in files:
        verify_file(f, dep.pki.node_signing_pub("node-1"))  # the key every hospital holds


@pytest.fixture(scope="module")
def uninterrupted(fed, tmp_path_factory):
    """One run of the whole curriculum, shared by the drill that checks it and by the resume drill that
    must reproduce its losses (whichever of them runs first, or alone, starts it)."""
    ckpt_dir = tmp_path_factory.mktemp("uninterrupted") / "ckpt"
    _finish(fed.start_run(_run_config(fed, ckpt_dir)))
    return ckpt_dir


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_curriculum_completes_with_signed_checkpoints(fed, uninterrupted):
    ckpt_dir = uninterrupted
    lines = _lines(ckpt_dir)
    assert [line["round"] for line in lines] == list(range(ROUNDS + 1))
    assert [line["phase"] for line in lines[1:]] == list(PHASES)
    for line in lines[1:]:
        assert line["accepted"] == 3 and line["updated"], line
        assert sorted(line["sites"]) == sorted(SITES.values())
    assert load_checkpoint(ckpt_dir / "ckpt.pt").round == ROUNDS
    _assert_signed(fed, ckpt_dir)


def _losses(lines):
    return [line["aggregate"]["loss"] for line in lines[1:]]


@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_run_finishes_when_a_supernode_is_killed(fed, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    run = fed.start_run(_run_config(fed, ckpt_dir))
    wait_for(lambda: (ckpt_dir / "round_0002.pt").exists() or not run.alive(), RUN_TIMEOUT, "round 2")
    victim = next(p for p in fed.procs if p.name == "supernode-node-3" and p.alive())
    fed.kill(victim, signal.SIGKILL)
    _finish(run)
    lines = _lines(ckpt_dir)
    assert [line["round"] for line in lines] == list(range(ROUNDS + 1))
    assert lines[-1]["phase"] == PHASES[-1] and lines[-1]["accepted"] == 2 and lines[-1]["updated"]
    assert "hospital_c" not in {s for s, v in lines[-1]["sites"].items() if v.get("status") == "ok"}
    assert load_checkpoint(ckpt_dir / "ckpt.pt").round == ROUNDS
    _assert_signed(fed, ckpt_dir)
    # Bring the hospital back for the next drill (it reconnects with the same registered key).
    fed.start_supernode("node-3", fed.site_configs["node-3"])
    wait_for(lambda: fed.online_nodes() == 3, 120, "node-3 back online")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(3 * RUN_TIMEOUT + 180)
def test_superlink_crash_then_resume_from_last_checkpoint(fed, uninterrupted, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    run = fed.start_run(_run_config(fed, ckpt_dir))
    wait_for(lambda: (ckpt_dir / "round_0002.pt").exists() or not run.alive(), RUN_TIMEOUT, "round 2")
    superlink = next(p for p in fed.procs if p.name == "superlink" and p.alive())
    fed.kill(superlink, signal.SIGKILL)  # SuperLink, its SuperExec and the ServerApp, at once
    wait_for(lambda: not run.alive(), 60, "`flwr run` to notice the SuperLink is gone")
    before = load_checkpoint(ckpt_dir / "ckpt.pt").round
    assert 2 <= before < ROUNDS, "the crash must happen mid-run"
    kept = {r: _digest(ckpt_dir / f"round_{r:04d}.pt") for r in range(before + 1)}

    fed.start_superlink()  # same --state: registrations survive; SuperNodes reconnect by themselves
    wait_for(lambda: fed.online_nodes() == 3, 180, "SuperNodes to reconnect")
    resumed = fed.start_run(_run_config(fed, ckpt_dir, **{"resume-from": str(ckpt_dir)}))
    _finish(resumed)
    assert f"Resuming after round {before}" in resumed.text()
    lines = _lines(ckpt_dir)
    assert [line["round"] for line in lines] == list(range(ROUNDS + 1))
    assert [line["phase"] for line in lines[1:]] == list(PHASES)
    assert {r: _digest(ckpt_dir / f"round_{r:04d}.pt") for r in range(before + 1)} == kept
    # same data, config and seed as the uninterrupted run: the same losses, always checked
    assert _losses(lines) == pytest.approx(_losses(_lines(uninterrupted)), rel=1e-4)
    assert load_checkpoint(ckpt_dir / "ckpt.pt").round == ROUNDS
    _assert_signed(fed, ckpt_dir)


@pytest.mark.timeout(180)
def test_unregistered_supernode_is_refused(tmp_path):
    dep = Deployment(tmp_path, ["node-1", "node-2"])
    site = tmp_path / "site.yaml"
    site.write_text("site: a\n")
    try:
        dep.start_superlink()
        dep.add_federation()
        registered = dep.register(["node-1"])
        assert registered.returncode == 0, registered.stdout + registered.stderr
        good = dep.start_supernode("node-1", site)
        intruder = dep.start_supernode("node-2", site)
        intruder.popen.wait(timeout=90)
        assert intruder.popen.returncode != 0
        assert "Failed to activate SuperNode" in intruder.text()
        wait_for(lambda: dep.online_nodes() == 1, 60, "the registered SuperNode to be online")
        assert good.alive()
        assert "Activated node_id" in dep.procs[0].text()
        # The script exec'd Flower, so its PID is the SuperNode's: check what it really runs with.
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{good.popen.pid}/environ").read_text().split("\0") if "=" in item)
        assert environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
        assert environ["FLWR_TELEMETRY_ENABLED"] == "0" and environ["FLWR_DISABLE_UPDATE_CHECK"] == "1"
        assert environ["FLWR_HOME"].startswith(str(tmp_path / "node-node-1"))
        cmdline = Path(f"/proc/{good.popen.pid}/cmdline").read_text().split("\0")
        assert "--allow-runtime-dependency-installation" not in cmdline
        assert "--auth-supernode-private-key" in cmdline and "--insecure" not in cmdline
    finally:
        dep.stop_all()
        assert dep.leftovers() == [], "processes survived the test"


@pytest.mark.timeout(RUN_TIMEOUT)
def test_test_hooks_act_only_at_an_opted_in_node(tmp_path):
    """A hospital's SuperNode (deploy/hospital, no opt-in) refuses a run that carries inject-faults, at
    the first message; a drill node with node config allow-test-faults=true acts on the same hook."""
    dep = Deployment(tmp_path, ["node-1", "node-2"], insecure=True)
    configs = _sites(tmp_path)
    ckpt_dir = tmp_path / "ckpt"
    try:
        dep.start_superlink()
        dep.add_federation()
        hospital = dep.start_supernode("node-1", configs["node-1"])
        drill = dep.start_supernode("node-2", configs["node-2"], allow_test_faults=True)
        wait_for(lambda: dep.online_nodes() == 2, 120, "two SuperNodes online")
        _finish(dep.start_run({"num-rounds": 1, "local-steps": 1, "preset": "tiny", "synth-if-missing": False,
                               "round-timeout": 120.0, "min-sites": 1, "checkpoint-dir": str(ckpt_dir),
                               "site-configs": f"{configs['node-1']},{configs['node-2']}",
                               "inject-faults": "hospital_a:raise@1,hospital_b:raise@1"}))
        statistics, round_one = _lines(ckpt_dir)
        assert list(statistics["sites"]) == ["hospital_b"]
        [refusal] = statistics["failed"].values()
        assert refusal.startswith("client failed: site hospital_a refuses this run and trains nothing")
        assert "allow-test-faults=true" in refusal, refusal
        drilled = round_one["sites"]["hospital_b"]
        assert drilled["status"] == "error" and "injected fault" in drilled["reason"], drilled
        assert round_one["accepted"] == 0 and not round_one["updated"]
        # what each node really runs with (the hospital script exec's Flower: its PID is the SuperNode's)
        hospital_cmd, drill_cmd = (Path(f"/proc/{node.popen.pid}/cmdline").read_text()
                                   for node in (hospital, drill))
        assert "allow-test-faults" not in hospital_cmd and "allow-test-faults=true" in drill_cmd
    finally:
        dep.stop_all()
        assert dep.leftovers() == [], "processes survived the test"


@pytest.mark.timeout(2 * RUN_TIMEOUT + 240)
def test_central_dp_run_stops_cleanly_without_a_site_and_resumes(fed, tmp_path):
    """Accounted client-level DP needs every site in every round (Flower's wrapper raised ValueError when
    a round was configured for fewer, ending the ServerApp): with hospital_c's SuperNode stopped after
    round 1 the run waits for it, stops after its last checkpoint with the reason, and resumes from there
    once the node is back."""
    ckpt_dir = tmp_path / "ckpt"
    dp = {"dp-central": "server-fixed", "dp-noise-multiplier": 0.5, "round-timeout": 60.0, "eval-every": -1}
    run = fed.start_run(_run_config(fed, ckpt_dir, **dp))
    wait_for(lambda: (ckpt_dir / "round_0001.pt").exists() or not run.alive(), RUN_TIMEOUT, "round 1")
    victim = next(p for p in fed.procs if p.name == "supernode-node-3" and p.alive())
    fed.kill(victim, signal.SIGTERM)  # a clean stop: the SuperLink lists the node as gone at once
    try:
        _finish(run)
    finally:  # bring the hospital back (for the resume and the next drill)
        fed.start_supernode("node-3", fed.site_configs["node-3"])
        wait_for(lambda: fed.online_nodes() == 3, 120, "node-3 back online")
    stopped = _lines(ckpt_dir)[-1]["round"]
    assert 1 <= stopped < ROUNDS
    assert (f"Stopping before round {stopped + 1}: client-level DP is accounted for all 3 sites and the node "
            "of hospital_c has not been connected for 60 s") in run.text()
    assert load_checkpoint(ckpt_dir / "ckpt.pt").round == stopped
    resumed = fed.start_run(_run_config(fed, ckpt_dir, **dp, **{"resume-from": str(ckpt_dir)}))
    _finish(resumed)
    lines = _lines(ckpt_dir)
    assert [line["round"] for line in lines] == list(range(ROUNDS + 1))
    assert all(line["updated"] and line["accepted"] == 3 for line in lines[stopped + 1:])
    releases = [line["privacy"]["client_level"]["releases"] for line in lines[1:]]
    assert releases == sorted(releases) and releases[-1] == sum(line["updated"] for line in lines[1:])
    _assert_signed(fed, ckpt_dir)
