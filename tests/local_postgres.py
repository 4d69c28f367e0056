"""PostgreSQL clusters of the test session's own: initdb into a temp folder, start, stop, remove.

The shared server at 127.0.0.1:5432 trusts every connection, so no test
there ever gives a password that is checked. A :class:`LocalCluster` made
with ``password=`` asks for one (``scram-sha-256``, as real deployments
do), for every role, over TCP and the unix socket alike. Debian's binaries
(``/usr/lib/postgresql/15/bin``) make it; under root they run as the
``postgres`` user (``runuser``), since PostgreSQL refuses to run as root.
initdb and start take well under a second (``--no-sync``, ``fsync=off``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Login:
    """A role that must give its password, and the database it owns, on a :class:`LocalCluster`."""

    port: int
    user: str
    password: str
    dbname: str
    #: the folder of the server's unix socket
    socket_dir: str

    def url(self, password: str | None = None) -> str:
        """The ``postgresql://`` URL with ``password`` (default: the right one) percent-encoded."""
        return postgres_url(self.user, self.password if password is None else password,
                            self.port, self.dbname)  # fmt: skip

    def url_without_password(self) -> str:
        """The ``postgresql://`` URL naming no password (PGPASSWORD or a passfile gives it)."""
        return postgres_url(self.user, None, self.port, self.dbname)


class ClusterUnavailable(RuntimeError):
    """The cluster could not be made or started; the message says why and what to install."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_url(user: str, password: str | None, port: int, dbname: str) -> str:
    """``postgresql://user:password@127.0.0.1:port/dbname``, every part percent-encoded."""
    secret = "" if password is None else ":" + quote(password, safe="")
    return f"postgresql://{quote(user, safe='')}{secret}@127.0.0.1:{port}/{quote(dbname, safe='')}"


class LocalCluster:
    """A cluster in a temp folder on a free loopback port; its unix socket is in that folder.

    Args:
        password: the superuser ``postgres``'s password; every connection then
            authenticates with scram-sha-256. ``None`` trusts every connection.
        settings: more ``postgres -c name=value`` options.
    """

    def __init__(self, *, password: str | None = None, settings: str = "") -> None:
        missing = [name for name in ("initdb", "pg_ctl") if not (PG_BIN / name).is_file()]
        if missing:
            raise ClusterUnavailable(
                f"PostgreSQL's server binaries are missing ({', '.join(missing)} in {PG_BIN}); "
                "install Debian's postgresql-15 package (apt-get install postgresql), "
                "which scripts/check does"
            )
        self.password = password
        self.settings = settings
        self.base = Path(tempfile.mkdtemp(prefix="aegis-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.base / "data"

    @property
    def dsn(self) -> str:
        """The superuser's URL of the ``postgres`` database, with its password."""
        return self.url("postgres", self.password)

    def url(self, user: str, password: str | None, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL of this cluster for ``user``, the password percent-encoded."""
        return postgres_url(user, password, self.port, dbname)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        try:
            subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            output = (exc.stdout + exc.stderr).decode(errors="replace").strip()
            log = self.base / "log"
            if log.exists():
                output += "\n" + log.read_text(errors="replace")
            raise ClusterUnavailable(f"{Path(command[0]).name} failed: {output}") from exc

    def start(self) -> None:
        """initdb and start; returns once the server accepts connections."""
        auth = ["-A", "trust"]
        if self.password is not None:
            # Given in a file, never on a command line another user could read.
            secret = self.base / "superuser-password"
            secret.write_text(self.password, encoding="utf-8")
            if self._as_postgres:
                user = pwd.getpwnam("postgres")
                os.chown(secret, user.pw_uid, user.pw_gid)
            secret.chmod(0o600)
            auth = ["-A", "scram-sha-256", f"--pwfile={secret}"]
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), *auth, "-U", "postgres", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        self.restart()

    def crash(self) -> None:
        """End the server as a crash does (SIGQUIT to the postmaster): no checkpoint, no flush."""
        pid_file = self.data / "postmaster.pid"
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
        deadline = time.monotonic() + 60
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        """Start the server on its folder and port (again, once stopped or crashed)."""
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"{self.settings}"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
            "-o", options, "-w", "-t", "120", "start",
        )  # fmt: skip

    def add_login(self, user: str, password: str, dbname: str) -> Login:
        """Create role ``user`` with ``password`` and a database ``dbname`` it owns."""
        import psycopg  # the postgres extra, as every PostgreSQL test
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(user)
                )
            )
        return Login(self.port, user, password, dbname, str(self.base))

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ClusterUnavailable):
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
