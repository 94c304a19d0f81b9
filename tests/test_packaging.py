"""`pip install .` as a user does it: what the wheel ships, and twistd finding the plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, ServerProcess, json_request, send_and_read_all, split_frames

TIMEOUT = 600


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        timeout=TIMEOUT,
    )
    (built,) = out.glob("sockapp-*.whl")
    return built


def test_wheel_ships_the_package_and_only_the_plugin_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    under_twisted = [n for n in names if n.startswith("twisted/")]
    assert under_twisted == ["twisted/plugins/sockapp_plugins.py"]
    assert "sockapp/__init__.py" in names and "sockapp/tap/search.py" in names
    assert "sockapp/py.typed" in names  # code built on sockapp is type-checked against its annotations
    vectors = sorted(n for n in names if n.startswith("sockapp/vectors/"))  # for `sockapp conformance`
    assert vectors == [f"sockapp/vectors/{p.name}" for p in sorted((ROOT / "tests" / "vectors").glob("*.json"))]
    assert not [n for n in names if n.startswith(("tests/", "src/"))]


def test_fresh_virtualenv_install_serves_through_twistd(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True, timeout=TIMEOUT)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    record = next(site.glob("sockapp-*.dist-info")) / "RECORD"
    ours_under_twisted = [line.split(",")[0] for line in record.read_text().splitlines() if line.startswith("twisted/")]
    assert [p for p in ours_under_twisted if p.endswith(".py")] == ["twisted/plugins/sockapp_plugins.py"]

    help_text = subprocess.run(
        [str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path
    ).stdout
    commands = help_text.split("Commands:", 1)[1]
    assert "    sockapp " in commands and "    echo " in commands

    server = ServerProcess(
        [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "sockapp", "--port", "tcp:0:interface=127.0.0.1"], tmp_path
    )
    try:
        port = int(server.wait_for_log(r"starting on (\d+)").group(1))
        assert "Unable to write to plugin cache" not in server.log()
        received = send_and_read_all(("127.0.0.1", port), json_request({"action": "search", "value": "morpheus"}))
        ((_, content),) = split_frames(received)
        assert json.loads(content) == {"result": "Follow the white rabbit. \U0001f430"}
        checked = subprocess.run(  # the installed checker finds the vectors the wheel ships
            [str(venv / "bin" / "sockapp"), "conformance", "--connect", f"tcp:host=127.0.0.1:port={port}"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=tmp_path,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.splitlines()[-1] == "17 checks: 17 passed, 0 failed, 0 not supported"
    finally:
        server.stop()
