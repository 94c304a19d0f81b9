"""Real server processes for tests and tools: start one, wait until it listens, stop it and its group.

Like ``twisted.internet.testing``, a public module of helpers for code that
tests or measures sockapp: the test suite, ``soak/`` and ``benchmarks/`` all
start servers this one way::

    from sockapp.testing import start_twistd

    with start_twistd("sockapp", "--port", "tcp:0:interface=127.0.0.1", folder=tmp) as server:
        ...  # server.port, server.pid, server.log()

A server runs in a session of its own, so ``stop()`` reaches the workers it
forks too, and writes stdout and stderr to a log file in ``folder``; a wait
that gives up says why with the whole log and leaves no process behind.
Nothing here imports the rest of sockapp, or Twisted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["LISTENING", "ServerProcess", "WaitForLogFailed", "start_twistd", "tool", "twistd_argv"]

#: What twistd logs once a port listens; group 1 is the port number, or the quoted path of a UNIX socket.
LISTENING = r"starting on (\d+|'[^']*')"

#: Seconds between SIGTERM and SIGKILL: longer than a server's default --shutdown-timeout (10 s) to drain.
DEFAULT_GRACE = 15.0


def tool(name: str) -> str:
    """A console script installed beside the running interpreter (``twistd``, ``sockapp``): the same venv."""
    return str(Path(sys.executable).parent / name)


def twistd_argv(*args: str) -> list[str]:
    """``twistd -n --pidfile= ARGS``: in the foreground, no pid file to clash between servers."""
    return [tool("twistd"), "-n", "--pidfile=", *args]


class WaitForLogFailed(AssertionError):
    """The server exited, or the timeout passed, before its log showed what was awaited; the message holds the log.

    An ``AssertionError``, so a test that waits reports a failed check.
    """


class ServerProcess:
    """A server process (twistd, the tutorial's, any program) with its output in a log file.

    Stopped by ``stop()`` or at the end of a ``with`` block: SIGTERM to its
    process group, SIGKILL after ``grace`` seconds.
    """

    proc: subprocess.Popen[bytes]
    log_path: Path
    grace: float
    port: int | None

    def __init__(
        self,
        argv: Sequence[str],
        folder: Path,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "server",
        grace: float = DEFAULT_GRACE,
    ) -> None:
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        full_env.update(env or {})
        self.log_path = Path(folder) / f"{name}-{time.monotonic_ns()}.log"
        self.grace = grace
        self.port = None
        with open(self.log_path, "wb") as log:  # the child holds its own copy
            self.proc = subprocess.Popen(
                list(argv),
                cwd=folder,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The process id (also its process group's and session's)."""
        return self.proc.pid

    def log_bytes(self) -> bytes:
        """Everything the process has written so far."""
        return self.log_path.read_bytes()

    def log(self) -> str:
        """Everything the process has written so far, as text (undecodable bytes replaced)."""
        return self.log_bytes().decode("utf-8", "replace")

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` in the log, once there.

        Raises ``WaitForLogFailed`` with the log if the process exits or
        ``timeout`` seconds pass first, and stops the process then, so a
        failed start leaves nothing running.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None  # before reading: then the log read is complete
            found = re.search(pattern, self.log())
            if found:
                return found
            if exited:
                problem = f"server exited with {self.proc.returncode}"
                break
            if time.monotonic() >= deadline:
                problem = f"no {pattern!r} in the server log within {timeout:g} s"
                break
            time.sleep(0.05)
        self.stop()
        raise WaitForLogFailed(f"{problem}:\n{self.log()}")

    def wait_until_listening(self, pattern: str = LISTENING, timeout: float = 30.0) -> int:
        """Wait for ``pattern`` (group 1: the port) and return the port, also kept in ``port``; 0 for a UNIX socket."""
        found = self.wait_for_log(pattern, timeout).group(1)
        self.port = int(found) if found.isdigit() else 0
        return self.port

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds.

        If the process itself has already exited, what it forked may still run
        in its group (a worker parent that died at start-up): that is killed.
        A process group id is not reused while any member of the group lives.
        """
        if self.proc.poll() is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # nothing left in the group
            return
        # Not yet reaped, so the group id is still ours even if the process just exited.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(self.grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(self.grace)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_twistd(
    *args: str,
    folder: Path,
    env: Mapping[str, str] | None = None,
    pattern: str = LISTENING,
    timeout: float = 30.0,
    name: str = "server",
    grace: float = DEFAULT_GRACE,
) -> ServerProcess:
    """Run ``twistd -n ARGS`` in ``folder`` until it listens; the server, with ``port`` set (0 for a UNIX socket).

    ``pattern`` picks the line when a server logs more than one port (group 1:
    the port). If it never listens, ``WaitForLogFailed`` with the log, and no
    process is left.
    """
    server = ServerProcess(twistd_argv(*args), folder, env, name=name, grace=grace)
    try:
        server.wait_until_listening(pattern, timeout)
    except BaseException:  # not only WaitForLogFailed: a pattern without group 1, Ctrl-C in the wait
        server.stop()
        raise
    return server
