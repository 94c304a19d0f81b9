"""Every transport through endpoint strings, from the command line: TLS, UNIX sockets, IPv6.

The TLS tests make a throw-away CA and server certificate at run time.
"""

from __future__ import annotations

import datetime
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import _name, start_twistd, tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

TIMEOUT = 60
SEARCH_ANSWER = "Follow the white rabbit. \U0001f430\n"
ECHO_MESSAGE = "hello over a new transport"


def sockapp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("sockapp"), *args], capture_output=True, text=True, timeout=TIMEOUT)


def tls_client(host: str, port: int, trust: Path) -> str:
    # Check the certificate against `host`, but connect to 127.0.0.1 whatever `host` resolves to.
    return f"tls:{host}:{port}:trustRoots={trust}:endpoint=tcp\\:127.0.0.1\\:{port}"


def tls_server(files: dict[str, Path]) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={files['key']}:certKey={files['cert']}"


def test_search_and_echo_over_tls(server_processes, tls_files):
    app = start_twistd(server_processes, "sockapp", "--port", tls_server(tls_files))
    echo = start_twistd(server_processes, "echo", "--port", tls_server(tls_files))
    readme_form = f"tls:localhost:{app}:trustRoots={tls_files['trust']}"  # as the README shows it
    result = sockapp("request", "--connect", readme_form, "search", "morpheus")
    assert (result.returncode, result.stdout) == (0, SEARCH_ANSWER), result.stderr
    result = sockapp("echo", "--connect", tls_client("localhost", echo, tls_files["trust"]), ECHO_MESSAGE)
    assert (result.returncode, result.stdout) == (0, ECHO_MESSAGE + "\n"), result.stderr
    result = sockapp("multiconn", "-n", "20", "--connect", tls_client("localhost", echo, tls_files["trust"]))
    assert result.returncode == 0, result.stderr


def test_tls_client_refuses_a_certificate_for_another_host(server_processes, tls_files):
    app = start_twistd(server_processes, "sockapp", "--port", tls_server(tls_files))
    result = sockapp("request", "--connect", tls_client("wrong.example", app, tls_files["trust"]), "search", "morpheus")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "TLS" in lines[0] and "wrong.example" in lines[0], lines[0]


def test_tls_client_refuses_a_certificate_from_an_unknown_ca(server_processes, tls_files, tmp_path):
    app = start_twistd(server_processes, "sockapp", "--port", tls_server(tls_files))
    empty = tmp_path / "no-roots"
    empty.mkdir()
    other = tmp_path / "other-ca.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    other.write_bytes(
        x509.CertificateBuilder()
        .subject_name(_name("another CA"))
        .issuer_name(_name("another CA"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    (empty / "other.pem").write_bytes(other.read_bytes())
    result = sockapp("request", "--connect", tls_client("localhost", app, empty), "search", "morpheus")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "TLS: the server's certificate is signed by a CA (CN=sockapp test CA) not in trustRoots=" in result.stderr


def test_search_and_echo_over_unix_sockets(server_processes, tmp_path):
    app_path, echo_path = tmp_path / "app.sock", tmp_path / "echo.sock"
    start_twistd(server_processes, "sockapp", "--port", f"unix:{app_path}")
    start_twistd(server_processes, "echo", "--port", f"unix:{echo_path}")
    result = sockapp("request", "--connect", f"unix:path={app_path}", "search", "morpheus")
    assert (result.returncode, result.stdout) == (0, SEARCH_ANSWER), result.stderr
    result = sockapp("echo", "--connect", f"unix:path={echo_path}", ECHO_MESSAGE)
    assert (result.returncode, result.stdout) == (0, ECHO_MESSAGE + "\n"), result.stderr


def ipv6_loopback_missing() -> str | None:
    if not socket.has_ipv6:
        return "this Python has no IPv6 support"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"no IPv6 on loopback here: cannot bind [::1]: {e.strerror}"
    return None


@pytest.mark.skipif(ipv6_loopback_missing() is not None, reason=str(ipv6_loopback_missing()))
def test_search_and_echo_over_ipv6(server_processes):
    app = start_twistd(server_processes, "sockapp", "--port", "tcp6:0:interface=\\:\\:1")
    echo = start_twistd(server_processes, "echo", "--port", "tcp6:0:interface=\\:\\:1")
    result = sockapp("request", "--connect", f"tcp:host=\\:\\:1:port={app}", "search", "morpheus")
    assert (result.returncode, result.stdout) == (0, SEARCH_ANSWER), result.stderr
    result = sockapp("echo", "--connect", f"tcp:host=\\:\\:1:port={echo}", ECHO_MESSAGE)
    assert (result.returncode, result.stdout) == (0, ECHO_MESSAGE + "\n"), result.stderr


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes (or resets) ``sock`` within ``within`` seconds; reads and drops data."""
    import time

    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        except OSError as e:  # ssl's close without close_notify, and the like
            if "EOF" in str(e) or "reset" in str(e).lower():
                return True
            raise
    return False


@pytest.mark.parametrize("kind", ["ssl", "haproxy"])
def test_refused_and_timed_out_connections_close_on_wrapped_ports(server_processes, tls_files, kind):
    """On ssl: and haproxy: ports too, a connection over --max-connections is closed at once and a
    timed-out one within the close grace period, even when the peer says nothing more (a TLS close
    would wait for the peer's close_notify for ever)."""
    import ssl
    import time

    from sockapp.net.protocol import CLOSE_GRACE

    port_description = tls_server(tls_files) if kind == "ssl" else "haproxy:tcp:0:interface=127.0.0.1"
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", port_description]
        + ["--max-connections", "1", "--idle-timeout", "2"]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    holder = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if kind == "ssl":  # a handshake, then silence: the peer's kernel still takes bytes
        context = ssl.create_default_context(cafile=str(tls_files["ca"]))
        holder = context.wrap_socket(holder, server_hostname="localhost")
    else:  # a PROXY header, then silence
        holder.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5634\r\n")
    try:
        time.sleep(0.5)  # the holder's connection is the one open
        try:
            extra = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        except ConnectionResetError:
            pass  # refused so fast that the reset arrived while connecting: closed, as it must be
        else:
            with extra:
                # (a generous bound for a busy machine: a refusal left open is never closed at all)
                assert closed_by_server(extra, CLOSE_GRACE + 3), "a refused connection was left open"
        assert closed_by_server(holder, 2 + CLOSE_GRACE + 3), "a timed-out connection was left open"
    finally:
        holder.close()
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log
    assert log.count("refused connection from") == 1
