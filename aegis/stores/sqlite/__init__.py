"""The embedded SQLite store: one file, WAL mode, several processes."""
