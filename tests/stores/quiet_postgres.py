"""A PostgreSQL cluster of the test session's own, quiet enough to watch its WAL flushes.

On the shared server every other client's durable commit flushes our
WAL too, so whether an append waited for the disk cannot be seen there.
This cluster has no other writer, and its WAL writer flushes what an
asynchronous commit left only every 10 s (``wal_writer_delay``; never by
volume, no standby snapshots at ``wal_level=minimal``, no autovacuum): a
commit that did not wait is, for seconds, past the flushed end of the WAL.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")

#: what keeps the cluster's WAL unflushed until a commit asks for the disk
QUIET_SETTINGS = (
    "-c wal_writer_delay=10000 -c wal_writer_flush_after=2147483647 "
    "-c wal_level=minimal -c max_wal_senders=0 -c autovacuum=off "
    "-c checkpoint_timeout=3600 -c fsync=on -c synchronous_commit=on"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class QuietServer:
    """initdb into a temp folder (as the ``postgres`` user under root), start, stop, remove."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="aegis-pg-quiet-"))
        self.port = _free_port()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        data = str(self.base / "data")
        self._run(
            str(PG_BIN / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 {QUIET_SETTINGS}"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", data, "-l", str(self.base / "log"), "-o", options,
            "-w", "-t", "120", "start",
        )  # fmt: skip
        import psycopg  # the postgres extra, as every PostgreSQL test

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            # reads the WAL: where each commit record ends
            conn.execute("CREATE EXTENSION pg_walinspect SCHEMA public")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # never started
            self._run(
                str(PG_BIN / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate", "-w",
                "stop",
            )  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
