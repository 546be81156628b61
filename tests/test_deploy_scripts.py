"""The deploy scripts refuse to start half-configured, and insecure mode is loud and explicit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from deploy_harness import BIN, DEPLOY, free_port, related_pids, wait_for

from clin_jepa.security.certs import generate_pki

pytestmark = pytest.mark.timeout(60)


def _run(argv, tmp_path, **env):
    full_env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=full_env, cwd=tmp_path)


def test_superlink_requires_certificates(tmp_path):
    done = _run([str(DEPLOY / "coordinator/start-superlink.sh"), "--state", str(tmp_path / "s")], tmp_path)
    assert done.returncode == 2 and "--certs DIR is required" in done.stderr
    done = _run([str(DEPLOY / "coordinator/start-superlink.sh"), "--certs", str(tmp_path)], tmp_path)
    assert done.returncode == 2 and "CA certificate not found" in done.stderr


def test_supernode_requires_keys_and_site_config(tmp_path):
    script = str(DEPLOY / "hospital/start-supernode.sh")
    site = tmp_path / "site.yaml"
    site.write_text("site: a\n")
    done = _run([script, "--superlink", "localhost:1", "--site-config", str(site)], tmp_path)
    assert done.returncode == 2 and "--keys DIR is required" in done.stderr
    done = _run([script, "--superlink", "localhost:1", "--site-config", str(tmp_path / "nope.yaml"),
                 "--keys", str(tmp_path)], tmp_path)
    assert done.returncode == 2 and "site config not found" in done.stderr
    generate_pki(tmp_path / "pki", ["localhost"], ["n"])
    (tmp_path / "pki/nodes/n/node.key").unlink()
    done = _run([script, "--superlink", "localhost:1", "--site-config", str(site),
                 "--keys", str(tmp_path / "pki/nodes/n")], tmp_path)
    assert done.returncode == 2 and "node private key not found" in done.stderr
    done = _run([script, "--superlink", "localhost:1", "--site-config", str(site), "--min-patients", "0"],
                tmp_path)
    assert done.returncode == 2 and "--min-patients must be a whole number" in done.stderr


def test_insecure_supernode_warns_loudly(tmp_path):
    """--insecure starts Flower without TLS only after printing the warning banner."""
    site = tmp_path / "site.yaml"
    site.write_text("site: a\n")
    argv = [str(DEPLOY / "hospital/start-supernode.sh"), "--insecure", "--superlink",
            f"127.0.0.1:{free_port()}", "--site-config", str(site), "--state", str(tmp_path / "st"),
            "--runtime-port", str(free_port())]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)},
                            start_new_session=True)
    try:
        head = "".join(proc.stdout.readline() for _ in range(4))
    finally:
        for pid in related_pids([proc.pid], [str(tmp_path)]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited between the listing and the kill
                pass
        proc.wait(timeout=20)
    wait_for(lambda: not related_pids([], [str(tmp_path)]), 20, "the SuperNode's processes to exit")
    assert "WARNING: INSECURE MODE (SuperNode)" in head and "TLS is OFF" in head


def test_add_federation_writes_a_connection_flower_reads(tmp_path):
    from clin_jepa.security.certs import PkiLayout

    generate_pki(tmp_path / "pki", ["localhost"], ["n"])
    home = tmp_path / "flwr-home"
    argv = [sys.executable, str(DEPLOY / "coordinator/add-federation.py"), "site-fed", "--address",
            "localhost:9093", "--ca", str(PkiLayout(tmp_path / "pki").ca_cert)]
    done = _run(argv, tmp_path, FLWR_HOME=str(home))
    assert done.returncode == 0, done.stderr
    read = _run([sys.executable, "-c", "from flwr.cli.flower_config import read_superlink_connection as r;"
                 "c = r('site-fed'); print(c.address, c.root_certificates, c.insecure)"],
                tmp_path, FLWR_HOME=str(home))
    assert read.stdout.split() == ["localhost:9093", str(tmp_path / "pki/ca.crt"), "False"]
    done = _run([sys.executable, str(DEPLOY / "coordinator/add-federation.py"), "x", "--address", "a:1"],
                tmp_path, FLWR_HOME=str(home))
    assert done.returncode != 0 and "exactly one of --ca" in done.stderr
