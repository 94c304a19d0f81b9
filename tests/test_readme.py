"""The README's Python examples run as shown."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_sockapp, start_twistd


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text("utf-8"), re.S)


def test_python_example_prints_the_answers(server_processes):
    (example,) = [block for block in python_blocks() if "port=5634" in block]
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    code = example.replace("port=5634", f"port={port}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == "Follow the white rabbit. \U0001f430\nIn the caves beneath the Misty Mountains. \U0001f48d\n"
    )


SERVE = ("--app", "myservice:app", "--port", "tcp:0:interface=127.0.0.1")
HOW = {
    "twistd": lambda start: start_twistd(start, "sockapp", *SERVE),
    "workers": lambda start: start_twistd(start, "sockapp", *SERVE, "--workers", "2"),
    "tac": lambda start: start_twistd(
        start, "-y", str(ROOT / "tac" / "sockapp.tac"), env={"SOCKAPP_ARGS": " ".join(SERVE)}
    ),
}


@pytest.mark.parametrize("how", list(HOW))
def test_your_own_service_is_served_and_called_as_the_readme_shows(server_processes, tmp_path, how):
    """The 'Your own service' example, copied into a file as a new user would, served with --app
    by twistd, with --workers and from the .tac file."""
    (example,) = [block for block in python_blocks() if block.startswith("# myservice.py")]
    (tmp_path / "myservice.py").write_text(example)  # server processes run in tmp_path
    port = HOW[how](server_processes)
    added = run_sockapp(port, "call", "add", '{"a": 2, "b": 3}')
    assert (added.returncode, added.stdout) == (0, "5\n")
    slept = run_sockapp(port, "call", "slow", "0.5")
    assert json.loads(slept.stdout) == {"slept": 0.5}
    missing = run_sockapp(port, "call", "lookup", "x")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "sockapp call: error: not-found: no entry 'x'\n"
    described = run_sockapp(port, "describe")
    assert described.returncode == 0
    assert (
        "add       Add two numbers." in described.stdout and "slow      Answer after VALUE seconds." in described.stdout
    )
    assert described.stdout.startswith("myservice: 5 actions\n")
