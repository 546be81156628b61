"""Detached signatures for checkpoint files, made with the coordinator's ECDSA P-256 key.

``sign_file(ckpt, key, context)`` writes ``ckpt.sig`` next to the file: a small JSON document holding the
ECDSA-P256/SHA-256 signature (base64, DER) over the file's bytes *and* a context (the ServerApp binds
run id, round and role: ``round`` for ``round_XXXX.pt``, ``latest`` for ``ckpt.pt``), the file's SHA-256
and the signing key's id. ``clin_jepa.security.checkpoints`` turns the context into refusals of
rollbacks and of another run's checkpoint. ``verify_file(ckpt, pub)`` checks it and raises
:class:`CheckpointError` for a missing, unsigned, tampered, or foreign-key-signed file. The file is
hashed in chunks (checkpoints of the ``base`` preset are hundreds of MB) and a SHA-256 of (context, file
digest) is signed as a prehash.

The SHA-256 in the ``.sig`` is informative only (it lets the error say *that* the bytes changed);
trust comes from the signature alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from clin_jepa.errors import CheckpointError
from clin_jepa.io import atomic_write_text

ALGORITHM = "ecdsa-p256-sha256"
SIGNED_PREFIX = b"clin-jepa signed file v2\n"
SIG_SUFFIX = ".sig"
_CHUNK = 1 << 20


def signature_path(path: str | Path) -> Path:
    """The detached signature file of ``path``: ``<path>.sig``."""
    path = Path(path)
    return path.with_name(path.name + SIG_SUFFIX)


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} does not exist.") from exc
    return digest.digest()


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the DER public key: names the key in messages."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _check_curve(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey, path: Path) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise CheckpointError(
            f"{path} holds an EC key on {key.curve.name}; checkpoint signing uses P-256 (secp256r1), "
            "the coordinator/signing.key written by `clin-jepa certs`."
        )


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Load the coordinator's PEM private key; any problem is a CheckpointError naming the file."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CheckpointError(f"signing key {path} does not exist (make it with `clin-jepa certs`).") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CheckpointError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CheckpointError(f"{path} is not an EC private key; use coordinator/signing.key.")
    _check_curve(key, path)
    return key


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Load the coordinator's PEM public key (``coordinator/signing.pub``).

    The private ``signing.key`` is accepted too (its public half is used), so the ServerApp can check
    a checkpoint it resumes from with the one key path it already has.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if b"PRIVATE KEY-----" in data:
            return load_private_key(path).public_key()
        key = serialization.load_pem_public_key(data)
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"public signing key {path} does not exist; every site needs the coordinator's "
            "coordinator_signing.pub to accept checkpoints."
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CheckpointError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CheckpointError(f"{path} is not an EC public key; use coordinator/signing.pub.")
    _check_curve(key, path)
    return key


def _signed_digest(file_digest: bytes, context: dict[str, Any]) -> bytes:
    """What the signature covers: the file's SHA-256 *and* its context (run, round, role), so a signed
    file cannot be replayed under another name, round or run."""
    blob = json.dumps(context, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(SIGNED_PREFIX + blob + b"\n" + file_digest).digest()


def sign_file(path: str | Path, private_key_path: str | Path, context: dict[str, Any] | None = None) -> Path:
    """Sign ``path`` with the PEM key at ``private_key_path``; write and return ``<path>.sig``.

    ``context`` (JSON values: e.g. ``{"run": id, "round": 3, "role": "latest"}``) is bound into the
    signature. Call it after the checkpoint has been written completely (after the atomic rename): the
    signature covers exactly the bytes on disk at that moment.
    """
    path = Path(path)
    key = load_private_key(private_key_path)
    digest = _file_sha256(path)
    context = dict(context or {})
    signature = key.sign(_signed_digest(digest, context), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    doc = {
        "algorithm": ALGORITHM,
        "file": path.name,
        "sha256": digest.hex(),
        "key_id": key_id(key.public_key()),
        "context": context,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return atomic_write_text(signature_path(path), json.dumps(doc, indent=1) + "\n")


def _read_signature(path: Path) -> dict[str, str]:
    sig_path = signature_path(path)
    if not sig_path.exists():
        raise CheckpointError(
            f"checkpoint {path} is unsigned: {sig_path.name} is missing next to it. Refusing to load it; "
            "only checkpoints signed with the coordinator key are accepted (`clin-jepa sign`)."
        )
    try:
        doc = json.loads(sig_path.read_text(encoding="utf-8"))
        if doc["algorithm"] != ALGORITHM:
            raise ValueError(f"algorithm {doc['algorithm']!r} is not {ALGORITHM!r}")
        doc["signature_bytes"] = base64.b64decode(doc["signature"], validate=True)
        return doc
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise CheckpointError(f"signature file {sig_path} is malformed ({exc}); refusing {path}.") from exc


def verify_file(path: str | Path, public_key_path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The signed context iff ``<path>.sig`` is a valid signature by that key of ``data`` (the bytes the
    caller is about to load; default: the file as it is now) and the context stored with it.

    Raises CheckpointError (one paragraph, naming the file) when the checkpoint or its signature is
    missing, the signature is malformed, was made by another key, or the bytes or context changed.
    """
    path = Path(path)
    public_key = load_public_key(public_key_path)
    if data is None and not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file.")
    doc = _read_signature(path)
    digest = _file_sha256(path) if data is None else hashlib.sha256(data).digest()
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise CheckpointError(f"signature file of {path} has a malformed context; refusing it.")
    expected_id = key_id(public_key)
    if doc.get("key_id") != expected_id:
        raise CheckpointError(
            f"checkpoint {path} was signed by key {doc.get('key_id')!r}, not by the coordinator key "
            f"{expected_id} in {public_key_path}; refusing to load it."
        )
    try:
        public_key.verify(doc["signature_bytes"], _signed_digest(digest, context),
                          ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature as exc:
        changed = doc.get("sha256") != digest.hex()
        why = "its bytes changed after it was signed" if changed else "the signature does not match"
        raise CheckpointError(
            f"checkpoint {path} failed signature verification ({why}): it may have been tampered with "
            "or partially written. Refusing to load it."
        ) from exc
    return context
