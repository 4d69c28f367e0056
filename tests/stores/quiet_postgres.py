"""A PostgreSQL cluster of the test session's own, quiet enough to watch its WAL flushes.

On the shared server every other client's durable commit flushes our
WAL too, so whether an append waited for the disk cannot be seen there.
This cluster has no other writer, and its WAL writer flushes what an
asynchronous commit left only every 10 s (``wal_writer_delay``; never by
volume, no standby snapshots at ``wal_level=minimal``, no autovacuum): a
commit that did not wait is, for seconds, past the flushed end of the WAL.
"""

from __future__ import annotations

from local_postgres import LocalCluster

#: what keeps the cluster's WAL unflushed until a commit asks for the disk
QUIET_SETTINGS = (
    "-c wal_writer_delay=10000 -c wal_writer_flush_after=2147483647 "
    "-c wal_level=minimal -c max_wal_senders=0 -c autovacuum=off "
    "-c checkpoint_timeout=3600 -c fsync=on -c synchronous_commit=on"
)


class QuietServer(LocalCluster):
    """A trusting local cluster with QUIET_SETTINGS and pg_walinspect (tests/local_postgres.py)."""

    def __init__(self) -> None:
        super().__init__(settings=QUIET_SETTINGS)

    def start(self) -> None:
        super().start()
        import psycopg  # the postgres extra, as every PostgreSQL test

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            # reads the WAL: where each commit record ends
            conn.execute("CREATE EXTENSION pg_walinspect SCHEMA public")
