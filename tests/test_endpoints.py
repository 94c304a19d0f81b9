"""Endpoint strings: Twisted's grammar, and sockapp's ssl: server ports checked at start-up."""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.internet.endpoints import _parse as twisted_parse
from twisted.internet.testing import MemoryReactor

from sockapp.net.endpoints import client_endpoint, endpoint_arguments, server_endpoint
from sockapp.net.proxy import CheckedProxyEndpoint

DESCRIPTIONS = [
    "tcp:5634",
    "tcp:host=127.0.0.1:port=5634",
    r"tls:localhost:5634:endpoint=tcp\:127.0.0.1\:5634",
    "ssl:5634:privateKey=a=b.pem:certKey=c.pem",  # '=' after the first belongs to the value
    r"unix:/tmp/x\:y.sock",
    r"tcp:a\\b:c",
    "tcp::",
    "",
    "tcp:5634:",
    r"x:trailing\\",
    "x:a=",
    "x:=b",
]


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_arguments_split_as_twisted_splits_them(description):
    assert endpoint_arguments(description) == twisted_parse(description)


def test_ssl_ports_are_built_by_sockapp_with_tls_1_2_at_least(tls_files):
    from OpenSSL import SSL

    endpoint = server_endpoint(MemoryReactor(), f"ssl:0:privateKey={tls_files['key']}:certKey={tls_files['cert']}")
    options = cast(Any, endpoint)._sslContextFactory.getContext().set_options(0)  # adds nothing; returns what is set
    assert options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1


def test_haproxy_ports_wrap_what_follows_them(tls_files):
    endpoint = server_endpoint(
        MemoryReactor(), f"haproxy:ssl:0:privateKey={tls_files['key']}:certKey={tls_files['cert']}"
    )
    assert isinstance(endpoint, CheckedProxyEndpoint)


def test_a_wrong_argument_is_one_line_naming_the_scheme():
    with pytest.raises(ValueError, match=r"^ssl: got an unexpected keyword argument 'colour'$"):
        server_endpoint(MemoryReactor(), "ssl:0:colour=blue")
    with pytest.raises(ValueError, match=r"^tls: unknown parameter colour "):
        client_endpoint(MemoryReactor(), "tls:localhost:1:colour=blue")
    with pytest.raises(ValueError, match=r"^ssl: sockapp does not take sslmethod="):
        server_endpoint(MemoryReactor(), "ssl:0:sslmethod=TLSv1_METHOD")


def test_other_endpoints_are_twisteds(tmp_path):
    reactor = MemoryReactor()
    assert type(server_endpoint(reactor, "tcp:0")).__name__ == "TCP4ServerEndpoint"
    assert type(client_endpoint(reactor, f"unix:{tmp_path}/s")).__name__ == "UNIXClientEndpoint"


@pytest.mark.parametrize("description", [r"s\sl:0:privateKey=/nowhere.key", r"\ssl:0:privateKey=/nowhere.key"])
def test_an_escaped_ssl_prefix_is_still_sockapps_checked_ssl(description):
    """Twisted reads 's\\sl' as 'ssl': sockapp must too, or its checks (and TLS 1.2 at least) are skipped."""
    with pytest.raises(ValueError, match=r"^ssl: cannot read"):
        server_endpoint(MemoryReactor(), description)


def test_an_escaped_tls_prefix_is_still_sockapps_checked_tls():
    with pytest.raises(ValueError, match=r"^tls: cannot read trustRoots"):
        client_endpoint(MemoryReactor(), r"t\ls:localhost:1:trustRoots=/nowhere.pem")


@pytest.mark.parametrize("make", [server_endpoint, client_endpoint])
@pytest.mark.parametrize("description", ["tcp:5634\\", "tls:localhost:1\\", "ssl:0\\"])
def test_a_lone_backslash_at_the_end_is_a_value_error(make, description):
    """Twisted's parser raised RuntimeError('generator raised StopIteration'): a traceback from twistd."""
    with pytest.raises(ValueError, match="ends with a lone"):
        make(MemoryReactor(), description)


@pytest.mark.parametrize("prefix", ["HAPROXY", r"h\aproxy"])
def test_any_spelling_of_haproxy_gets_sockapps_checked_proxy_endpoint(prefix):
    """Twisted's own haproxy: plugin (which does not check what it reads) answered these."""
    endpoint = server_endpoint(MemoryReactor(), f"{prefix}:tcp:0")
    assert isinstance(endpoint, CheckedProxyEndpoint)
