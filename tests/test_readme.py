"""The README's Python example runs as shown."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT, start_twistd


def test_python_example_prints_the_answers(server_processes):
    readme = (ROOT / "README.md").read_text("utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    code = example.replace("port=5634", f"port={port}")
    assert code != example
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == "Follow the white rabbit. \U0001f430\nIn the caves beneath the Misty Mountains. \U0001f48d\n"
    )
