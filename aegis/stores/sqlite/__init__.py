"""The embedded SQLite store: one file, WAL mode, several processes.

:mod:`.connection` is the one sqlite3 -> StoreError boundary, :mod:`.schema`
versions each component's tables, :mod:`.audit` keeps the hash chain.
"""
