"""Shared test helpers: frame builders, the tutorial's programs, twistd processes."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sockapp.testing import ServerProcess, tool, twistd_argv  # tool and ServerProcess: for the tests too

ROOT = Path(__file__).resolve().parent.parent


def raw_frame(header: object, content: bytes = b"", *, header_bytes: bytes | None = None) -> bytes:
    """A frame built by hand (not by sockapp's encoder), for feeding decoders anything."""
    if header_bytes is None:
        header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return len(header_bytes).to_bytes(2, "big") + header_bytes + content


def json_request(document: object, encoding: str = "utf-8") -> bytes:
    """A text/json request exactly as the tutorial's client builds it."""
    content = json.dumps(document, ensure_ascii=False).encode(encoding)
    return raw_frame(
        {
            "byteorder": sys.byteorder,
            "content-type": "text/json",
            "content-encoding": encoding,
            "content-length": len(content),
        },
        content,
    )


def binary_request(content: bytes) -> bytes:
    """A binary request exactly as the tutorial's client builds it."""
    return raw_frame(
        {
            "byteorder": sys.byteorder,
            "content-type": "binary/custom-client-binary-type",
            "content-encoding": "binary",
            "content-length": len(content),
        },
        content,
    )


def split_frames(data: bytes) -> list[tuple[dict, bytes]]:
    """Parse a stream of well-formed frames by hand (independent of sockapp)."""
    frames = []
    while data:
        n = int.from_bytes(data[:2], "big")
        header = json.loads(data[2 : 2 + n].decode("utf-8"))
        end = 2 + n + header["content-length"]
        frames.append((header, data[2 + n : end]))
        data = data[end:]
    return frames


def seed_reference_dir() -> Path | None:
    """The tutorial's programs: $SOCKAPP_SEED_DIR, or ../shared/seed/reference beside the checkout."""
    candidates = []
    if os.environ.get("SOCKAPP_SEED_DIR"):
        candidates.append(Path(os.environ["SOCKAPP_SEED_DIR"]))
    candidates.append(ROOT.parent / "shared" / "seed" / "reference")
    for candidate in candidates:
        if (candidate / "app_msrvr.py").exists():
            return candidate
    return None


# Runs a tutorial program with port 5634 replaced: a server binds to a port
# the kernel picks and prints it; a client connects to $TARGET_PORT.
WRAPPER = r"""
import os, runpy, socket, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
target = int(os.environ.get("TARGET_PORT", "0"))
_bind, _connect, _connect_ex, _listen = (
    socket.socket.bind, socket.socket.connect, socket.socket.connect_ex, socket.socket.listen)
def moved(addr, port):
    return (addr[0], port) if isinstance(addr, tuple) and addr[1] == 5634 else addr
socket.socket.bind = lambda self, addr: _bind(self, moved(addr, 0))
socket.socket.connect = lambda self, addr: _connect(self, moved(addr, target))
socket.socket.connect_ex = lambda self, addr: _connect_ex(self, moved(addr, target))
def listen(self, *args):
    _listen(self, *args)
    print("TUTORIAL-LISTENING", self.getsockname()[1], flush=True)
socket.socket.listen = listen
runpy.run_path(script, run_name="__main__")
"""


def tutorial_env(target_port: int = 0) -> dict[str, str]:
    return dict(os.environ, TARGET_PORT=str(target_port), PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")


def start_tutorial_server(start, seed: Path, script: str, *args: str) -> int:
    server = start([sys.executable, "-c", WRAPPER, str(seed / script), *args], tutorial_env())
    return int(server.wait_for_log(r"TUTORIAL-LISTENING (\d+)").group(1))


@pytest.fixture
def seed_dir() -> Path:
    found = seed_reference_dir()
    if found is None:
        reason = "the tutorial's programs are not at ../shared/seed/reference and SOCKAPP_SEED_DIR is not set"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; in CI they must be there")
        pytest.skip(reason)
    return found


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """A Prometheus text page's samples, by (name, sorted label pairs)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def server_processes(tmp_path: Path):
    """Start server processes (``ServerProcess`` in this test's folder); every one is stopped after the test."""
    started: list[ServerProcess] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(argv, tmp_path, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def start_twistd(start, *args: str, env: dict[str, str] | None = None) -> int:
    """Run ``twistd -n ARGS`` with ``server_processes`` until it listens; return the port (0 for a UNIX socket)."""
    return start(twistd_argv(*args), env).wait_until_listening()


def run_sockapp(port: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``sockapp`` command against 127.0.0.1:``port``; its result, output as text."""
    return subprocess.run(
        [tool("sockapp"), *args, "--connect", f"tcp:host=127.0.0.1:port={port}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def send_and_read_all(
    address: tuple[str, int] | str, data: bytes, family: int = socket.AF_INET, timeout: float = 30
) -> bytes:
    """Send ``data``, half-close, and return everything received until the server closes."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.fixture
def listen():
    """Listen with a factory in this test's reactor on 127.0.0.1, port 0; returns a client endpoint string."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    ports = []

    async def start(factory) -> str:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        ports.append(port)
        return f"tcp:host=127.0.0.1:port={port.getHost().port}"

    yield start
    for port in ports:
        port.stopListening()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str):
    """A throwaway CA: its key and self-signed certificate, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(ca, common_name: str, alternative_names: list, expired: bool = False):
    """A key and a certificate for ``common_name`` signed by ``ca`` (valid for a day, or expired a day ago)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start = now - (datetime.timedelta(days=3) if expired else datetime.timedelta(minutes=5))
    end = now + (-datetime.timedelta(days=2) if expired else datetime.timedelta(days=1))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A private CA (its certificate alone in trust/) and a server certificate for localhost, signed by it."""
    folder = tmp_path_factory.mktemp("tls")
    ca = make_ca("sockapp test CA")
    ca_cert = ca[1]
    key, cert = issue_certificate(
        ca, "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    trust = folder / "trust"
    trust.mkdir()
    (trust / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(_pem_key(key))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "combined.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + _pem_key(key))
    return {
        "trust": trust,
        "ca": trust / "ca.pem",
        "key": folder / "server.key",
        "cert": folder / "server.pem",
        "combined": folder / "combined.pem",  # certificate and key in one file, as HAProxy takes them
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for programs that take a port, not port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def haproxy_binary() -> str:
    """Debian's haproxy, for the integration tests (``make integration`` installs it when missing)."""
    import shutil

    found = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")
    if not found:
        pytest.fail("haproxy is not installed: run `make integration`, which installs Debian's haproxy")
    return found


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster on 127.0.0.1 for the session (tests/pg_cluster.py); fails, not skips,
    when PostgreSQL is missing (``make integration`` installs Debian's postgresql)."""
    from pg_cluster import PostgresCluster, postgresql_bindir

    bindir = postgresql_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: run `make integration`, which installs Debian's postgresql")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
