"""The ServerApp's checkpoints are signed as they are written, and a resume refuses a bad signature."""

from __future__ import annotations

import subprocess

import pytest
from deploy_harness import BIN

from clin_jepa.config import load_site_config
from clin_jepa.data.stats import compute_site_statistics, quantile_edges
from clin_jepa.errors import CheckpointError
from clin_jepa.federation import FederationConfig
from clin_jepa.security.certs import PkiLayout, generate_pki
from clin_jepa.security.signing import signature_path, verify_file
from server.state import LATEST, ServerState, resume_state, save_round


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("signed_rounds")
    done = subprocess.run([str(BIN / "clin-jepa"), "synth", "--out", str(root / "synth"), "--sites", "1",
                           "--patients", "20", "--seed", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pki = PkiLayout(root / "pki")
    generate_pki(pki.root, ["localhost"], ["n"])
    disc = quantile_edges(compute_site_statistics(load_site_config(root / "synth" / "hospital_a.yaml")))
    return pki, disc


def _save(cfg, disc, out):
    state = ServerState.initial(cfg, disc)
    save_round(state, out, 0, "statistics", {"round": 0}, ["hospital_a"])
    return state


def test_round_checkpoints_are_signed_and_resume_verifies(setup, tmp_path):
    pki, disc = setup
    cfg = FederationConfig(preset="tiny", num_rounds=5, local_steps=1, signing_key=str(pki.signing_key))
    _save(cfg, disc, tmp_path)
    for name in ("round_0000.pt", LATEST):
        verify_file(tmp_path / name, pki.node_signing_pub("n"))
    assert resume_state(cfg, tmp_path).round == 0

    latest = tmp_path / LATEST
    data = bytearray(latest.read_bytes())
    data[-10] ^= 0xFF
    latest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="failed signature verification"):
        resume_state(cfg, tmp_path)
    signature_path(latest).unlink()
    with pytest.raises(CheckpointError, match="unsigned"):
        resume_state(cfg, tmp_path)


def test_without_signing_key_nothing_is_signed(setup, tmp_path):
    _, disc = setup
    _save(FederationConfig(preset="tiny", num_rounds=5, local_steps=1), disc, tmp_path)
    assert (tmp_path / LATEST).exists() and not list(tmp_path.glob("*.sig"))
