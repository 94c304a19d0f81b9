"""twistd entry points: option parsing, services on a MemoryReactor, plugin discovery."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from conftest import send_and_read_all, split_frames, start_twistd, tool
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.plugin import getPlugins
from twisted.python import usage

from sockapp.apps.search import TUTORIAL_ANSWERS, SearchApp
from sockapp.server import AppFactory
from sockapp.server.echo import EchoFactory
from sockapp.server.listening import ListeningService
from sockapp.tap import echo, options_from_environment, search
from sockapp.wire.framing import encode_json


def parse(module, *argv):
    options = module.Options()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize(
    "port, endpoint",
    [
        ("5634", "tcp:5634:interface=127.0.0.1"),
        ("0", "tcp:0:interface=127.0.0.1"),
        ("tcp:5634:interface=0.0.0.0", "tcp:5634:interface=0.0.0.0"),
        ("tcp6:5634:interface=\\:\\:1", "tcp6:5634:interface=\\:\\:1"),
        ("unix:/tmp/sockapp-test.sock", "unix:/tmp/sockapp-test.sock"),
    ],
)
@pytest.mark.parametrize("module", [search, echo])
def test_port_is_a_number_or_an_endpoint(module, port, endpoint):
    assert parse(module, "--port", port)["endpoint"] == endpoint


@pytest.mark.parametrize("module", [search, echo])
def test_default_port_is_5634_on_loopback(module):
    assert parse(module)["endpoint"] == "tcp:5634:interface=127.0.0.1"


@pytest.mark.parametrize("bad", ["70000", "nonsense:1", "tcp:notaport", "-5"])
@pytest.mark.parametrize("module", [search, echo])
def test_bad_port_is_a_usage_error(module, bad):
    with pytest.raises(usage.UsageError) as caught:
        parse(module, "--port", bad)
    assert "\n" not in str(caught.value)


def test_data_file_replaces_the_answers(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"neo": "The One."}))
    options = parse(search, "--data", str(path))
    assert dict(options["index"].answers) == {"neo": "The One."}
    assert dict(parse(search)["index"].answers) == dict(TUTORIAL_ANSWERS)


@pytest.mark.parametrize("content", [None, "{broken"])
def test_bad_data_file_is_a_one_line_usage_error(tmp_path, content):
    path = tmp_path / "answers.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(usage.UsageError) as caught:
        parse(search, "--data", str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_after_a_usage_error_the_usage_text_points_to_help():
    options = search.Options()
    with pytest.raises(usage.UsageError):
        options.parseOptions(["--bogus"])
    assert options.getUsage() == "Run 'twistd sockapp --help' for every option."
    assert "--max-content-length" in search.Options().getUsage()


def test_sockapp_service_listens_with_its_options():
    reactor = MemoryReactor()
    options = parse(search, "--port", "tcp:6000:interface=127.0.0.1", "--max-content-length", "1000", "--verbose")
    service = search.makeService(options, reactor)
    service.startService()
    ((port, factory, _backlog, interface),) = reactor.tcpServers
    assert (port, interface) == (6000, "127.0.0.1")
    assert isinstance(factory, AppFactory) and isinstance(factory.app, SearchApp)
    assert factory.max_content_length == 1000 and factory.verbose


def test_echo_service_listens():
    reactor = MemoryReactor()
    service = echo.makeService(parse(echo, "--port", "6001"), reactor)
    service.startService()
    ((port, factory, _backlog, interface),) = reactor.tcpServers
    assert (port, interface) == (6001, "127.0.0.1")
    assert isinstance(factory, EchoFactory)


def test_plugins_are_discovered():
    makers: dict[str, Any] = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}  # ServiceMakers
    assert makers["sockapp"].module == "sockapp.tap.search"
    assert makers["echo"].module == "sockapp.tap.echo"
    assert makers["sockapp"].options is search.Options


def test_options_from_environment():
    options = options_from_environment(search.Options(), {"SOCKAPP_ARGS": "--port 7000 --verbose"})
    assert options["endpoint"] == "tcp:7000:interface=127.0.0.1" and options["verbose"]
    with pytest.raises(SystemExit) as caught:
        options_from_environment(echo.Options(), {"SOCKAPP_ARGS": "--port nonsense:1"})
    assert str(caught.value).startswith("SOCKAPP_ARGS: --port nonsense:1")


SURROGATE_DATA = b'{"\\ud800": "half a pair", "neo": "the other \\udc00 half"}'
DUPLICATE_DATA = b'{"neo": "The One.", "\\ud800\\n": "a", "\\ud800\\n": "b"}'


def search_request(query: str) -> bytes:
    return encode_json({"action": "search", "value": query})


def answers(data: bytes) -> list[object]:
    return [json.loads(content)["result"] for _, content in split_frames(data)]


def test_a_lone_surrogate_in_the_data_file_is_served(tmp_path):
    path = tmp_path / "answers.json"
    path.write_bytes(SURROGATE_DATA)
    reactor = MemoryReactorClock()
    search.makeService(parse(search, "--port", "6002", "--data", str(path)), reactor).startService()
    ((_port, factory, _backlog, _interface),) = reactor.tcpServers
    assert isinstance(factory, AppFactory)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(search_request("\ud800") + search_request("neo"))
    assert answers(transport.value()) == ["half a pair", "the other \udc00 half"]


def test_duplicate_queries_are_a_one_line_usage_error(tmp_path):
    path = tmp_path / "answers.json"
    path.write_bytes(DUPLICATE_DATA)
    with pytest.raises(usage.UsageError) as caught:
        parse(search, "--data", str(path))
    assert str(caught.value) == f"data file {path}: duplicate query '\\ud800\\n'"


def twistd_env() -> dict[str, str]:
    return dict(os.environ, PYTHONIOENCODING="utf-8")


def test_twistd_serves_a_lone_surrogate_end_to_end(tmp_path, server_processes):
    path = tmp_path / "answers.json"
    path.write_bytes(SURROGATE_DATA)
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1", "--data", str(path))
    data = send_and_read_all(("127.0.0.1", port), search_request("\ud800") + search_request("neo"), timeout=60)
    assert answers(data) == ["half a pair", "the other \udc00 half"]
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    command = [tool("sockapp"), "request", "--connect", endpoint]
    shown = subprocess.run([*command, "search", "neo"], capture_output=True, timeout=60, env=twistd_env())
    assert (shown.stdout, shown.stderr, shown.returncode) == (b"the other \\udc00 half\n", b"", 0)
    whole = subprocess.run([*command, "--json", "search", "neo"], capture_output=True, timeout=60, env=twistd_env())
    assert (whole.stderr, whole.returncode) == (b"", 0)
    assert json.loads(whole.stdout)["content"] == {"result": "the other \udc00 half"}


def twistd_refuses(path, cwd) -> str:
    """The last line twistd writes when it refuses ``--data PATH`` (it must exit 1, without a traceback)."""
    argv = [tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", "tcp:0:interface=127.0.0.1", "--data", str(path)]
    result = subprocess.run(argv, capture_output=True, timeout=60, env=twistd_env(), cwd=cwd)
    output = (result.stdout + result.stderr).decode("utf-8")
    assert result.returncode == 1 and "Traceback" not in output, output
    return output.splitlines()[-1]


def test_twistd_refuses_duplicate_queries_with_one_line(tmp_path):
    path = tmp_path / "answers.json"
    path.write_bytes(DUPLICATE_DATA)
    assert twistd_refuses(path, tmp_path).endswith(f": data file {path}: duplicate query '\\ud800\\n'")


def test_twistd_names_a_data_file_not_named_in_utf8_with_one_line(tmp_path):
    path = tmp_path / "missing-\udcff.json"  # the byte 0xff: not UTF-8, so not printable as it is
    shown = f"{tmp_path}/missing-\\udcff.json"
    assert twistd_refuses(path, tmp_path).endswith(f"cannot read data file {shown}: No such file or directory")


# -- --app MODULE:NAME ---------------------------------------------------------------

APP_MODULE = '''
from sockapp.app import App

app = App("mine")

@app.action("double")
def double(value):
    """Twice VALUE."""
    return value * 2

def make():
    return app

not_an_app = 5
'''


@pytest.fixture
def in_module_dir(tmp_path, monkeypatch):
    (tmp_path / "mymodule_for_tap.py").write_text(APP_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    yield tmp_path
    __import__("sys").modules.pop("mymodule_for_tap", None)


@pytest.mark.parametrize("name", ["app", "make"])
def test_app_option_loads_an_app_or_a_callable_returning_one_from_the_working_directory(in_module_dir, name):
    options = parse(search, "--app", f"mymodule_for_tap:{name}")
    assert options["application"].name == "mine"
    assert "double" in options["application"].actions


@pytest.mark.parametrize(
    "spec, says",
    [
        ("mymodule_for_tap", "expected MODULE:NAME"),
        ("no_such_module_here:app", "cannot import no_such_module_here"),
        ("mymodule_for_tap:missing", "has no missing"),
        ("mymodule_for_tap:not_an_app", "is not a sockapp.app.App"),
    ],
)
def test_a_bad_app_is_a_one_line_usage_error(in_module_dir, spec, says):
    with pytest.raises(usage.UsageError) as caught:
        parse(search, "--app", spec)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_data_is_for_the_search_app_only(in_module_dir):
    (in_module_dir / "answers.json").write_text("{}")
    with pytest.raises(usage.UsageError, match="--data is for the search app"):
        parse(search, "--app", "mymodule_for_tap:app", "--data", "answers.json")


def test_max_pending_and_action_timeout_reach_the_factory():
    from twisted.internet.task import Clock

    options = parse(search, "--max-pending", "3", "--action-timeout", "0")
    service = search.makeService(options, reactor=Clock())
    assert isinstance(service, ListeningService)
    factory = service.factory
    assert (factory.max_pending, factory.action_timeout) == (3, None)
    with pytest.raises(usage.UsageError):
        parse(search, "--max-pending", "0")
