"""A real PostgreSQL server for the fleet tests and the bench: Debian's binaries, initdb in a temporary directory,
a free loopback port, the unix socket in that directory. As root it runs as the `postgres` user (PostgreSQL refuses
to run as root). Stopped by PID."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.mqtt_helpers import free_port, wait_port


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("postgres")
    return Path(exe).parent if exe else None


class Postgres:
    """`Postgres().start()`; `dsn(dbname)`; `create_db(name)`; `stop()`."""

    def __init__(self, fsync: bool = False, port: int | None = None) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
        self.bindir = bindir
        self.port = port or free_port()
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "postgres.log"
        self._as: list[str] = []
        if os.getuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def start(self) -> "Postgres":
        subprocess.run([*self._as, str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "edge",
                        "-E", "UTF8", "--no-sync", "--locale=C"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
        opts = ["-c", "listen_addresses=127.0.0.1", "-k", str(self.dir), "-p", str(self.port),
                "-c", "max_connections=50", "-c", "shared_buffers=64MB"]
        if not self.fsync:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([*self._as, str(self.bindir / "postgres"), "-D", str(self.data), *opts],
                                     stdout=logf, stderr=logf, start_new_session=True)
        logf.close()
        if not wait_port(self.port, 30):
            raise RuntimeError(f"postgres did not start on port {self.port}: {self.log.read_text()[-2000:]}")
        deadline = time.monotonic() + 30
        while True:  # the port opens before the server accepts connections
            rc = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                stdout=subprocess.DEVNULL).returncode
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return self

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://edge@127.0.0.1:{self.port}/{dbname}"

    def create_db(self, name: str) -> str:
        import psycopg
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.proc is not None:
            # runuser forwards the signal to postgres; SIGINT is PostgreSQL's "fast shutdown"
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
