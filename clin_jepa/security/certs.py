"""A small private PKI for one federation: CA, SuperLink TLS certificate, node keys, signing key.

What Flower 1.42 reads (checked in its source, not guessed):

* ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile superlink/server.crt --ssl-keyfile
  superlink/server.key``: PEM files handed to uvicorn/``ssl`` (one HTTPS port serves the Fleet, Control
  and Runtime APIs). The SuperLink's own SuperExec connects back to the Runtime API on the loopback
  address, verifying with ``--ssl-ca-certfile``, so the server certificate always names
  ``localhost``/``127.0.0.1``/``::1`` besides the hosts asked for.
* ``flower-supernode --root-certificates ca.crt``: the CA that signed the SuperLink certificate; the
  client checks the host name, so ``--superlink HOST:PORT`` must use one of the certificate's SANs.
* ``flower-supernode --auth-supernode-private-key node.key``: read with
  ``load_ssh_private_key`` and must be an EC key, i.e. an OpenSSH-format ECDSA private key.
* ``flwr supernode register node.pub``: read with ``load_ssh_public_key``, an EC key on a NIST curve
  (OpenSSH ``ecdsa-sha2-nistp384 ...`` line). The SuperLink (``--enable-supernode-auth``) accepts a
  SuperNode only once its public key is registered.

The coordinator signing key (ECDSA P-256, PKCS#8 PEM) signs checkpoints; see ``signing.py``.
Every private key is written with mode 0600; nothing is overwritten unless ``force`` is set.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clin_jepa.errors import ConfigError
from clin_jepa.io import atomic_write_bytes

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
SERVER_DAYS = 825
MAX_NODES = 1000
_NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no leading dot: ".." would escape nodes/
# A hostname label: letters, digits, hyphens, not starting/ending with a hyphen (RFC 1123).
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class PkiLayout:
    """Where each file lives under ``root``; the one place that knows the layout.

    Each ``nodes/<name>/`` folder is self-contained: it is what the coordinator hands to that hospital
    (its private key, its public key, the CA certificate and the coordinator's public signing key).
    """

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink" / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    @property
    def signing_key(self) -> Path:
        return self.root / "coordinator" / "signing.key"

    @property
    def signing_pub(self) -> Path:
        return self.root / "coordinator" / "signing.pub"

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def node_key(self, name: str) -> Path:
        return self.node_dir(name) / "node.key"

    def node_pub(self, name: str) -> Path:
        return self.node_dir(name) / "node.pub"

    def node_ca_cert(self, name: str) -> Path:
        return self.node_dir(name) / "ca.crt"

    def node_signing_pub(self, name: str) -> Path:
        return self.node_dir(name) / "coordinator_signing.pub"

    def all_paths(self, node_names: list[str]) -> list[Path]:
        paths = [self.ca_cert, self.ca_key, self.server_cert, self.server_key,
                 self.signing_key, self.signing_pub]
        for name in node_names:
            paths += [self.node_key(name), self.node_pub(name), self.node_ca_cert(name),
                      self.node_signing_pub(name)]
        return paths


def default_node_names(n_nodes: int) -> list[str]:
    """``node-1`` … ``node-N``."""
    if not 1 <= n_nodes <= MAX_NODES:
        raise ConfigError(f"--nodes must be between 1 and {MAX_NODES}, got {n_nodes}.")
    return [f"node-{i}" for i in range(1, n_nodes + 1)]


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or not all(_HOST_LABEL.match(label) for label in labels):
        raise ConfigError(
            f"--host {host!r} is neither an IP address nor a valid DNS name; give the name or address "
            "the hospitals will use to reach the SuperLink (e.g. --host superlink.example.org)."
        )
    return x509.DNSName(host.rstrip(".").lower())


def subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts`` plus the loopback names, without duplicates, in a stable order."""
    entries: list[x509.GeneralName] = []
    for host in [*hosts, *LOOPBACK_NAMES]:
        entry = _san_entry(host.strip())
        if entry not in entries:
            entries.append(entry)
    return entries


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _make_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Clin-JEPA federation CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew between sites
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str], now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=True, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _node_key_pair() -> tuple[bytes, bytes]:
    """OpenSSH private key and ``ecdsa-sha2-nistp384`` public line, as Flower's SuperNode reads them."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def generate_pki(
    out_dir: str | Path, hosts: list[str], node_names: list[str], force: bool = False
) -> list[Path]:
    """Create a fresh CA, SuperLink certificate, node key pairs and signing key under ``out_dir``.

    Returns the written paths in a stable order. Invariants: private keys are mode 0600 from the
    moment they exist (temp file created 0600, renamed into place); if any target exists and
    ``force`` is false nothing at all is written; every certificate chains to ``ca.crt``.
    """
    if not hosts:
        raise ConfigError("give at least one --host: the DNS name or IP the hospitals use for the SuperLink.")
    if len(node_names) > MAX_NODES:
        raise ConfigError(f"at most {MAX_NODES} nodes per federation; got {len(node_names)}.")
    bad = [n for n in node_names if not _NODE_NAME.match(n)]
    if bad or len(set(node_names)) != len(node_names):
        raise ConfigError(f"node names must be unique, made of letters, digits, '_', '.', '-', and not start "
                          f"with '.' or '-'; got {node_names}.")
    subject_alt_names(hosts)  # validate every host before writing anything
    layout = PkiLayout(Path(out_dir))
    targets = layout.all_paths(node_names)
    _check_writable_tree(Path(out_dir), targets)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"refusing to overwrite {len(existing)} existing file(s) in {out_dir} (e.g. {existing[0]}); "
            "new keys would lock out every node registered with the old ones. Pass --force to replace "
            "them, or choose another --out."
        )

    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _make_ca(now)
    server_key, server_cert = _make_server_cert(ca_key, ca_cert, hosts, now)
    signing_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    signing_pub = _pem_public(signing_key.public_key())

    files: list[tuple[Path, bytes, int]] = [
        (layout.ca_cert, ca_pem, PUBLIC_MODE),
        (layout.ca_key, _pem_private(ca_key), PRIVATE_MODE),
        (layout.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE),
        (layout.server_key, _pem_private(server_key), PRIVATE_MODE),
        (layout.signing_key, _pem_private(signing_key), PRIVATE_MODE),
        (layout.signing_pub, signing_pub, PUBLIC_MODE),
    ]
    for name in node_names:
        private, public = _node_key_pair()
        files += [
            (layout.node_key(name), private, PRIVATE_MODE),
            (layout.node_pub(name), public, PUBLIC_MODE),
            (layout.node_ca_cert(name), ca_pem, PUBLIC_MODE),
            (layout.node_signing_pub(name), signing_pub, PUBLIC_MODE),
        ]
    written: list[Path] = []
    try:
        for path, data, mode in files:
            atomic_write_bytes(path, data, mode=mode)
            written.append(path)
    except OSError as exc:  # a half-made PKI (a CA key without its certificates) is worse than none
        if not force:
            for path in written:
                path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {exc.filename or out_dir}: {exc.strerror}; "
                          f"{'removed the files written so far' if not force else 'the PKI is incomplete'}"
                          ) from None
    return [path for path, _, _ in files]


def _check_writable_tree(root: Path, targets: list[Path]) -> None:
    """Refuse before writing anything when a folder the PKI needs is a file (or a target a folder)."""
    for target in targets:
        if target.is_dir():
            raise ConfigError(f"{target} is a folder; the PKI needs a file there. Choose another --out.")
        for parent in [target.parent, *target.parent.parents]:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"{parent} exists and is not a folder; the PKI needs a folder there. "
                                  f"Choose another --out or move that file.")
            if parent == root or parent == parent.parent:
                break
