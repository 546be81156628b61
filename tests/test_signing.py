"""Checkpoint signatures: valid files load; unsigned, tampered or foreign-signed files are refused."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clin_jepa.cli import main
from clin_jepa.errors import CheckpointError
from clin_jepa.security.certs import PkiLayout, generate_pki
from clin_jepa.security.signing import sign_file, signature_path, verify_file


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    a = PkiLayout(tmp_path_factory.mktemp("pki_a"))
    b = PkiLayout(tmp_path_factory.mktemp("pki_b"))
    generate_pki(a.root, ["localhost"], ["n"])
    generate_pki(b.root, ["localhost"], ["n"])
    return a, b


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "round_0003.pt"
    path.write_bytes(os.urandom(3 * (1 << 20) + 17))  # spans several hashing chunks
    return path


def test_roundtrip_and_signature_is_standard_ecdsa_sha256(keys, ckpt):
    a, _ = keys
    sig = sign_file(ckpt, a.signing_key)
    assert sig == signature_path(ckpt) and sig.name == "round_0003.pt.sig"
    verify_file(ckpt, a.signing_pub)
    verify_file(ckpt, a.node_signing_pub("n"))  # the copy each hospital receives
    verify_file(ckpt, a.signing_key)  # the ServerApp checks a resumed checkpoint with its own key
    # Independent check: the stored signature is plain ECDSA/SHA-256 over (prefix, context, file digest).
    doc = json.loads(sig.read_text())
    pub = serialization.load_pem_public_key(a.signing_pub.read_bytes())
    context = json.dumps(doc["context"], sort_keys=True, separators=(",", ":")).encode()
    message = b"clin-jepa signed file v2\n" + context + b"\n" + hashlib.sha256(ckpt.read_bytes()).digest()
    pub.verify(base64.b64decode(doc["signature"]), message, ec.ECDSA(hashes.SHA256()))


def test_unsigned_checkpoint_is_refused(keys, ckpt):
    a, _ = keys
    with pytest.raises(CheckpointError, match="unsigned"):
        verify_file(ckpt, a.signing_pub)


@pytest.mark.parametrize("where", [0, -1, 1 << 20])
def test_one_flipped_byte_is_refused(keys, ckpt, where):
    a, _ = keys
    sign_file(ckpt, a.signing_key)
    data = bytearray(ckpt.read_bytes())
    data[where] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bytes changed after it was signed"):
        verify_file(ckpt, a.signing_pub)


def test_truncated_or_appended_file_is_refused(keys, ckpt):
    a, _ = keys
    sign_file(ckpt, a.signing_key)
    original = ckpt.read_bytes()
    for changed in (original[:-1], original + b"\0"):
        ckpt.write_bytes(changed)
        with pytest.raises(CheckpointError, match="failed signature verification"):
            verify_file(ckpt, a.signing_pub)


def test_signature_by_another_key_is_refused(keys, ckpt):
    a, b = keys
    sign_file(ckpt, b.signing_key)
    with pytest.raises(CheckpointError, match="not by the coordinator key"):
        verify_file(ckpt, a.signing_pub)
    # Forging the key id does not help: the signature itself is checked.
    sig = signature_path(ckpt)
    doc = json.loads(sig.read_text())
    good = json.loads(sign_file(ckpt, a.signing_key).read_text())
    doc["key_id"] = good["key_id"]
    sig.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="failed signature verification"):
        verify_file(ckpt, a.signing_pub)


def test_malformed_signature_and_wrong_key_files(keys, ckpt, tmp_path):
    a, _ = keys
    signature_path(ckpt).write_text("not json")
    with pytest.raises(CheckpointError, match="malformed"):
        verify_file(ckpt, a.signing_pub)
    with pytest.raises(CheckpointError, match="P-256"):
        sign_file(ckpt, a.ca_key)  # the CA key is P-384: not the signing key
    with pytest.raises(CheckpointError, match="not a PEM public key"):
        verify_file(ckpt, a.node_pub("n"))  # an OpenSSH node key is not the coordinator key
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_file(tmp_path / "missing.pt", a.signing_pub)


def test_sign_command(keys, ckpt, capsys):
    a, b = keys
    assert main(["sign", str(ckpt), "--key", str(a.signing_key)]) == 0
    assert main(["sign", str(ckpt), "--verify", "--key", str(a.signing_pub)]) == 0
    assert "signature valid" in capsys.readouterr().out
    assert main(["sign", str(ckpt), "--verify", "--key", str(b.signing_pub)]) == 2
    assert "refusing to load" in capsys.readouterr().err.lower()


def test_evaluate_refuses_unsigned_or_tampered_checkpoint_before_loading(keys, ckpt, tmp_path, capsys):
    """`clin-jepa evaluate --public-key` checks CKPT.sig first (the file here is not even a checkpoint)."""
    a, _ = keys
    site = tmp_path / "site.yaml"
    site.write_text("site: a\n")
    argv = ["evaluate", str(ckpt), "--sites", str(site), "--out", str(tmp_path / "report"),
            "--public-key", str(a.signing_pub), "--quiet"]
    assert main(argv) == 2
    assert "unsigned" in capsys.readouterr().err
    sign_file(ckpt, a.signing_key)
    ckpt.write_bytes(ckpt.read_bytes() + b"x")
    assert main(argv) == 2
    assert "failed signature verification" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
