"""mtls: server endpoints: client certificates required, checked, and shown to handlers."""

from __future__ import annotations

import socket
import ssl as stdlib_ssl
from typing import Any, cast

import pytest
import pytest_twisted
from conftest import _pem_key, issue_certificate, make_ca
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorSSL, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, LogEvent

from sockapp.app import App
from sockapp.client import connect
from sockapp.net.tls import load_ca_certificates
from sockapp.server import AppFactory

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
        return (
            None
            if certificate is None
            else [certificate.common_name, list(certificate.dns_names), list(certificate.uri_names)]
        )

    return app


# An IListeningPort; Any, as Twisted types its getHost() as IAddress (no port) and its
# stopListening() as maybe returning a Deferred.
async def listen_mtls(tls_files, ca, metrics=None) -> Any:
    description = f"mtls:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}:caCerts={ca}"
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


@pytest.mark.parametrize(
    "who, why",
    [
        (None, "no-certificate"),
        ("mallory", "certificate-refused"),
        ("expired", "certificate-refused"),
        ("plain", "not-tls"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_failed_handshake_is_one_log_line_and_counted_by_reason(tls_files, clients, who, why):
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread
    from twisted.logger import globalLogPublisher

    from sockapp.server.metrics import ServerMetrics

    metrics = ServerMetrics(process=False)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
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
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
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

    from sockapp.net.tls import mtls_options

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


# Misconfigurations: one line naming the cause, on each side.


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tls_files):
    """Certificates for each thing that can be wrong, beside tls_files' good ones."""
    import ipaddress

    folder = tmp_path_factory.mktemp("lab")
    pem = serialization.Encoding.PEM
    server_ca = make_ca("lab server CA")
    other_ca = make_ca("lab other CA")
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    files = {}
    for name, (key, cert) in {
        "good": issue_certificate(server_ca, "localhost", local),
        "expired": issue_certificate(server_ca, "localhost", local, expired=True),
        "elsewhere": issue_certificate(server_ca, "example.org", [x509.DNSName("example.org")]),
        "unknown-ca": issue_certificate(other_ca, "localhost", local),
    }.items():
        (folder / f"{name}.key").write_bytes(_pem_key(key))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(pem))
        files[name] = (folder / f"{name}.pem", folder / f"{name}.key")
    (folder / "mismatch.pem").write_bytes((folder / "good.pem").read_bytes())
    (folder / "mismatch.key").write_bytes((folder / "expired.key").read_bytes())
    files["mismatch"] = (folder / "mismatch.pem", folder / "mismatch.key")
    # trustRoots as a bundle file (another CA first), and as a directory that also holds the CA's key as key.pem
    (folder / "bundle.pem").write_bytes(other_ca[1].public_bytes(pem) + server_ca[1].public_bytes(pem))
    files["bundle"] = folder / "bundle.pem"
    keyed = folder / "keyed"
    keyed.mkdir()
    (keyed / "ca.pem").write_bytes(server_ca[1].public_bytes(pem))
    (keyed / "key.pem").write_bytes(_pem_key(server_ca[0]))
    files["keyed-dir"] = keyed
    return files


def raw_tls_port(certificate, key):
    """A TLS server with these files as they are, unchecked (Twisted's own options), serving pings."""
    from twisted.internet import ssl

    both = ssl.PrivateCertificate.loadPEM(certificate.read_bytes() + b"\n" + key.read_bytes())
    options = ssl.CertificateOptions(
        privateKey=both.privateKey.original.to_cryptography_key(), certificate=both.original.to_cryptography()
    )
    # Twisted types the listen* methods' factory as its own ServerFactory[...]; any IProtocolFactory serves.
    factory = AppFactory(App("raw"), reactor=reactor)
    return cast(IReactorSSL, reactor).listenSSL(0, factory, options, interface="127.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize("trust", ["bundle", "keyed-dir"])
@pytest_twisted.ensureDeferred
async def test_trust_roots_may_be_a_bundle_file_or_a_directory_with_a_key_in_it(lab, trust):
    """Twisted's tls: endpoint fails on both: UnlistableError for a file, 'no start line' for a key.pem."""
    port = raw_tls_port(*lab["good"])
    try:
        client = await connect(reactor, f"tls:localhost:{port.getHost().port}:trustRoots={lab[trust]}", retries=0)
        assert await client.call("ping").addTimeout(TIMEOUT, reactor) == "pong"
        await client.close()
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    "parameters, message",
    [
        (
            "trustRoots={folder}/nowhere.pem",
            "tls: cannot read trustRoots {folder}/nowhere.pem: No such file or directory",
        ),
        ("trustRoots={folder}/good.key", "tls: no PEM certificate in trustRoots={folder}/good.key"),
        (
            "certificate={folder}/nowhere.pem",
            "tls: cannot read certificate {folder}/nowhere.pem: No such file or directory",
        ),
        ("certificate={folder}/good.pem", "tls: no PEM private key in privateKey={folder}/good.pem"),
        (
            "certificate={folder}/mismatch.pem:privateKey={folder}/mismatch.key",
            "tls: the private key in {folder}/mismatch.key is not the key of the certificate in {folder}/mismatch.pem",
        ),
        (
            "certificate={folder}/expired.pem:privateKey={folder}/expired.key",
            "tls: the certificate in {folder}/expired.pem expired on ",
        ),
        ("privateKey={folder}/good.key", "tls: privateKey= needs certificate= (the client certificate) too"),
    ],
)
def test_a_client_misconfiguration_is_one_line_when_the_endpoint_is_made(lab, parameters, message):
    from sockapp.client import as_endpoint
    from sockapp.errors import BadEndpoint

    folder = lab["bundle"].parent
    with pytest.raises(BadEndpoint) as raised:
        as_endpoint(reactor, f"tls:localhost:1:{parameters.format(folder=folder)}")
    text = str(raised.value)
    assert "\n" not in text and message.format(folder=folder) in text


async def refusal(endpoint: str, request_timeout=None) -> str:
    """What a client is told when its request over ``endpoint`` fails."""
    from sockapp.errors import SockappError

    client = await connect(reactor, endpoint, retries=0, request_timeout=request_timeout)
    try:
        await client.call("ping").addTimeout(TIMEOUT, reactor)
    except SockappError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        await client.close()
    raise AssertionError(f"{endpoint} was served")


@pytest.mark.parametrize(
    "served, host, message",
    [
        ("expired", "localhost", "TLSFailure: TLS: the server's certificate expired on "),
        ("elsewhere", "localhost", "TLSFailure: TLS: the server's certificate is for example.org, not localhost"),
        ("good", "127.0.0.2", "TLSFailure: TLS: the server's certificate is for localhost, 127.0.0.1, not 127.0.0.2"),
        (
            "unknown-ca",
            "localhost",
            "TLSFailure: TLS: the server's certificate is signed by a CA (CN=lab other CA) not in trustRoots=",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_refused_server_certificate_is_named_by_its_fault(lab, served, host, message):
    port = raw_tls_port(*lab[served])
    number = port.getHost().port
    try:
        said = await refusal(f"tls:{host}:{number}:trustRoots={lab['keyed-dir']}:endpoint=tcp\\:127.0.0.1\\:{number}")
    finally:
        await port.stopListening()
    assert said.startswith(message) and "\n" not in said, said


@pytest.mark.parametrize(
    "who, message",
    [
        (
            None,
            "TLSFailure: TLS: the server requires a client certificate: "
            "add certificate=CERT:privateKey=KEY to the tls: endpoint",
        ),
        (
            "mallory",
            "TLSFailure: TLS: the server refused our client certificate: it does not accept the CA that signed it",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_client_certificate_the_server_refuses_is_said_so(tls_files, clients, who, message):
    port = await listen_mtls(tls_files, clients["ca"])
    try:
        said = await refusal(client_endpoint(tls_files, port.getHost().port, clients[who] if who else None))
    finally:
        await port.stopListening()
    assert said == message


class _Garbage(Protocol):
    """A server that does not speak TLS: answers anything with an HTTP error."""

    transport: ITransport  # connected

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


@pytest.mark.parametrize("kind", ["answers-garbage", "says-nothing"])
@pytest_twisted.ensureDeferred
async def test_a_server_that_does_not_speak_tls_is_said_so(tls_files, kind):
    factory = Factory.forProtocol(_Garbage if kind == "answers-garbage" else Protocol)
    # Twisted types the listen* methods' factory as its own ServerFactory[...]; any IProtocolFactory serves.
    port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        # A server that says nothing keeps the handshake waiting: the request timeout ends it.
        said = await refusal(
            f"tls:127.0.0.1:{port.getHost().port}:trustRoots={tls_files['trust']}", request_timeout=0.5
        )
    finally:
        await port.stopListening()
    if kind == "answers-garbage":
        assert (
            said == "TLSFailure: TLS: the server does not speak TLS: it answered the TLS greeting with something else"
        )
    else:
        assert (
            said
            == "RequestTimeout: no answer within 0.5 s: the TLS handshake did not finish (does the server speak TLS?)"
        )


@pytest.mark.parametrize("scheme", ["ssl", "mtls"])
@pytest.mark.parametrize(
    "files, message",
    [
        (
            "privateKey={folder}/nowhere.key:certKey={folder}/good.pem",
            "cannot read privateKey {folder}/nowhere.key: No such file or directory",
        ),
        (
            "privateKey={folder}/good.key:certKey={folder}/nowhere.pem",
            "cannot read certKey {folder}/nowhere.pem: No such file or directory",
        ),
        ("privateKey={folder}/good.key", "no PEM certificate in certKey={folder}/good.key"),
        (
            "privateKey={folder}/mismatch.key:certKey={folder}/mismatch.pem",
            "the private key in {folder}/mismatch.key is not the key of the certificate in {folder}/mismatch.pem",
        ),
        (
            "privateKey={folder}/expired.key:certKey={folder}/expired.pem",
            "the certificate in {folder}/expired.pem expired on ",
        ),
    ],
)
def test_a_server_misconfiguration_is_one_line_at_start_up(lab, scheme, files, message):
    from twisted.internet.testing import MemoryReactor

    from sockapp.net.endpoints import server_endpoint

    folder = lab["bundle"].parent
    description = f"{scheme}:0:{files.format(folder=folder)}" + (
        f":caCerts={lab['bundle']}" if scheme == "mtls" else ""
    )
    with pytest.raises(ValueError) as raised:
        server_endpoint(MemoryReactor(), description)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"{scheme}: {message.format(folder=folder)}"), text


@pytest.mark.parametrize("scheme", ["ssl", "mtls"])
def test_twistd_with_a_key_that_is_not_the_certificates_says_so_in_one_line(lab, scheme):
    """Twisted's own ssl: parser ends twistd with a VerifyError traceback here."""
    import subprocess

    from conftest import tool

    folder = lab["bundle"].parent
    description = f"{scheme}:0:interface=127.0.0.1:privateKey={folder}/mismatch.key:certKey={folder}/mismatch.pem"
    if scheme == "mtls":
        description += f":caCerts={lab['bundle']}"
    result = subprocess.run(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", description],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr  # twistd writes its usage errors to stdout
    assert result.returncode == 1 and "Traceback" not in output
    assert "is not the key of the certificate in" in output.strip().splitlines()[-1]


def test_the_command_line_tools_with_a_client_certificate(server_processes, tls_files, clients):
    """sockapp request, call and bench through tls: with certificate= and privateKey=, as the README shows."""
    import json
    import subprocess

    from conftest import start_twistd, tool

    port = start_twistd(
        server_processes,
        "sockapp",
        "--port",
        f"mtls:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}:caCerts={clients['ca']}",
    )

    def sockapp(*args: str, who=clients["alice"]) -> subprocess.CompletedProcess:
        endpoint = client_endpoint(tls_files, port, who)
        return subprocess.run(
            [tool("sockapp"), *args, "--connect", endpoint], capture_output=True, text=True, timeout=120
        )

    result = sockapp("request", "search", "morpheus")
    assert (result.returncode, result.stdout) == (0, "Follow the white rabbit. \U0001f430\n"), result.stderr
    result = sockapp("call", "ping")
    assert (result.returncode, result.stdout) == (0, '"pong"\n'), result.stderr
    result = sockapp("bench", "-c", "4", "-n", "500", "--json")
    summary = json.loads(result.stdout)
    assert (result.returncode, summary["requests"], summary["errors"]) == (0, 500, 0), result.stderr
    # Without a certificate: refused, in one line each, and the bench says why.
    result = sockapp("request", "search", "morpheus", who=None)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "sockapp request: error: TLS: the server requires a client certificate: "
        "add certificate=CERT:privateKey=KEY to the tls: endpoint\n"
    )
    result = sockapp("bench", "-c", "2", "-n", "10", "--json", who=None)
    summary = json.loads(result.stdout)
    assert result.returncode == 1 and summary["errors_by_kind"] == {"tls": 10}
    assert summary["first_error_by_kind"]["tls"].startswith("TLS: the server requires a client certificate")


# What a peer (or a bad file) can do: found by attacking issue 11's work.


@pytest_twisted.ensureDeferred
async def test_an_echo_client_whose_handshake_stalls_closes_at_once_and_says_tls(tls_files):
    """A server that takes the greeting and says nothing: close() aborts (Twisted's
    loseConnection would wait for the handshake for ever once data was written), and
    the echo's error says it was the TLS handshake."""
    from sockapp.client import connect_echo
    from sockapp.errors import SockappError

    # Twisted types the listen* methods' factory as its own ServerFactory[...]; any IProtocolFactory serves.
    port: Any = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        client = await connect_echo(reactor, f"tls:127.0.0.1:{port.getHost().port}:trustRoots={tls_files['trust']}")
        echoed = client.roundTrip(b"hi")
        await client.close().addTimeout(TIMEOUT, reactor)  # before the fix: never fired
        with pytest.raises(SockappError) as raised:
            await echoed
    finally:
        await port.stopListening()
    assert str(raised.value) == "TLS: the connection closed during the handshake; does the server speak TLS?"


@pytest_twisted.ensureDeferred
async def test_an_echo_client_refused_by_tls_says_why(tls_files, clients):
    from sockapp.client import connect_echo
    from sockapp.errors import SockappError

    port = await listen_mtls(tls_files, clients["ca"])
    try:
        client = await connect_echo(reactor, client_endpoint(tls_files, port.getHost().port))
        with pytest.raises(SockappError) as raised:
            await client.roundTrip(b"hi").addTimeout(TIMEOUT, reactor)
    finally:
        await port.stopListening()
    assert str(raised.value).startswith("TLS: the server requires a client certificate"), str(raised.value)


class _PeerCertificateTransport:
    """A transport whose peer presented ``certificate`` (a cryptography one); counts the asks."""

    def __init__(self, certificate) -> None:
        from OpenSSL import crypto

        self.certificate = crypto.X509.from_cryptography(certificate)
        self.asked = 0

    def getPeerCertificate(self):
        self.asked += 1
        return self.certificate


def test_the_client_certificate_is_read_once_a_connection():
    """60 kB of names cost 4.5 ms a request to read: a peer pipelining requests made the server read them each time."""
    from sockapp.net.tls import client_certificate

    names = [x509.DNSName(f"n{i:05d}.example") for i in range(3000)]
    transport = _PeerCertificateTransport(issue_certificate(make_ca("big CA"), "big", names)[1])
    first = client_certificate(transport)
    assert first is not None and client_certificate(transport) is first and len(first.dns_names) == 3000
    assert transport.asked == 1


def test_a_common_name_over_64_characters_warns_nothing():
    """cryptography warns about such a name (the peer picks it): two lines on a client's stderr
    before its one-line error, a line in the server's log."""
    import datetime
    import warnings

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from sockapp.net.tls import _names, client_certificate

    ca_key, ca_cert = make_ca("long CA")
    now = datetime.datetime.now(datetime.UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long_name = x509.NameAttribute(x509.NameOID.COMMON_NAME, "L" * 100, _validate=False)
        certificate = x509.CertificateBuilder(
            subject_name=x509.Name([long_name]),
            issuer_name=ca_cert.subject,
            public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            serial_number=1,
            not_valid_before=now,
            not_valid_after=now + datetime.timedelta(days=1),
        ).sign(ca_key, hashes.SHA256())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        known = client_certificate(_PeerCertificateTransport(certificate))
        assert known is not None and known.common_name == "L" * 100
        assert _names(certificate).startswith("LLLL")


@pytest.mark.parametrize("what", ["fifo", "device", "huge"])
def test_a_ca_file_that_is_not_a_small_regular_file_is_one_line(tmp_path, clients, what):
    """caCerts=/dev/zero ate 6.8 GB in 8 s at start-up; a FIFO hung it for ever."""
    import os

    from sockapp.net.tls import MAX_PEM_FILE

    if what == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        expected = f"mtls: caCerts {path} is not a regular file"
    elif what == "device":
        path = "/dev/zero"
        expected = "mtls: caCerts /dev/zero is not a regular file"
    else:
        path = tmp_path / "huge.pem"
        with open(path, "wb") as f:
            f.write(clients["ca"].read_bytes())
            f.truncate(MAX_PEM_FILE + 1)
        expected = f"mtls: caCerts {path} is larger than {MAX_PEM_FILE} bytes"
    with pytest.raises(ValueError) as raised:
        load_ca_certificates(str(path))
    assert str(raised.value) == expected


def test_begin_lines_without_an_end_are_read_in_linear_time(tmp_path):
    """The certificate pattern was quadratic: 8,000 BEGIN lines (224 kB) took 7 CPU-seconds."""
    path = tmp_path / "begins.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" * 30_000)  # 840 kB: minutes before the fix
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_ca_certificates(str(path))


@pytest.mark.parametrize("key_format", ["PKCS8", "TraditionalOpenSSL"])
def test_an_encrypted_private_key_is_said_so_without_asking_for_a_passphrase(tmp_path, tls_files, key_format):
    """OpenSSL asked 'Enter PEM pass phrase:' on the terminal (twistd and sockapp waited), and
    without one said 'processing error; problems getting password; interrupted or cancelled; ...'."""
    from sockapp.net.tls import own_certificate

    key = serialization.load_pem_private_key(tls_files["key"].read_bytes(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            getattr(serialization.PrivateFormat, key_format),
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError) as raised:
        own_certificate(str(tls_files["cert"]), str(path), "ssl:", ("certKey", "privateKey"))
    assert str(raised.value) == (
        f"ssl: the private key in {path} is encrypted: sockapp asks for no passphrase "
        f"(decrypt it: openssl pkey -in {path} -out KEY)"
    )


@pytest_twisted.ensureDeferred
async def test_the_echo_server_logs_and_counts_a_failed_handshake_too(tls_files, clients):
    """twistd echo --port mtls:... refused clients without a line or a count (its metric stayed 0)."""
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread
    from twisted.logger import globalLogPublisher

    from sockapp.server.echo import EchoFactory
    from sockapp.server.metrics import ServerMetrics

    metrics = ServerMetrics(process=False)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    description = (
        f"mtls:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}:caCerts={clients['ca']}"
    )
    port = await serverFromString(reactor, description).listen(EchoFactory(reactor=reactor, metrics=metrics))
    try:
        await deferToThread(handshake, port.getHost().port, tls_files, None)
        for _ in range(100):  # until the server has seen the connection end (bounded)
            if sum(metrics.tls_handshake_failures.values()):
                break
            await deferLater(reactor, 0.05)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
        await port.stopListening()
    assert metrics.tls_handshake_failures["no-certificate"] == 1 and sum(metrics.tls_handshake_failures.values()) == 1
    lines = [e for e in events if "TLS handshake failed" in e.get("log_format", "")]
    assert len(lines) == 1 and lines[0]["why"] == "no-certificate"


@pytest.mark.parametrize(
    "names, expected", [(["alice"], "alice"), (["alice", "bob"], None), (["bob", "alice"], None), ([], None)]
)
def test_a_subject_with_several_common_names_has_none_to_authorize_by(names, expected):
    """CN=alice,CN=bob would pass a check on the first CN and fail one on the last: it passes neither."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from sockapp.net.tls import client_certificate

    ca_key, ca_cert = make_ca("naming CA")
    now = datetime.datetime.now(datetime.UTC)
    certificate = x509.CertificateBuilder(
        subject_name=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name) for name in names]),
        issuer_name=ca_cert.subject,
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        serial_number=1,
        not_valid_before=now,
        not_valid_after=now + datetime.timedelta(days=1),
    ).sign(ca_key, hashes.SHA256())
    known = client_certificate(_PeerCertificateTransport(certificate))
    assert known is not None and known.common_name == expected


@pytest.mark.parametrize("scheme", ["mtls", "ssl"])
@pytest_twisted.ensureDeferred
async def test_a_client_limited_to_tls_1_1_is_refused_and_tls_1_2_is_served(tls_files, clients, scheme):
    """The handshake itself (this machine's OpenSSL may refuse TLS 1.1 on its own as well, which
    is why test_protocol_versions_below_tls_1_2_are_off checks sockapp's own setting)."""
    from twisted.internet.threads import deferToThread

    if scheme == "mtls":
        port = await listen_mtls(tls_files, clients["ca"])
    else:
        from sockapp.net.endpoints import server_endpoint

        description = f"ssl:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}"
        port = await server_endpoint(reactor, description).listen(AppFactory(whoami_app(), reactor=reactor))
    try:
        number = port.getHost().port
        old = await deferToThread(handshake, number, tls_files, clients["alice"], stdlib_ssl.TLSVersion.TLSv1_1)
        assert old != "ok"
        assert (
            await deferToThread(handshake, number, tls_files, clients["alice"], stdlib_ssl.TLSVersion.TLSv1_2) == "ok"
        )
    finally:
        await port.stopListening()
