"""A private PostgreSQL server for the integration tests: its own cluster in a temporary folder,
listening on 127.0.0.1 on a free port, stopped and removed afterwards.

It uses Debian's ``postgresql`` package, which ``make integration``
installs when it is missing. PostgreSQL refuses to run as root, so as root
(CI) the cluster belongs to the ``postgres`` user the package creates and
its commands run through ``runuser``. Authentication is ``trust``, on
loopback only: the cluster lives as long as the test session and holds
nothing but test data.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import uuid

from conftest import free_port

SUPERUSER = "sockapp"


def postgresql_bindir() -> str | None:
    """Where initdb, pg_ctl and postgres are: on PATH, or Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(candidates[-1]) if candidates else None


class PostgresCluster:
    """``initdb`` once; ``start()``, ``stop()`` (fast shutdown: sessions cut, as a restart does) as often as
    a test needs; ``remove()`` at the end. ``url(dbname)`` is the URI the kv app takes."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.folder = tempfile.mkdtemp(prefix="sockapp-pg-")  # under /tmp, which the postgres user can reach
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        # The default collation is ICU's en-US, as on a typical server, not C: there "Z" sorts after "a",
        # so a test finds out if the kv table did not ask for code point order itself (COLLATE "C").
        self._run(
            "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
            "--locale-provider=icu", "--icu-locale=en-US", "-N",
        )  # fmt: skip

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [os.path.join(self.bindir, tool), *args]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.log_text()}"
            )
        return result

    def log_text(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start on 127.0.0.1:port (the same port every time), its Unix socket in the cluster's folder."""
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder}"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        argv = [os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "status"]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    def processes(self) -> list[int]:
        """The postmaster and every process it started (its backends included)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == postmaster:
                    children.append(int(entry))
        return [postmaster, *children]

    def pause(self) -> None:
        """Hang the database (SIGSTOP): connections stay open, nothing answers, as a stuck server or a lost network."""
        for pid in self.processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.processes():
            os.kill(pid, signal.SIGCONT)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database of its own for one test: its URI."""
        name = f"kv_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement with psql; its output (unaligned, tuples only)."""
        psql = os.path.join(self.bindir, "psql")
        if not os.path.exists(psql):
            psql = shutil.which("psql") or "psql"
        argv = [psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(dbname), "-c", statement]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def remove(self) -> None:
        try:
            self.resume()  # a stopped server ignores pg_ctl stop
        except OSError:
            pass
        if self.running():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)
