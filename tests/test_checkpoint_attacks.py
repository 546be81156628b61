"""Signed checkpoints mean something: attacks on the files a resume or an evaluation loads.

* rollback: an older signed round copied over ``ckpt.pt`` (with its ``.sig``), or an older signed
  ``ckpt.pt`` put back, is refused by ``resume_state`` and by ``clin-jepa evaluate --public-key``;
* another run's signed ``ckpt.pt`` put into this run's folder is refused;
* the bytes decoded are the bytes verified: swapping the file right after verification changes nothing;
* no resource blow-up before parsing: a zip bomb payload is refused before ``torch.load``.
"""

from __future__ import annotations

import hashlib
import io
import resource
import shutil
import zipfile

import numpy as np
import pytest

from clin_jepa.checkpoint import load_checkpoint, verified_loads
from clin_jepa.cli import main as cli
from clin_jepa.data.stats import SiteStatistics, quantile_edges
from clin_jepa.errors import CheckpointError
from clin_jepa.federation import FederationConfig
from clin_jepa.security.certs import PkiLayout, generate_pki
from clin_jepa.security.checkpoints import checkpoint_verifier
from clin_jepa.security.signing import signature_path
from server.state import LATEST, ServerState, resume_state, save_round


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    layout = PkiLayout(tmp_path_factory.mktemp("pki"))
    generate_pki(layout.root, ["localhost"], ["n"])
    return layout


def _disc():
    stats = SiteStatistics.from_arrays({**SiteStatistics.empty().to_arrays(), "n_subjects": np.array([5]),
                                        "n_stays": np.array([5])})
    stats.hist[:16] = 1  # every cell of the 16 original measurements (the catalog's others stay empty)
    return quantile_edges(stats, 10)


def _run(pki, out, rounds=3):
    """A run of ``rounds`` signed rounds in ``out``; returns its config and a copy of each round's
    ``ckpt.pt`` with its signature (the backups an attacker could put back)."""
    cfg = FederationConfig(preset="tiny", num_rounds=5, local_steps=1, hours=24,
                           signing_key=str(pki.signing_key))
    state = ServerState.initial(cfg, _disc())
    backups = {}
    for rnd in range(rounds + 1):
        state.round = rnd
        save_round(state, out, rnd, "warmup", {"round": rnd}, ["a"])
        backups[rnd] = ((out / LATEST).read_bytes(), signature_path(out / LATEST).read_bytes())
    return cfg, backups


def _put(out, name, data, sig):
    (out / name).unlink()  # a hard link to the round file: replace, do not write through it
    (out / name).write_bytes(data)
    signature_path(out / name).write_bytes(sig)


def test_rollback_and_swapped_round_files_are_refused_by_resume(pki, tmp_path):
    cfg, backups = _run(pki, tmp_path)
    assert resume_state(cfg, tmp_path).round == 3  # the honest folder resumes

    _put(tmp_path, LATEST, *backups[1])  # an older signed ckpt.pt (from a backup) put back
    with pytest.raises(CheckpointError, match="round 3 of the same run is signed beside it.*rollback"):
        resume_state(cfg, tmp_path)

    round1 = tmp_path / "round_0001.pt"  # an older signed round file copied over ckpt.pt
    _put(tmp_path, LATEST, round1.read_bytes(), signature_path(round1).read_bytes())
    with pytest.raises(CheckpointError, match="'round' file of round 1.*rollback or swap"):
        resume_state(cfg, tmp_path)

    _put(tmp_path, "round_0003.pt", round1.read_bytes(), signature_path(round1).read_bytes())
    with pytest.raises(CheckpointError, match="rollback or swap"):  # a round file under another name
        resume_state(cfg, tmp_path / "round_0003.pt")


def test_another_runs_checkpoint_is_refused(pki, tmp_path):
    cfg, _ = _run(pki, tmp_path / "a")
    _run(pki, tmp_path / "b", rounds=4)  # a later round of another run, signed by the same key
    b = tmp_path / "b" / LATEST
    _put(tmp_path / "a", LATEST, b.read_bytes(), signature_path(b).read_bytes())
    with pytest.raises(CheckpointError, match="signed rounds beside it belong to run"):
        resume_state(cfg, tmp_path / "a")


def test_evaluate_refuses_a_rolled_back_checkpoint_before_reading_data(pki, tmp_path, capsys):
    _, backups = _run(pki, tmp_path / "run")
    _put(tmp_path / "run", LATEST, *backups[0])
    site = tmp_path / "site.yaml"
    site.write_text("site: a\n")  # never read: the checkpoint is refused first
    code = cli(["evaluate", str(tmp_path / "run" / LATEST), "--sites", str(site), "--out",
                str(tmp_path / "report"), "--public-key", str(pki.signing_pub), "--quiet"])
    assert code == 2 and "rollback" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_the_bytes_decoded_are_the_bytes_verified(pki, tmp_path):
    cfg, backups = _run(pki, tmp_path)
    latest = tmp_path / LATEST
    verify = checkpoint_verifier(pki.signing_pub)

    def verify_then_swap(path, raw):
        verify(path, raw)
        _put(tmp_path, LATEST, *backups[0])  # the attacker wins the race right after verification

    with verified_loads(verify_then_swap):
        ckpt = load_checkpoint(latest)
    assert ckpt.round == 3  # decoded from the verified bytes, not from the swapped file
    with verified_loads(verify), pytest.raises(CheckpointError, match="rollback"):
        load_checkpoint(latest)  # and the swapped file itself is refused


def test_zip_bomb_is_refused_before_torch_load(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (256 << 20))  # ~0.25 MB on disk, 256 MiB inflated
    data = buf.getvalue()
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(b"CLINJEPA-CKPT 1 " + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: no inflation
    assert len(data) < 2 << 20
    shutil.rmtree(tmp_path, ignore_errors=True)
