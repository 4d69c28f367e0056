"""The PostgreSQL store, for fleets: psycopg 3 and a connection pool.

Needs the ``postgres`` extra: ``pip install "aegis-runtime[postgres]"``.

- :mod:`.connection`: :class:`~.connection.Database`, the one psycopg
  boundary (timeouts, the pool, every error as a StoreError with the DSN's
  password masked), opened once per location by
  :func:`aegis.stores.open_stores` and shared by the three stores below;
- :mod:`.schema`: versioned migrations per component, recorded in
  ``aegis_schema_versions``, for this package's tables and those other
  modules add (approvals, usage counters);
- :mod:`.audit`: :class:`~.audit.PostgresAuditStore`, the audit chain that
  ``AuditLogger("postgresql://...")`` and ``open_stores`` give;
- :mod:`.usage` and :mod:`.approvals`: the counters of limits and the
  approval tables, in the audit's database and schema.
"""
