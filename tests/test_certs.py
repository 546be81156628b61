"""`clin-jepa certs`: files Flower 1.42 can read, private keys 0600, no silent overwrite."""

from __future__ import annotations

import argparse
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from clin_jepa.cli import main
from clin_jepa.errors import ConfigError
from clin_jepa.security.certs import PkiLayout, generate_pki

NODES = ["node-1", "node-2"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    written = generate_pki(root, ["superlink.example.org", "10.1.2.3"], NODES)
    return PkiLayout(root), written


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_0600_and_public_files_readable(pki):
    layout, written = pki
    private = {layout.ca_key, layout.server_key, layout.signing_key, *(layout.node_key(n) for n in NODES)}
    assert private <= set(written)
    for path in written:
        assert path.exists()
        if path in private:
            assert _mode(path) == 0o600, path
        else:
            assert _mode(path) & 0o077 == 0o044, path  # group/other may read public material


def test_server_certificate_chains_to_ca_with_requested_sans(pki):
    layout, _ = pki
    ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"superlink.example.org", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"10.1.2.3", "127.0.0.1", "::1"}
    store = Store([ca])
    for name in ("superlink.example.org", "localhost"):
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        chain = verifier.verify(server, [])
        assert chain[-1] == ca
    wrong = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.example.org"))
    with pytest.raises(x509.verification.VerificationError):
        wrong.verify(server, [])
    # The key file matches the certificate.
    key = serialization.load_pem_private_key(layout.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()


def _serve_once(layout: PkiLayout, sock: socket.socket) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(layout.server_cert, layout.server_key)
    try:
        conn, _ = sock.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")
    except (ssl.SSLError, OSError):
        pass


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("server_hostname", "accepted"), [("localhost", True), ("127.0.0.1", True),
                                                            ("evil.example.org", False)])
def test_real_tls_handshake_on_loopback(pki, server_hostname, accepted):
    layout, _ = pki
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(10)
        server = threading.Thread(target=_serve_once, args=(layout, sock), daemon=True)
        server.start()
        client_ctx = ssl.create_default_context(cafile=str(layout.node_ca_cert("node-1")))
        with socket.create_connection(sock.getsockname(), timeout=10) as raw:
            if accepted:
                with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    assert tls.recv(2) == b"ok"
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    client_ctx.wrap_socket(raw, server_hostname=server_hostname)
        server.join(10)


def test_node_keys_load_with_flowers_own_readers(pki):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    layout, _ = pki
    seen = set()
    for name in NODES:
        args = argparse.Namespace(auth_supernode_private_key=str(layout.node_key(name)),
                                  auth_supernode_public_key=None)
        private, public = _try_setup_client_authentication(args)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        registered = try_load_public_key(layout.node_pub(name))
        assert registered == public_key_to_bytes(public)  # the key the SuperLink will look up
        seen.add(registered)
    assert len(seen) == len(NODES)


def test_signing_key_is_p256_and_matches_public(pki):
    layout, _ = pki
    key = serialization.load_pem_private_key(layout.signing_key.read_bytes(), None)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == serialization.load_pem_public_key(layout.signing_pub.read_bytes())
    assert layout.node_signing_pub("node-2").read_bytes() == layout.signing_pub.read_bytes()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "pki"
    assert main(["certs", "--out", str(out), "--host", "localhost", "--nodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "[private 0600]" in printed and str(PkiLayout(out).node_key("node-2")) in printed
    before = PkiLayout(out).node_key("node-1").read_bytes()
    assert main(["certs", "--out", str(out), "--host", "localhost", "--nodes", "2"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert PkiLayout(out).node_key("node-1").read_bytes() == before
    assert main(["certs", "--out", str(out), "--host", "localhost", "--nodes", "2", "--force"]) == 0
    assert PkiLayout(out).node_key("node-1").read_bytes() != before
    assert _mode(PkiLayout(out).node_key("node-1")) == 0o600


def test_named_nodes_and_bad_input_write_nothing(tmp_path):
    out = tmp_path / "pki"
    assert main(["certs", "--out", str(out), "--host", "h.example", "--node", "hosp_a",
                 "--node", "hosp_b"]) == 0
    assert PkiLayout(out).node_pub("hosp_b").read_text().startswith("ecdsa-sha2-nistp384 ")
    empty = tmp_path / "empty"
    with pytest.raises(ConfigError, match="neither an IP address"):
        generate_pki(empty, ["bad host!"], ["n"])
    for names in (["a", "a"], [".."], ["../x"]):
        with pytest.raises(ConfigError, match="unique"):
            generate_pki(empty, ["ok.example"], names)
    assert not empty.exists()
