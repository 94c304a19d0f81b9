"""deploy/haproxy.cfg for real: HAProxy in front of 3 sockapp servers on loopback, one killed mid-load,
then one hung (SIGSTOP) mid-load; then the other setups deploy/README.md describes (TLS at HAProxy,
mutual TLS at HAProxy, TLS at each server, PROXY protocol).

Run by ``make integration`` (which installs Debian's haproxy when it is
missing), not by the default ``pytest`` run: ``-m integration`` selects it.
Prints a summary: the client's requests, errors and retries, HAProxy's view
of each server, and each server's own metrics.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
from conftest import ROOT, _pem_key, free_port, issue_certificate, make_ca, send_and_read_all, tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_smoke import scrape

from sockapp.wire.framing import FrameDecoder, Message, encode_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BACKENDS = 3
KILLED = 2  # sockapp2, the second server in deploy/haproxy.cfg
BENCH_SECONDS = 10
KILL_AFTER_HITS = 2000  # the backend is killed once every backend has answered this many searches
HITS = ("sockapp_requests_total", (("action", "search"), ("outcome", "ok")))
HUNG = 3  # sockapp3, stopped with SIGSTOP in the hung-backend test
HUNG_BENCH_SECONDS = 20  # long enough to see the hung backend marked DOWN while load goes on
HANG_AFTER_HITS = 500
PINGS = ("sockapp_requests_total", (("action", "ping"), ("outcome", "ok")))


def haproxy_stats(path: str) -> dict[str, dict[str, str]]:
    """``show stat`` on HAProxy's admin socket: the rows of our backend's servers, by name."""
    with socket.socket(socket.AF_UNIX) as admin:
        admin.settimeout(10)
        admin.connect(path)
        admin.sendall(b"show stat\n")
        data = b""
        while chunk := admin.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {row["svname"]: row for row in rows if row["pxname"] == "sockapp_servers" and row["svname"] != "BACKEND"}


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def kill_then_finish(bench: subprocess.Popen, server, timeout: float) -> tuple[str, str]:
    """SIGKILL ``server`` (its whole process group) while ``bench`` runs; ``bench``'s output once it ends."""
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    return bench.communicate(timeout=timeout)


def stop_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def start_backends(start, port: str, *extra: str) -> list:
    """``BACKENDS`` twistd sockapp servers listening on ``port`` (an endpoint description with port 0)."""
    servers = []
    for _ in range(BACKENDS):
        server = start([tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", port, *extra])
        server.port = int(server.wait_for_log(r"SearchFactory (?:\(\w+\) )?starting on (\d+)").group(1))
        servers.append(server)
    return servers


def start_haproxy(start, binary: str, config, servers: list, tmp_path) -> tuple:
    """HAProxy on ``config`` in front of ``servers``, once every server has passed the ping check.

    Returns the process, the front port and the stats socket's path. HAProxy
    is given a port that was free a moment ago; if another process took it in
    between, HAProxy cannot bind and is started again on another.
    """
    for attempt in range(5):
        front = free_port()
        stats_socket = str(tmp_path / f"haproxy-{attempt}.sock")
        env = {"SOCKAPP_LISTEN": f"127.0.0.1:{front}", "SOCKAPP_HAPROXY_STATS": stats_socket}
        env.update({f"SOCKAPP_BACKEND_{n + 1}": f"127.0.0.1:{server.port}" for n, server in enumerate(servers)})
        haproxy = start([binary, "-db", "-f", str(config)], env)

        def up_or_gone(socket_path: str = stats_socket, process=haproxy) -> bool:
            return os.path.exists(socket_path) or process.proc.poll() is not None

        wait_until(up_or_gone, "HAProxy's stats socket")
        if haproxy.proc.poll() is None:
            break
        assert "cannot bind" in haproxy.log(), f"haproxy exited:\n{haproxy.log()}"
    else:
        raise AssertionError(f"haproxy could not bind a free port in 5 attempts:\n{haproxy.log()}")
    try:
        wait_until(
            lambda: all(row["check_status"] == "L7OK" for row in haproxy_stats(stats_socket).values()),
            "every backend passing the ping check",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}; HAProxy's log:\n{haproxy.log()}") from None
    return haproxy, front, stats_socket


def test_haproxy_spreads_load_and_routes_around_a_killed_backend(server_processes, haproxy_binary, tmp_path):
    servers = start_backends(
        server_processes,
        "tcp:0:interface=127.0.0.1:backlog=1024",
        *("--metrics", "tcp:0:interface=127.0.0.1", "--log-format", "json"),
    )
    metrics_ports = [int(server.wait_for_log(r"MetricsSite starting on (\d+)").group(1)) for server in servers]
    # Every server has passed a ping health check before load starts.
    haproxy, front, stats_socket = start_haproxy(
        server_processes, haproxy_binary, ROOT / "deploy" / "haproxy.cfg", servers, tmp_path
    )
    names = [f"sockapp{n + 1}" for n in range(BACKENDS)]

    bench = subprocess.Popen(
        [tool("sockapp"), "bench", "--connect", f"tcp:host=127.0.0.1:port={front}", "--connections", "30",
         "--duration", str(BENCH_SECONDS), "--request-timeout", "20", "--json", "--no-answer-check"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: bench.poll() is not None or all(scrape(port)[HITS] >= KILL_AFTER_HITS for port in metrics_ports),
            f"every backend answering {KILL_AFTER_HITS} searches",
        )
        assert bench.poll() is None, "sockapp bench ended before the kill"
        killed = servers[KILLED - 1]
        hits_before_kill = scrape(metrics_ports[KILLED - 1])[HITS]
        out, err = kill_then_finish(bench, killed, timeout=BENCH_SECONDS + 60)
    finally:
        stop_if_running(bench)
    assert bench.returncode == 0, f"sockapp bench failed:\n{out}\n{err}"
    summary = json.loads(out)

    down = wait_until(
        lambda: (rows := haproxy_stats(stats_socket))[names[KILLED - 1]]["status"].startswith("DOWN") and rows,
        "the killed backend marked DOWN by the health check",
    )
    live = [n for n in range(BACKENDS) if n != KILLED - 1]
    scraped = {n: scrape(metrics_ports[n]) for n in live}
    # Bytes HAProxy passed from each server to clients, in whole answers (the health checks are not counted).
    answer_length = len(encode_json({"result": "Follow the white rabbit. \U0001f430"}))
    forwarded = {name: int(row["bout"]) // answer_length for name, row in down.items()}
    hits = {names[n]: scraped[n][HITS] for n in live}

    report = {
        "client": {k: summary[k] for k in ("requests", "errors", "errors_by_kind", "retries", "throughput_per_s")},
        "haproxy": {
            name: {"status": row["status"], "check": row["check_status"], "sessions_total": int(row["stot"])}
            for name, row in down.items()
        },
        "backend_search_hits": {**hits, names[KILLED - 1]: f"{hits_before_kill:.0f} before it was killed"},
        "haproxy_answers_passed_on": forwarded,
        "backend_pings": {names[n]: scraped[n][PINGS] for n in live},
    }
    print("\nintegration summary:", json.dumps(report, indent=2))

    # Zero failed requests from the client's point of view, though a backend died under it.
    assert summary["errors"] == 0 and summary["requests"] > 0
    assert summary["retries"] > 0, "the killed backend had requests in flight: some must have been sent again"
    # HAProxy's health check saw it: DOWN, because nothing answers the ping any more.
    assert down[names[KILLED - 1]]["check_status"] in ("L4CON", "L4TOUT", "L7TOUT", "L7RSP", "SOCKERR")
    assert all(down[names[n]]["status"] == "UP" for n in live)
    # Traffic was spread: every server took sessions, and each live one a fair share of the searches.
    assert all(int(row["stot"]) > 0 for row in down.values())
    assert all(count > summary["requests"] / (3 * BACKENDS) for count in hits.values()), hits
    # Every answer the client counted came whole through HAProxy from one server: HAProxy's
    # byte counts, in answers, add up to the client's count, and each live server's own
    # metrics count exactly what HAProxy passed on from it.
    assert sum(forwarded.values()) == summary["requests"], (forwarded, summary["requests"])
    assert all(forwarded[names[n]] == hits[names[n]] for n in live), (forwarded, hits)
    assert forwarded[names[KILLED - 1]] >= hits_before_kill
    assert all(scraped[n][PINGS] > 0 for n in live)  # the health checks reached them
    assert haproxy.proc.poll() is None
    # The servers logged as a shipper would read them: one JSON object per line.
    for n in live:
        assert all(json.loads(line)["level"] for line in servers[n].log().splitlines() if line.strip())


def test_haproxy_routes_around_a_hung_backend(server_processes, haproxy_binary, tmp_path):
    """A backend that accepts connections but never answers (SIGSTOP: a stuck process, a paused VM).

    The kernel still completes its TCP handshakes, so only the ping check's read
    timeout (``timeout check``) can tell: HAProxy must mark it DOWN, cut its
    sessions so their requests are sent again elsewhere, and the other two
    must go on answering. Prints the seconds from SIGSTOP to DOWN and the worst
    latency the client saw (figures for deploy/README.md, not asserted).
    """
    servers = start_backends(
        server_processes, "tcp:0:interface=127.0.0.1:backlog=1024", "--metrics", "tcp:0:interface=127.0.0.1"
    )
    metrics_ports = [int(server.wait_for_log(r"MetricsSite starting on (\d+)").group(1)) for server in servers]
    haproxy, front, stats_socket = start_haproxy(
        server_processes, haproxy_binary, ROOT / "deploy" / "haproxy.cfg", servers, tmp_path
    )
    names = [f"sockapp{n + 1}" for n in range(BACKENDS)]
    hung = servers[HUNG - 1]
    live = [n for n in range(BACKENDS) if n != HUNG - 1]

    bench = subprocess.Popen(
        [tool("sockapp"), "bench", "--connect", f"tcp:host=127.0.0.1:port={front}", "--connections", "30",
         "--duration", str(HUNG_BENCH_SECONDS), "--request-timeout", "60", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: bench.poll() is not None or all(scrape(port)[HITS] >= HANG_AFTER_HITS for port in metrics_ports),
            f"every backend answering {HANG_AFTER_HITS} searches",
        )
        assert bench.poll() is None, "sockapp bench ended before the backend hung"
        hits_at_stop = {n: scrape(metrics_ports[n])[HITS] for n in live}
        os.killpg(hung.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        live_check_ms: list[float] = []  # how long the live backends took to answer a ping under this load

        def hung_is_down():
            rows = haproxy_stats(stats_socket)
            live_check_ms.extend(int(rows[names[n]]["check_duration"] or 0) for n in live)
            return rows[names[HUNG - 1]]["status"].startswith("DOWN") and rows

        down = wait_until(hung_is_down, "the hung backend marked DOWN by the health check")
        seconds_to_down = time.monotonic() - stopped_at
        # Requests went on being answered by the other two while it hung.
        hits_at_down = {n: scrape(metrics_ports[n])[HITS] for n in live}
        out, err = bench.communicate(timeout=HUNG_BENCH_SECONDS + 90)
        # Resumed, it answers the ping again and HAProxy takes it back.
        os.killpg(hung.proc.pid, signal.SIGCONT)
        back_up = wait_until(
            lambda: (rows := haproxy_stats(stats_socket))[names[HUNG - 1]]["status"] == "UP" and rows,
            "the resumed backend marked UP again",
        )
    finally:
        stop_if_running(bench)
        if hung.proc.poll() is None:
            # A stopped process ignores SIGTERM until it is continued: resume it so the fixture can stop it.
            os.killpg(hung.proc.pid, signal.SIGCONT)
    assert bench.returncode == 0, f"sockapp bench failed:\n{out}\n{err}"
    summary = json.loads(out)

    report = {
        "seconds_from_SIGSTOP_to_DOWN": round(seconds_to_down, 2),
        "worst_client_latency_s": round(summary["latency_ms"]["max"] / 1000, 3),
        "client": {k: summary[k] for k in ("requests", "errors", "retries", "latency_ms")},
        "haproxy_at_down": {
            name: {"status": row["status"], "check": row["check_status"]} for name, row in down.items()
        },
        "live_backend_slowest_ping_check_ms": max(live_check_ms),
        "live_backend_searches_while_hung": {names[n]: hits_at_down[n] - hits_at_stop[n] for n in live},
    }
    print("\nhung backend summary:", json.dumps(report, indent=2))

    # Found by the ping check's read timeout: it connected, but no pong came.
    assert down[names[HUNG - 1]]["check_status"] == "L7TOUT"
    assert all(down[names[n]]["status"] == "UP" for n in live)
    assert all(hits_at_down[n] > hits_at_stop[n] for n in live), (hits_at_stop, hits_at_down)
    # Not one request failed: those stuck on the hung backend were cut at DOWN and sent again.
    assert summary["errors"] == 0 and summary["requests"] > 0
    assert summary["retries"] > 0
    assert back_up[names[HUNG - 1]]["check_status"] == "L7OK"
    assert haproxy.proc.poll() is None


def edited_config(tmp_path, *edits: tuple[str, str]):
    """deploy/haproxy.cfg with the changes deploy/README.md describes, each replacing one line exactly."""
    text = (ROOT / "deploy" / "haproxy.cfg").read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path


def through_tls(front: int, trust) -> None:
    """A request and a short bench with TLS to the front port, the certificate checked for localhost."""
    endpoint = f"tls:localhost:{front}:trustRoots={trust}:endpoint=tcp\\:127.0.0.1\\:{front}"
    result = subprocess.run(
        [tool("sockapp"), "request", "--connect", endpoint, "search", "morpheus"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "Follow the white rabbit. \U0001f430\n"), result.stderr
    result = subprocess.run(
        [tool("sockapp"), "bench", "--connect", endpoint, "-c", "10", "-n", "2000", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["requests"], summary["errors"]) == (2000, 0)


def test_tls_at_haproxy(server_processes, haproxy_binary, tls_files, tmp_path):
    # deploy/README.md: "Change the bind line to ... ssl crt /etc/haproxy/sockapp.pem".
    config = edited_config(
        tmp_path,
        (
            'bind "${SOCKAPP_LISTEN-*:5634}"\n',
            f'bind "${{SOCKAPP_LISTEN-*:5634}}" ssl crt {tls_files["combined"]}\n',
        ),
    )
    servers = start_backends(server_processes, "tcp:0:interface=127.0.0.1")
    _, front, _ = start_haproxy(server_processes, haproxy_binary, config, servers, tmp_path)
    through_tls(front, tls_files["trust"])
    # A ping in the clear to the TLS port is not answered: HAProxy closes (or resets, as it
    # may with our bytes unread) without a byte of the protocol.
    try:
        answer = send_and_read_all(("127.0.0.1", front), encode_json({"action": "ping"}))
    except ConnectionResetError:
        answer = b""
    assert b"pong" not in answer


def test_tls_at_each_server(server_processes, haproxy_binary, tls_files, tmp_path):
    # deploy/README.md: servers on ssl: ports; checks over TLS with check-ssl.
    config = edited_config(
        tmp_path,
        (
            "default-server check ",
            f"default-server check-ssl verify required ca-file {tls_files['ca']} check ",
        ),
    )
    servers = start_backends(
        server_processes, f"ssl:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}"
    )
    _, front, _ = start_haproxy(server_processes, haproxy_binary, config, servers, tmp_path)
    through_tls(front, tls_files["trust"])


def test_proxy_protocol_gives_the_servers_the_real_client_address(server_processes, haproxy_binary, tmp_path):
    # deploy/README.md: servers on haproxy: ports; send-proxy-v2 and check-send-proxy on the server lines.
    config = edited_config(
        tmp_path,
        ("default-server check ", "default-server send-proxy-v2 check-send-proxy check "),
    )
    servers = start_backends(server_processes, "haproxy:tcp:0:interface=127.0.0.1", "--log-format", "json")
    _, front, _ = start_haproxy(server_processes, haproxy_binary, config, servers, tmp_path)
    result = subprocess.run(
        [tool("sockapp"), "request", "--connect", f"tcp:host=127.0.0.1:port={front}", "search", "ring"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "In the caves beneath the Misty Mountains. \U0001f48d\n")
    # A malformed request from a port we know: the server that got it logs that port, not HAProxy's.
    with socket.create_connection(("127.0.0.1", front), timeout=30) as sock:
        client = f"127.0.0.1:{sock.getsockname()[1]}"
        sock.sendall(b"\x00\x00")  # a frame fault: logged (in-band request faults are not, without --verbose)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass

    def logged_peers():
        return [
            event["peer"]
            for server in servers
            for event in map(json.loads, filter(str.strip, server.log().splitlines()))
            if event.get("code") == "empty-header"
        ]

    assert wait_until(logged_peers, "the protocol error in a server's log") == [client]


ANSWER = "Follow the white rabbit. \U0001f430"


def _for_servers_only(ca):
    """A key and a certificate from ``ca`` whose ExtendedKeyUsage allows server authentication only."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture(scope="module")
def client_certificates(tmp_path_factory) -> dict:
    """The client CA HAProxy trusts (its certificate alone in a file) and client certificates, each as
    (certificate, key) PEM files: alice's from that CA, and refused ones: alice's from another CA, an
    expired one from the client CA, and one from the client CA valid for server authentication only.

    A client certificate needs no ExtendedKeyUsage (OpenSSL accepts one without it), but if it has
    one, it must allow clientAuth.
    """
    folder = tmp_path_factory.mktemp("client-tls")
    pem = serialization.Encoding.PEM
    ours, theirs = make_ca("sockapp client CA"), make_ca("another CA")
    (folder / "clients-ca.pem").write_bytes(ours[1].public_bytes(pem))
    files = {"ca": folder / "clients-ca.pem"}
    for name, (key, cert) in {
        "alice": issue_certificate(ours, "alice", [x509.DNSName("alice.example")]),
        "another CA's": issue_certificate(theirs, "alice", [x509.DNSName("alice.example")]),
        "expired": issue_certificate(ours, "alice", [x509.DNSName("alice.example")], expired=True),
        "for servers only": _for_servers_only(ours),
    }.items():
        stem = name.replace(" ", "-").replace("'", "")
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(pem))
        (folder / f"{stem}.key").write_bytes(_pem_key(key))
        files[name] = (folder / f"{stem}.pem", folder / f"{stem}.key")
    return files


def search_on(tls, decoder: FrameDecoder, value: str):
    """One search on an open connection; the answer's document."""
    tls.sendall(encode_json({"action": "search", "value": value}))
    while not isinstance(message := decoder.next_message(), Message):
        data = tls.recv(65536)
        assert data, "the connection closed before the answer"
        decoder.receive_data(data)
    return message.document


def test_mutual_tls_at_haproxy(server_processes, haproxy_binary, tls_files, client_certificates, tmp_path):
    # deploy/README.md: "Mutual TLS at HAProxy": verify required and the client CA on the bind line.
    config = edited_config(
        tmp_path,
        (
            'bind "${SOCKAPP_LISTEN-*:5634}"\n',
            f'bind "${{SOCKAPP_LISTEN-*:5634}}" ssl crt {tls_files["combined"]}'
            f" verify required ca-file {client_certificates['ca']}\n",
        ),
    )
    servers = start_backends(server_processes, "tcp:0:interface=127.0.0.1")
    _, front, _ = start_haproxy(server_processes, haproxy_binary, config, servers, tmp_path)

    def endpoint(who=None) -> str:
        line = f"tls:localhost:{front}:trustRoots={tls_files['trust']}:endpoint=tcp\\:127.0.0.1\\:{front}"
        if who is not None:
            certificate, key = client_certificates[who]
            line += f":certificate={certificate}:privateKey={key}"
        return line

    def request(who=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool("sockapp"), "request", "--connect", endpoint(who), "search", "morpheus"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    # A good connection, held open with alice's certificate while the others are refused.
    context = ssl.create_default_context(cafile=str(tls_files["ca"]))
    context.load_cert_chain(*map(str, client_certificates["alice"]))
    with socket.create_connection(("127.0.0.1", front), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            decoder = FrameDecoder(side="client")
            assert search_on(tls, decoder, "morpheus") == {"result": ANSWER}

            # No certificate, another CA's, an expired one, one not for clients: HAProxy refuses the handshake.
            refused = {
                who or "no certificate": request(who) for who in (None, "another CA's", "expired", "for servers only")
            }
            print(
                "\nmutual TLS at HAProxy, what the refused clients print:",
                json.dumps({who: result.stderr for who, result in refused.items()}, indent=2, ensure_ascii=False),
            )
            for who, result in refused.items():
                assert result.returncode != 0, (who, result.stdout, result.stderr)
                assert ANSWER not in result.stdout and result.stdout.strip() == "", (who, result.stdout)
                assert "Traceback" not in result.stderr, (who, result.stderr)
            said = {
                who: result.stderr.removeprefix("sockapp request: error: ").strip() for who, result in refused.items()
            }
            assert said["no certificate"].startswith("TLS: the server requires a client certificate")
            assert (
                said["another CA's"]
                == "TLS: the server refused our client certificate: it does not accept the CA that signed it"
            )
            assert "expired on" in said["expired"]  # sockapp's client refuses to present it: checked before connecting
            assert said["for servers only"] == (
                "TLS: the server refused our client certificate: it is not for client use (its extended key usage)"
            )

            # The good connection went on through the refusals.
            assert search_on(tls, decoder, "ring") == {"result": "In the caves beneath the Misty Mountains. \U0001f48d"}

    # A good client with the CLI: a request, and a short bench without an error.
    result = request("alice")
    assert (result.returncode, result.stdout) == (0, ANSWER + "\n"), result.stderr
    result = subprocess.run(
        [tool("sockapp"), "bench", "--connect", endpoint("alice"), "-c", "10", "-n", "2000", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["requests"], summary["errors"]) == (2000, 0)
