"""mtls: server endpoints: client certificates required, checked, and shown to handlers."""

from __future__ import annotations

import ssl as stdlib_ssl
import socket

import pytest
import pytest_twisted
from conftest import _pem_key, issue_certificate, make_ca
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from sockapp.app import App
from sockapp.client import connect
from sockapp.server import AppFactory
from sockapp.tls import load_ca_certificates

TIMEOUT = 30


def _client(ca, common_name: str, expired: bool = False):
    names = [x509.DNSName(f"{common_name}.example"), x509.UniformResourceIdentifier(f"spiffe://test/{common_name}")]
    return issue_certificate(ca, common_name, names, expired=expired)


@pytest.fixture(scope="module")
def clients(tmp_path_factory, tls_files):
    folder = tmp_path_factory.mktemp("mtls")
    ours, theirs = make_ca("client CA"), make_ca("another CA")
    pem = serialization.Encoding.PEM
    (folder / "clients-ca.pem").write_bytes(ours[1].public_bytes(pem))
    cas = folder / "cas"
    cas.mkdir()
    (cas / "a.pem").write_bytes(ours[1].public_bytes(pem))
    (cas / "its.key").write_bytes(_pem_key(ours[0]))  # a key beside it: skipped, not an error
    files = {"ca": folder / "clients-ca.pem", "ca-dir": cas}
    for name, (key, cert) in {
        "alice": _client(ours, "alice"),
        "mallory": _client(theirs, "mallory"),
        "expired": _client(ours, "old", expired=True),
    }.items():
        (folder / f"{name}.key").write_bytes(_pem_key(key))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        files[name] = (folder / f"{name}.pem", folder / f"{name}.key")
    return files


def whoami_app() -> App:
    app = App("who")

    @app.action("whoami")
    def whoami(value, context):
        """Who the client's certificate says it is."""
        certificate = context.client_certificate
        return None if certificate is None else [certificate.common_name, list(certificate.dns_names), list(certificate.uri_names)]

    return app


async def listen_mtls(tls_files, ca, metrics=None) -> int:
    description = (
        f"mtls:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}:caCerts={ca}"
    )
    factory = AppFactory(whoami_app(), reactor=reactor, metrics=metrics)
    port = await serverFromString(reactor, description).listen(factory)
    return port


def client_endpoint(tls_files, port: int, who=None) -> str:
    line = f"tls:127.0.0.1:{port}:trustRoots={tls_files['trust']}"
    if who is not None:
        certificate, key = who
        line += f":certificate={certificate}:privateKey={key}"
    return line


@pytest.mark.parametrize("ca", ["ca", "ca-dir"])
@pytest_twisted.ensureDeferred
async def test_a_client_with_a_certificate_from_the_ca_is_served_and_known_to_handlers(tls_files, clients, ca):
    port = await listen_mtls(tls_files, clients[ca])
    try:
        client = await connect(reactor, client_endpoint(tls_files, port.getHost().port, clients["alice"]))
        who = await client.call("whoami").addTimeout(TIMEOUT, reactor)
        assert who == ["alice", ["alice.example"], ["spiffe://test/alice"]]
        await client.close()
    finally:
        await port.stopListening()


def handshake(port: int, tls_files, who=None, maximum=None) -> str:
    """A blocking TLS client: 'ok' if a request is answered, else the error's name."""
    context = stdlib_ssl.create_default_context(cafile=str(tls_files["ca"]))
    if who is not None:
        context.load_cert_chain(str(who[0]), str(who[1]))
    if maximum is not None:
        context.minimum_version = stdlib_ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\x00\x00")  # an empty header: the server answers with an error frame
                return "ok" if tls.recv(65536) else "closed"
    except (stdlib_ssl.SSLError, ConnectionError, OSError) as e:
        return type(e).__name__


@pytest.mark.parametrize("who", [None, "mallory", "expired"])
@pytest_twisted.ensureDeferred
async def test_no_certificate_another_cas_or_an_expired_one_fails_the_handshake(tls_files, clients, who):
    from twisted.internet.threads import deferToThread

    port = await listen_mtls(tls_files, clients["ca"])
    try:
        number = port.getHost().port
        refused = await deferToThread(handshake, number, tls_files, clients[who] if who else None)
        assert refused != "ok"
        # and a good client on the same server goes on being served
        assert await deferToThread(handshake, number, tls_files, clients["alice"]) == "ok"
    finally:
        await port.stopListening()


@pytest.mark.parametrize("who, why", [(None, "no-certificate"), ("mallory", "certificate-refused"), ("expired", "certificate-refused"), ("plain", "not-tls")])
@pytest_twisted.ensureDeferred
async def test_a_failed_handshake_is_one_log_line_and_counted_by_reason(tls_files, clients, who, why):
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread
    from twisted.logger import globalLogPublisher

    from sockapp.metrics import ServerMetrics

    metrics = ServerMetrics(process=False)
    events = []
    globalLogPublisher.addObserver(events.append)
    port = await listen_mtls(tls_files, clients["ca"], metrics)
    try:
        number = port.getHost().port
        if who == "plain":
            await deferToThread(plain_request, number)
        else:
            await deferToThread(handshake, number, tls_files, clients[who] if who else None)
        for _ in range(100):  # until the server has seen the connection end (bounded)
            if sum(metrics.tls_handshake_failures.values()):
                break
            await deferLater(reactor, 0.05)
    finally:
        globalLogPublisher.removeObserver(events.append)
        await port.stopListening()
    assert metrics.tls_handshake_failures[why] == 1 and sum(metrics.tls_handshake_failures.values()) == 1
    lines = [e for e in events if "TLS handshake failed" in e.get("log_format", "")]
    assert len(lines) == 1 and lines[0]["why"] == why and lines[0]["peer"].startswith("127.0.0.1:")
    assert not [e for e in events if "log_failure" in e]  # no traceback


def plain_request(port: int) -> None:
    """A peer that does not speak TLS: a plain frame, then whatever comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\x00\x10" + b"{" * 16)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


def test_protocol_versions_below_tls_1_2_are_off(tls_files, clients):
    """Checked on the context itself: this machine's OpenSSL refuses TLS 1.1 on its own, so a
    TLS 1.1 client would be refused with or without sockapp's limit."""
    from OpenSSL import SSL

    from sockapp.tls import mtls_options

    context = mtls_options(str(tls_files["key"]), str(tls_files["cert"]), str(clients["ca"])).getContext()
    current = context.set_options(0)  # adds nothing; returns the options in force
    assert current & SSL.OP_NO_TLSv1 and current & SSL.OP_NO_TLSv1_1


def test_ca_files_hold_certificates_and_a_bad_one_is_a_one_line_error(tmp_path, clients):
    assert len(load_ca_certificates(str(clients["ca-dir"]))) == 1  # the key beside it is skipped
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_ca_certificates(str(tmp_path / "empty.pem"))
    with pytest.raises(ValueError, match="cannot read"):
        load_ca_certificates(str(tmp_path / "missing.pem"))


def test_mtls_without_ca_certs_is_an_error(tls_files):
    with pytest.raises(ValueError, match="caCerts"):
        serverFromString(reactor, f"mtls:0:privateKey={tls_files['key']}:certKey={tls_files['cert']}")
