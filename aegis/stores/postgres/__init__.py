"""The PostgreSQL store, for fleets: psycopg 3 and a connection pool.

Needs the ``postgres`` extra: ``pip install "aegis-runtime[postgres]"``.
"""
