"""Where things are kept: one set of interfaces, several engines.

An in-memory store for tests, embedded SQLite by default, and PostgreSQL
for fleets of processes on many machines.
"""
