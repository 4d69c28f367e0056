"""The audit store in PostgreSQL: one hash chain shared by every writer.

Records live in ``aegis_audit_log`` in the store's schema, one column per
record field: ``id`` and ``start_id`` as ``BIGINT``, the rest as ``TEXT``
exactly as hashed, so the server never re-renders what the hash covers.

An append is one round trip and one statement. The client encodes its
records' fields and the text their hashes cover
(:func:`aegis.core.chain.hash_pieces`) and sends a prepared statement
straight to libpq, its parameters already in PostgreSQL's text form
(psycopg's adaptation of arrays cost more client CPU than the round trip):
a ``SELECT`` of the schema's ``aegis_audit_append`` function, which takes
the chain's transaction-scoped advisory lock, reads the head, links,
hashes and inserts the records, and commits without waiting for the disk:
the lock is held for a few statements on the server, never across a
network round trip or an fsync. When the records must be durable, a
``CALL`` of the ``aegis_audit_append_call`` procedure instead runs the
function, commits, and then writes a one-line logical message whose
commit waits for the disk; it lies after the append's, so its flush
covers the records. Those
flushes run outside the lock, so the writers of a fleet wait for the disk
together (PostgreSQL's group commit): the chain grows with the number of
writers, not one fsync at a time. Every record is in the chain the moment
its append commits; none waits for a later linking step. (A trail of an
older schema opened by a writer that may not migrate it appends through
the function and a pipeline of three statements instead.)

An action's start record may carry its flow event
(:meth:`PostgresAuditStore.append_guarded`): when the usage store keeps
its events in this database and schema, the ``aegis_audit_append_flow``
function inserts the event into its ``aegis_flow_events`` table in the
start's own transaction, so the pair costs one round trip and commits
together or not at all, where the usage store's own commit was a round
trip and a flush more per action.

The primary key makes a fork impossible even for a writer that skipped
the lock: every writer numbers a record one past the head it links to, so
two records linking to one predecessor would share an id. (A row slipped in
under a free id is an edit, which verification reports like any other; a
unique ``prev_hash``, which schema versions 1-6 kept, cost the server two
index entries per action and refused only that one shape of edit.) The
client recomputes each record's hash from the id and predecessor the server
chose (:func:`aegis.core.chain.seal`) and refuses a server whose hash
differs. The facade (:class:`~aegis.runtime.audit.AuditLogger`)
calls :meth:`PostgresAuditStore.append` with every record that queued up
meanwhile (from a worker thread) or, for a task acting alone, at once on
its own thread: concurrent actions of a process share one round trip.
Threads appending at once (the synchronous API, several event loops) share
them too: while one holds the writing connection the others queue, and the
next to hold it writes every queued append in one round trip and one flush;
each thread gets its own records, or its own copy of the error.

An append whose connection was lost (a restarted server, a terminated
backend, a server that stopped answering) is settled on a new connection,
under the chain's lock. The lost connection's server session, if it is
still there (the client gave up waiting, the server did not), is ended
first: until then the append could still reach it and commit. Then, when
its last record is there it committed, and is returned as it is; otherwise
it is appended once more. Nothing is written twice and nothing is lost.
That session is known only on a connection of its own: the pid the server
gave at connect (its cancel key) is the session's. A pooler gives a pid of
its own and runs each transaction on any of its server sessions, one of
which may serve another client by then: none is ended, and an append not
found is reported of unknown outcome
(:class:`~aegis.errors.AuditOutcomeUnknown`), never appended again. So is
one whose session did not end in time.
Verification streams the chain through a server-side cursor in one
snapshot and hands it to :func:`aegis.core.chain.verify_chain`, the one
verifier of every store.

Size: the PostgreSQL audit store is one class over one connection: the append
function, the chain's head, the reads and the migrations share its transaction
handling and its error mapping.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.errors import error_from_result
from psycopg.generators import execute
from psycopg.pq import ExecStatus

from aegis.core.chain import (
    EMPTY_HEAD,
    GENESIS_HASH,
    Head,
    VerifyReport,
    hash_pieces,
    seal,
    seal_pieces,
    verify_chain,
)
from aegis.core.checkpoint import CHECKPOINT_COLUMNS, Checkpoint
from aegis.core.filters import NO_FILTERS, Filters
from aegis.core.record import RECORD_FIELDS, AuditRecord, RecordDraft, RecordKind
from aegis.errors import AegisError, AuditOutcomeUnknown, StoreError
from aegis.stores._url import StoreURL
from aegis.stores._waiting import Waiting
from aegis.stores.base import (
    STARTED,
    STATS_FIELDS,
    Durability,
    ReadMixin,
    SignatureCheck,
    must_flush,
    resolve_durability,
)
from aegis.stores.postgres.connection import (
    AnsweringConnection,
    Connection,
    Database,
    server_identity,
)
from aegis.stores.postgres.schema import migrate, schema_lock_key

__all__ = [
    "APPEND_FLOW_FUNCTION",
    "APPEND_FLOW_PROCEDURE",
    "APPEND_FUNCTION",
    "APPEND_ONE_FUNCTION",
    "APPEND_ONE_PROCEDURE",
    "APPEND_PROCEDURE",
    "AUDIT_TABLE",
    "CHECKPOINT_TABLE",
    "PostgresAuditStore",
]

#: the table of the audit trail, in the store's schema
AUDIT_TABLE: Final = "aegis_audit_log"
#: the table of its signed checkpoints
CHECKPOINT_TABLE: Final = "aegis_audit_checkpoints"
#: the function that links and inserts an append, in the store's schema
APPEND_FUNCTION: Final = "aegis_audit_append"
#: the procedure that appends and, when asked, commits and waits for the disk
APPEND_PROCEDURE: Final = "aegis_audit_append_call"
#: the same two for an append of one record, a parameter per field
APPEND_ONE_FUNCTION: Final = "aegis_audit_append_one"
APPEND_ONE_PROCEDURE: Final = "aegis_audit_append_one_call"

#: the fields a record may leave empty; all others are NOT NULL
_NULLABLE: Final = frozenset(
    {
        "kind",
        "human_decision",
        "result_status",
        "result_error",
        "started_at",
        "completed_at",
        "context",
        "decided_at",
        "policy_digest",
        "start_id",
    }
)
_INTEGERS: Final = frozenset({"id", "start_id"})


def _column(name: str) -> str:
    kind = "BIGINT" if name in _INTEGERS else "TEXT"
    return f"{name} {kind}" + ("" if name in _NULLABLE else " NOT NULL")


def _head(into: str) -> str:
    """plpgsql: the chain's last id into ``rid`` and its hash into ``into`` (genesis: 0).

    Run under the chain's lock; a new snapshot per statement, so it reads
    the head as the last holder of the lock left it.
    """
    return (
        f"  SELECT l.id, l.hash INTO rid, {into} FROM {{schema}}.{AUDIT_TABLE} AS l\n"
        "    ORDER BY l.id DESC LIMIT 1;\n"
        "  IF NOT FOUND THEN\n"
        f"    rid := 0; {into} := '{GENESIS_HASH}';\n"
        "  END IF;\n"
    )


def _hash(indent: str, mid: str, tail: str) -> str:
    """plpgsql: ``rhash`` := the hash of record ``rid`` after ``rprev``, from its pieces.

    The server's side of :func:`aegis.core.chain.record_hash`: ``mid`` and
    ``tail`` are the record's :func:`~aegis.core.chain.hash_pieces`.
    """
    return (
        f"{indent}rhash := encode(sha256(convert_to('[' || rid || ',' || {mid}\n"
        f"{indent}  || ',\"' || rprev || '\"' || {tail}, 'UTF8')), 'hex');\n"
    )


def _append_function() -> str:
    """The statement creating ``aegis_audit_append``: lock, link, hash, insert; no fsync.

    Arguments: the chain's lock key (two ints), every record's draft fields
    as one flat text array (``start_id`` as text), and per record the two
    pieces of its hashed text (:func:`aegis.core.chain.hash_pieces`). It
    returns each record's id, predecessor hash and hash, in order.
    """
    width = len(RecordDraft._fields)
    values = ", ".join(
        f"v[b + {n}]" + ("::bigint" if name in _INTEGERS else "")
        for n, name in enumerate(RecordDraft._fields, 1)
    )
    return (
        f"CREATE OR REPLACE FUNCTION {{schema}}.{APPEND_FUNCTION}("
        "lock1 integer, lock2 integer, v text[], mids text[], tails text[]) "
        "RETURNS TABLE (rid bigint, rprev text, rhash text) "
        "LANGUAGE plpgsql VOLATILE AS $aegis$\n"
        "DECLARE\n"
        "  b integer;\n"
        "BEGIN\n"
        # the lock is released at commit: committing must not wait for the
        # disk, or the fleet would fsync one append at a time
        "  PERFORM set_config('synchronous_commit', 'off', true);\n"
        "  PERFORM pg_advisory_xact_lock(lock1, lock2);\n"
        + _head("rhash")
        + "  FOR i IN 1 .. coalesce(array_length(mids, 1), 0) LOOP\n"
        f"    b := (i - 1) * {width};\n"
        "    rid := rid + 1;\n"
        "    rprev := rhash;\n"
        + _hash("    ", "mids[i]", "tails[i]")
        + f"    INSERT INTO {{schema}}.{AUDIT_TABLE} ({', '.join(RECORD_FIELDS)})\n"
        f"      VALUES (rid, {values}, rprev, rhash);\n"
        "    RETURN NEXT;\n"
        "  END LOOP;\n"
        "END\n"
        "$aegis$"
    )


def _append_procedure() -> str:
    """The statement creating ``aegis_audit_append_call``: an append in one statement.

    It runs :data:`APPEND_FUNCTION` (whose transaction commits without
    waiting for the disk, releasing the chain's lock) and, when ``durable``,
    commits it and then commits a one-line logical message synchronously:
    that commit waits until the WAL is on disk up to itself, past the
    append's. One ``CALL`` in autocommit mode is one round trip and one
    statement for the server, where a pipeline of three cost three. It
    returns the first record's id and predecessor and the last record's
    hash: the client links the records itself and checks that it reaches
    the same last hash.
    """
    return (
        f"CREATE OR REPLACE PROCEDURE {{schema}}.{APPEND_PROCEDURE}("
        "lock1 integer, lock2 integer, v text[], mids text[], tails text[], durable boolean, "
        "INOUT first_id bigint, INOUT first_prev text, INOUT last_hash text) "
        "LANGUAGE plpgsql AS $aegis$\n"
        "DECLARE\n"
        "  r record;\n"
        "BEGIN\n"
        f"  FOR r IN SELECT * FROM {{schema}}.{APPEND_FUNCTION}(lock1, lock2, v, mids, tails)"
        " LOOP\n"
        "    IF first_id IS NULL THEN\n"
        "      first_id := r.rid; first_prev := r.rprev;\n"
        "    END IF;\n"
        "    last_hash := r.rhash;\n"
        "  END LOOP;\n"
        "  IF durable THEN\n"
        # ends the append's transaction (no flush, the lock released)
        "    COMMIT;\n"
        # a server whose default is not to wait would break the promise
        "    IF current_setting('synchronous_commit') = 'off' THEN\n"
        "      PERFORM set_config('synchronous_commit', 'on', true);\n"
        "    END IF;\n"
        "    PERFORM pg_logical_emit_message(true, 'aegis', '');\n"
        "  END IF;\n"
        "END\n"
        "$aegis$"
    )


#: the usage store's table of flow events (aegis.stores.postgres.usage), in the same schema
FLOW_EVENTS_TABLE: Final = "aegis_flow_events"
#: the one-record append that also inserts the action's flow event, and its procedure
APPEND_FLOW_FUNCTION: Final = "aegis_audit_append_flow"
APPEND_FLOW_PROCEDURE: Final = "aegis_audit_append_flow_call"


def _one_body(durable: bool, flow: bool = False) -> str:
    """The body of the one-record append: lock, link, hash and insert in two statements.

    Every field arrives as its own parameter, so the ``INSERT`` projects
    plain parameters (an array subscript per field cost the server more to
    set up, per call, than the rest of the append), and the lock and the
    commit settings are assignments, which plpgsql evaluates without
    starting an executor. With ``durable`` (the procedure) the append is
    committed without waiting for the disk, releasing the lock, and a
    logical message is then committed synchronously: its flush covers the
    record. With ``flow`` the action's flow event is inserted too, in the
    same transaction (before any ``COMMIT``): the start and the event commit
    together or not at all. The usage store's table is named, not checked:
    plpgsql resolves it when the statement first runs, and the runtime asks
    for this append only when that store keeps its events in this very
    database and schema.
    """
    fields = ", ".join(f"p_{name}" for name in RecordDraft._fields)
    event = (
        f"  INSERT INTO {{schema}}.{FLOW_EVENTS_TABLE}"
        " (session_id, action_type, action_target, params, at)\n"
        "    VALUES (e_session_id, e_action_type, e_action_target, e_params, e_at);\n"
        if flow
        else ""
    )
    flush = (
        "  IF durable THEN\n"
        "    COMMIT;\n"
        # a server whose default is not to wait would break the promise
        "    IF current_setting('synchronous_commit') = 'off' THEN\n"
        "      ignored := set_config('synchronous_commit', 'on', true);\n"
        "    END IF;\n"
        "    ignored := pg_logical_emit_message(true, 'aegis', '')::text;\n"
        "  END IF;\n"
    )
    return (
        "DECLARE\n"
        "  ignored text;\n"
        "BEGIN\n"
        # the lock is released at commit: committing must not wait for the
        # disk, or the fleet would fsync one append at a time
        "  ignored := set_config('synchronous_commit', 'off', true);\n"
        "  ignored := pg_advisory_xact_lock(lock1, lock2)::text;\n"
        + _head("rprev")
        + "  rid := rid + 1;\n"
        + _hash("  ", "mid", "tail")
        + f"  INSERT INTO {{schema}}.{AUDIT_TABLE} ({', '.join(RECORD_FIELDS)})\n"
        f"    VALUES (rid, {fields}, rprev, rhash);\n"
        + event
        + (flush if durable else "")
        + "END\n"
    )


def _one_arguments() -> str:
    return ", ".join(
        f"p_{name} " + ("bigint" if name in _INTEGERS else "text") for name in RecordDraft._fields
    )


def _append_one_function() -> str:
    """The statement creating ``aegis_audit_append_one``: one record, no flush.

    Arguments: the chain's lock key, the draft's fields one by one, the two
    pieces of its hashed text. Returns the record's id, predecessor and hash.
    """
    return (
        f"CREATE OR REPLACE FUNCTION {{schema}}.{APPEND_ONE_FUNCTION}(lock1 integer, "
        f"lock2 integer, {_one_arguments()}, mid text, tail text, "
        "OUT rid bigint, OUT rprev text, OUT rhash text) "
        "LANGUAGE plpgsql VOLATILE AS $aegis$\n" + _one_body(durable=False) + "$aegis$"
    )


def _append_one_procedure() -> str:
    """The statement creating ``aegis_audit_append_one_call``: one record, flushed if asked."""
    return (
        f"CREATE OR REPLACE PROCEDURE {{schema}}.{APPEND_ONE_PROCEDURE}(lock1 integer, "
        f"lock2 integer, {_one_arguments()}, mid text, tail text, durable boolean, "
        "INOUT rid bigint, INOUT rprev text, INOUT rhash text) "
        "LANGUAGE plpgsql AS $aegis$\n" + _one_body(durable=True) + "$aegis$"
    )


#: the flow event's parameters of the appends of APPEND_FLOW_FUNCTION and APPEND_FLOW_PROCEDURE
_FLOW_ARGUMENTS: Final = (
    "e_session_id text, e_action_type text, e_action_target text, e_params text, "
    "e_at double precision"
)


def _append_flow_function() -> str:
    """The statement creating ``aegis_audit_append_flow``: a start record and its flow event.

    :data:`APPEND_ONE_FUNCTION`'s arguments, then the event's five fields
    (the usage store's ``aegis_flow_events`` columns). No flush.
    """
    return (
        f"CREATE OR REPLACE FUNCTION {{schema}}.{APPEND_FLOW_FUNCTION}(lock1 integer, "
        f"lock2 integer, {_one_arguments()}, mid text, tail text, {_FLOW_ARGUMENTS}, "
        "OUT rid bigint, OUT rprev text, OUT rhash text) "
        "LANGUAGE plpgsql VOLATILE AS $aegis$\n" + _one_body(durable=False, flow=True) + "$aegis$"
    )


def _append_flow_procedure() -> str:
    """The statement creating ``aegis_audit_append_flow_call``: the same, flushed if asked."""
    return (
        f"CREATE OR REPLACE PROCEDURE {{schema}}.{APPEND_FLOW_PROCEDURE}(lock1 integer, "
        f"lock2 integer, {_one_arguments()}, mid text, tail text, {_FLOW_ARGUMENTS}, "
        "durable boolean, INOUT rid bigint, INOUT rprev text, INOUT rhash text) "
        "LANGUAGE plpgsql AS $aegis$\n" + _one_body(durable=True, flow=True) + "$aegis$"
    )


#: the unique constraint on prev_hash of schema versions 1-6
_ONE_SUCCESSOR: Final = "aegis_audit_log_one_successor"

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    # 0 -> 1: the chain as it is hashed, field by field
    0: (
        f"CREATE TABLE {{schema}}.{AUDIT_TABLE} ("
        + ", ".join(_column(name) for name in RECORD_FIELDS)
        + ", PRIMARY KEY (id)"
        # two records linking to one predecessor would be a fork (dropped by 6 -> 7)
        + f", CONSTRAINT {_ONE_SUCCESSOR} UNIQUE (prev_hash))",
        f"CREATE INDEX aegis_audit_log_session ON {{schema}}.{AUDIT_TABLE} (session_id, id)",
        # finds the final record of a start: the "actions" view asks per start
        f"CREATE INDEX aegis_audit_log_start ON {{schema}}.{AUDIT_TABLE} (start_id)"
        " WHERE start_id IS NOT NULL",
    ),
    # 1 -> 2: signed checkpoints of the chain's head, beside it
    1: (
        f"CREATE TABLE {{schema}}.{CHECKPOINT_TABLE} (count BIGINT PRIMARY KEY, "
        "hash TEXT NOT NULL, created_at TEXT NOT NULL, key_id TEXT NOT NULL, "
        "signature TEXT NOT NULL)",
    ),
    # 2 -> 3: appends in one round trip, linked by the server under the lock
    2: (_append_function(),),
    # 3 -> 4: an append, durable or not, in one statement
    3: (_append_procedure(),),
    # 4 -> 5: one record's append with a parameter per field, cheaper for
    # the server (the common case: an agent acting one action at a time)
    4: (_append_one_function(), _append_one_procedure()),
    # 5 -> 6: a start record and its action's flow event in one transaction and
    # one round trip, when the usage store shares the database and schema
    5: (_append_flow_function(), _append_flow_procedure()),
    # 6 -> 7: no unique index on prev_hash: the primary key refuses a fork
    # (see the module's docstring), and its two index entries per action
    # (start and final) cost the server about 24k instructions
    6: (f"ALTER TABLE {{schema}}.{AUDIT_TABLE} DROP CONSTRAINT IF EXISTS {_ONE_SUCCESSOR}",),
}


#: the schema version that added CHECKPOINT_TABLE
_CHECKPOINTS_SINCE: Final = 2
#: the schema version that added APPEND_PROCEDURE
_PROCEDURE_SINCE: Final = 4
#: the prepared statements of the writing connection: a durable append (a
#: CALL of APPEND_PROCEDURE), and one that waits for no disk (a SELECT of
#: APPEND_FUNCTION, which costs the server less than a CALL)
_PREPARED_DURABLE: Final = b"aegis_audit_append_durable"
_PREPARED_QUICK: Final = b"aegis_audit_append_quick"
#: the schema version that added APPEND_ONE_FUNCTION and APPEND_ONE_PROCEDURE
_ONE_SINCE: Final = 5
#: their prepared statements: a record appended alone
_PREPARED_ONE_DURABLE: Final = b"aegis_audit_append_one_durable"
_PREPARED_ONE_QUICK: Final = b"aegis_audit_append_one_quick"
#: the schema version that added APPEND_FLOW_FUNCTION and APPEND_FLOW_PROCEDURE
_FLOW_SINCE: Final = 6
#: their prepared statements: a start record with its flow event
_PREPARED_FLOW_DURABLE: Final = b"aegis_audit_append_flow_durable"
_PREPARED_FLOW_QUICK: Final = b"aegis_audit_append_flow_quick"

#: rows per page when reading, and per round trip of the verifying cursor
_PAGE: Final = 1000
#: how many of a session's newest records are searched for an append whose
#: outcome is unknown (a lost connection): only its own writer appends to a
#: session, so its last record, if there, is among the very newest
_SETTLE_WINDOW: Final = 1000

#: after an append, in the same round trip: wait for the disk. A transaction
#: that writes WAL and commits synchronously flushes the WAL up to its own
#: commit, which lies after the append's; a one-line logical message is the
#: cheapest such write any role may make. Many writers' flushes overlap and
#: the server syncs them together.
_FLUSH: Final = "SELECT pg_logical_emit_message(true, 'aegis', '')"
#: sent once per writing connection, before its appends are prepared
_GENERIC_PLANS: Final = "SET plan_cache_mode = force_generic_plan"
#: the writing connection's server session, told apart from a later one
#: that reuses its process id by its start time
_BACKEND: Final = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
#: end a lost writing connection's session, if it is still there
_END_BACKEND: Final = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
)
#: whether it is still there; the statistics snapshot is cleared first, or a
#: transaction would see the same rows at every look
_BACKEND_LEFT: Final = "SELECT pg_stat_clear_snapshot()"
_BACKEND_THERE: Final = "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
#: how long settling waits for a lost connection's session to end
_END_BACKEND_SECONDS: Final = 10.0

_COLUMNS: Final = sql.SQL(", ").join(map(sql.Identifier, RECORD_FIELDS))

# a start record that has a final record is not an "action" of its own
_FINISHED: Final = sql.SQL(
    "kind = 'start' AND EXISTS (SELECT 1 FROM {} AS f WHERE f.start_id = {}.id)"
)


def _pieces(drafts: list[RecordDraft]) -> list[tuple[str, str]]:
    """The hash pieces of every draft (:func:`aegis.core.chain.hash_pieces`), computed once."""
    try:
        return [hash_pieces(draft) for draft in drafts]
    except ValueError as exc:  # a NaN in a scalar field: no runtime writes one
        raise StoreError(f"an audit record holds what JSON cannot: {exc}") from exc


def _stored_pieces(
    drafts: Sequence[RecordDraft],
) -> tuple[list[RecordDraft], list[tuple[str, str]]]:
    """``drafts`` as PostgreSQL can store them (:func:`_storable`), and their hash pieces.

    The pieces hold every field, a text field either as it is or as JSON,
    which writes a NUL as ``\\u0000``: pieces with neither a NUL nor that
    escape come from a draft with no NUL, stored as it is. Speed: that
    costs two searches of text already built, where :func:`_storable`
    looks at each of the 21 fields; any other draft takes the exact path.
    """
    stored: list[RecordDraft] = []
    pieces: list[tuple[str, str]] = []
    try:
        for draft in drafts:
            pair = hash_pieces(draft)
            mid, tail = pair
            if "\x00" in mid or "\x00" in tail or "\\u0000" in mid or "\\u0000" in tail:
                marked = _storable(draft)
                if marked is not draft:
                    stored.append(marked)
                    pieces.append(hash_pieces(marked))
                    continue
            stored.append(draft)
            pieces.append(pair)
    except ValueError as exc:  # a NaN in a scalar field: no runtime writes one
        raise StoreError(f"an audit record holds what JSON cannot: {exc}") from exc
    return stored, pieces


def _arguments(
    drafts: list[RecordDraft], pieces: list[tuple[str, str]] | None = None
) -> tuple[list[Any], list[str], list[str]]:
    """The append function's arguments: every draft's fields in one list, the hash pieces."""
    values: list[Any] = []
    for draft in drafts:
        values.extend(draft[:-1])
        values.append(None if draft.start_id is None else str(draft.start_id))
    pairs = _pieces(drafts) if pieces is None else pieces
    return values, [mid for mid, _ in pairs], [tail for _, tail in pairs]


def _array(values: Sequence[object]) -> str:
    """``values`` as PostgreSQL's text form of a ``text[]``: quoted, escaped, NULL for None."""
    parts = []
    for value in values:
        if type(value) is str:
            text = value
        elif value is None:
            parts.append("NULL")
            continue
        elif isinstance(value, str):
            text = str.__str__(value)
        else:
            raise StoreError(
                f"an audit record field holds {type(value).__name__} {value!r}, not text"
            )
        if "\\" in text or '"' in text:
            text = text.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


def _call_parameters(
    drafts: list[RecordDraft], pieces: list[tuple[str, str]], encoding: str
) -> list[bytes | None]:
    """The parameters of a prepared append, in the text format, ready to send."""
    values: list[object] = []
    for draft in drafts:
        values.extend(draft[:-1])
        values.append(None if draft.start_id is None else str(draft.start_id))
    texts = (
        _array(values),
        _array([mid for mid, _ in pieces]),
        _array([tail for _, tail in pieces]),
    )
    try:
        encoded: list[bytes | None] = [text.encode(encoding) for text in texts]
    except UnicodeEncodeError as exc:
        raise StoreError(
            f"an audit record holds text the connection's encoding ({encoding}) cannot "
            f"carry: {exc.reason}; connect with client_encoding UTF8"
        ) from exc
    return encoded


def _one_parameters(draft: RecordDraft, pair: tuple[str, str], encoding: str) -> list[bytes | None]:
    """The parameters of a one-record append, in the text format: each field, then its pieces."""
    try:
        # str.encode, not value.encode: a subclass is sent as its text, and
        # anything but text fails here (TypeError) rather than being sent
        encode = str.encode
        parameters: list[bytes | None] = [
            None if value is None else encode(value, encoding) for value in draft[:-1]
        ]
        start_id = draft.start_id
        parameters.append(None if start_id is None else str(start_id).encode())
        parameters.append(encode(pair[0], encoding))
        parameters.append(encode(pair[1], encoding))
    except TypeError:
        wrong = next(v for v in draft[:-1] if v is not None and not isinstance(v, str))
        raise StoreError(
            f"an audit record field holds {type(wrong).__name__} {wrong!r}, not text"
        ) from None
    except UnicodeEncodeError as exc:
        raise StoreError(
            f"an audit record holds text the connection's encoding ({encoding}) cannot "
            f"carry: {exc.reason}; connect with client_encoding UTF8"
        ) from exc
    return parameters


def _encoded(texts: Sequence[str], encoding: str) -> list[bytes | None]:
    """``texts`` as the text-format parameters of a prepared statement."""
    try:
        return [text.encode(encoding) for text in texts]
    except UnicodeEncodeError as exc:
        raise StoreError(
            f"a flow event holds text the connection's encoding ({encoding}) cannot "
            f"carry: {exc.reason}; connect with client_encoding UTF8"
        ) from exc


def _composite(value: bytes | None) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The three fields of ``(id,prev,hash)``, PostgreSQL's text of the one-record append's row.

    The id is digits and both hashes hex, so the text holds no quotes.
    """
    if value is None or not value.startswith(b"(") or not value.endswith(b")"):
        return None, None, None
    parts = value[1:-1].split(b",")
    if len(parts) != 3:
        return None, None, None
    return parts[0] or None, parts[1] or None, parts[2] or None


def _same_action(final: RecordDraft, start: AuditRecord) -> bool:
    """Whether ``final`` records the outcome of ``start``'s action, as the verifier judges."""
    return (
        final.session_id == start.session_id
        and final.action_type == start.action_type
        and final.action_target == start.action_target
        and final.action_params == start.action_params
    )


def _likeness(final: RecordDraft, start: AuditRecord) -> tuple[bool, bool]:
    """How surely ``final`` records the outcome of ``start``'s action, to compare two starts.

    First: of its action, decided when and under the policy it was (two
    identical actions, same session, action and params, differ there: the
    runtime stamps each decision with its own time). Then: of its action,
    decided as it was (risk, approval, rule, reason, which a final copies
    from its start): what tells apart two decisions of one action that a
    caller keeping no stamp made.
    """
    if not _same_action(final, start):
        return False, False
    return (
        final.decided_at == start.decided_at and final.policy_digest == start.policy_digest,
        final.risk_level == start.risk_level
        and final.approval == start.approval
        and final.matched_rule == start.matched_rule
        and final.reason == start.reason,
    )


def _storable(draft: RecordDraft) -> RecordDraft:
    # PostgreSQL text cannot hold NUL (JSON text escapes it, scalars may
    # not); the hash covers exactly what is stored, so mark it before sealing.
    for value in draft:
        if type(value) is str:
            if "\x00" in value:
                break
        elif value is not None and isinstance(value, str) and "\x00" in value:
            break
    else:
        return draft
    return RecordDraft._make(
        f"<unstorable str: {v!a}>" if isinstance(v, str) and "\x00" in v else v for v in draft
    )


def _not_read_committed(conn: Connection) -> bool:
    """Whether ``conn``'s statements run in another isolation than READ COMMITTED by default."""
    row = conn.execute("SELECT current_setting('default_transaction_isolation')").fetchone()
    return row is None or row[0] != "read committed"


class PostgresAuditStore(ReadMixin):
    """An :class:`~aegis.stores.base.AuditStore` in a PostgreSQL database, for fleets.

    Every process on every machine that opens the same database and schema
    appends to one chain. Nothing connects until first use; :meth:`check`
    connects and proves the store usable.

    Args:
        dsn: ``postgresql://user:password@host:5432/dbname`` or a libpq string.
        schema: the PostgreSQL schema of the tables (created when missing);
            ``None`` uses the connection's ``current_schema()``.
        create: create the tables when missing; ``False`` requires an existing trail.
        readonly: never create, migrate or write (auditors, the command line).
        durability: what a returned :meth:`append` survives. Every append is
            committed when it returns (visible to every reader, safe from
            the death of the writing process). ``"process"``: nothing more;
            a crash of the server may lose the last fraction of a second.
            ``"result"`` (the default): an append holding a final record
            returns once it is on the server's disk (and its synchronous
            standbys), and with it every record before it, its action's
            start included; an append of start records only does not wait
            (the server's WAL writer flushes it within a fraction of a
            second anyway). ``"full"``: every append waits for the disk. See
            :data:`~aegis.stores.base.Durability`.
        synchronous: the older name: ``"normal"`` is ``"result"``, ``"full"``
            is ``"full"``.
        connect_timeout, statement_timeout, response_timeout, pool_timeout,
        max_connections: see :class:`~aegis.stores.postgres.connection.Database`.

    Example::

        store = PostgresAuditStore("postgresql://aegis@db.internal/aegis", readonly=True)
        print(store.verify())
    """

    remote = True

    def __init__(
        self,
        dsn: str | StoreURL,
        *,
        schema: str | None = None,
        create: bool = True,
        readonly: bool = False,
        durability: str | None = None,
        synchronous: str | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float | None = 30.0,
        response_timeout: float | None = 40.0,
        pool_timeout: float = 10.0,
        max_connections: int = 4,
    ) -> None:
        #: what a returned append promises (:data:`~aegis.stores.base.Durability`)
        self.durability: Durability = resolve_durability(durability, synchronous, normal="result")
        self.db = Database(
            dsn,
            schema=schema,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            response_timeout=response_timeout,
            pool_timeout=pool_timeout,
            max_connections=max_connections,
        )
        self.url = self.db.where
        #: the schema of the tables, once the store has been read or written:
        #: the ``schema`` option, else the connection's ``current_schema()``
        self.schema: str | None = schema
        self.readonly = readonly
        self._create = create and not readonly
        self._ready = False
        self._table: sql.Composed | None = None
        self._checkpoints: sql.Composed | None = None
        self._sql_append = self._sql_flush = self._sql_lock = self._sql_last = ""
        self._sql_call = self._sql_quick = self._sql_one_call = self._sql_one_quick = b""
        self._sql_flow_call = self._sql_flow_quick = b""
        self._encoding = "utf-8"
        self._writer_conn: AnsweringConnection | None = None
        self._write_lock = threading.Lock()
        # appends of other threads waiting for the lock: the next holder
        # writes them all in its round trip (group commit across threads)
        self._queue_lock = threading.Lock()
        self._queue: list[Waiting] = []
        self._writer_pid = 0
        # the writing connection's server session (pid, start time): a lost
        # connection's append may still run there until that session ends
        self._writer_backend: tuple[int, Any] | None = None
        # the usage store's database guards() said yes to, and the writing connection
        # with the identity its server gave (see guards)
        self._beside: Database | None = None
        self._writer_server: tuple[object, tuple[Any, ...] | None] = (None, None)
        self._abandoned: list[Connection] = []
        # start records committed without a flush, by id; starts recorded
        # again after a server crash lost them, by the id the runtime holds
        # (the start's first) -> the start as recorded now; a later start of
        # this store given such an id, by that id -> the start as recorded
        # now; whether the writing connection was lost since (see _recover_starts)
        self._unflushed: dict[int, AuditRecord] = {}
        self._moved: dict[int, AuditRecord] = {}
        self._reused: dict[int, AuditRecord] = {}
        self._suspect = False
        self._closed = False
        #: append transactions committed by this store (one per batch)
        self.commits = 0

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<PostgresAuditStore {self.url}{state}>"

    # -- schema ----------------------------------------------------------------

    def _prepare(self, conn: Connection) -> None:
        """Create or check the tables once per store; free after the first call."""
        if self._ready:
            return
        version = migrate(self.db, conn, "audit", _MIGRATIONS, create=self._create)
        schema = self.schema = self.db.schema(conn)
        table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(AUDIT_TABLE))
        self._table = table
        # a reader of an older trail finds no checkpoints table: it has none
        self._checkpoints = (
            sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(CHECKPOINT_TABLE))
            if version >= _CHECKPOINTS_SINCE
            else None
        )
        # The statements of every append, rendered once: composing SQL costs
        # more than a loopback round trip.
        key = schema_lock_key(schema, AUDIT_TABLE)
        if not self.readonly:
            # The key as two numbers: a CALL computes its arguments at every
            # execution (a SELECT's generic plan folds hashtext() once), about
            # 4k instructions of the server per durable append.
            row = conn.execute(sql.SQL("SELECT {}").format(key)).fetchone()
            if row is not None:
                key = sql.SQL("{}, {}").format(sql.Literal(int(row[0])), sql.Literal(int(row[1])))
        self._sql_append = (
            sql.SQL("SELECT rid, rprev, rhash FROM {}.{}({}, %b::text[], %b::text[], %b::text[])")
            .format(sql.Identifier(schema), sql.Identifier(APPEND_FUNCTION), key)
            .as_string(conn)
        )
        self._sql_lock = sql.SQL("SELECT pg_advisory_xact_lock({})").format(key).as_string(conn)
        # an older trail opened without migrating (create=False) has no procedure
        self._sql_call = (
            sql.SQL("CALL {}.{}({}, $1::text[], $2::text[], $3::text[], true, NULL, NULL, NULL)")
            .format(sql.Identifier(schema), sql.Identifier(APPEND_PROCEDURE), key)
            .as_string(conn)
            .encode()
            if version >= _PROCEDURE_SINCE
            else b""
        )
        self._sql_quick = (
            sql.SQL("SELECT rid, rprev, rhash FROM {}.{}({}, $1::text[], $2::text[], $3::text[])")
            .format(sql.Identifier(schema), sql.Identifier(APPEND_FUNCTION), key)
            .as_string(conn)
            .encode()
        )
        # one record alone: a parameter per field (none before schema version 5)
        ones = ", ".join(f"${n}" for n in range(1, len(RecordDraft._fields) + 3))
        self._sql_one_call, self._sql_one_quick = (
            (
                sql.SQL("CALL {}.{}({}, {}, true, NULL, NULL, NULL)")
                .format(
                    sql.Identifier(schema), sql.Identifier(APPEND_ONE_PROCEDURE), key, sql.SQL(ones)
                )
                .as_string(conn)
                .encode(),
                # a composite in one column: a FROM clause would cost the server a scan
                sql.SQL("SELECT {}.{}({}, {})")
                .format(
                    sql.Identifier(schema), sql.Identifier(APPEND_ONE_FUNCTION), key, sql.SQL(ones)
                )
                .as_string(conn)
                .encode(),
            )
            if version >= _ONE_SINCE
            else (b"", b"")
        )
        # a start record with its flow event (none before schema version 6)
        flows = ", ".join(f"${n}" for n in range(1, len(RecordDraft._fields) + 8))
        self._sql_flow_call, self._sql_flow_quick = (
            (
                sql.SQL("CALL {}.{}({}, {}, true, NULL, NULL, NULL)")
                .format(
                    sql.Identifier(schema),
                    sql.Identifier(APPEND_FLOW_PROCEDURE),
                    key,
                    sql.SQL(flows),
                )
                .as_string(conn)
                .encode(),
                sql.SQL("SELECT {}.{}({}, {})")
                .format(
                    sql.Identifier(schema),
                    sql.Identifier(APPEND_FLOW_FUNCTION),
                    key,
                    sql.SQL(flows),
                )
                .as_string(conn)
                .encode(),
            )
            if version >= _FLOW_SINCE
            else (b"", b"")
        )
        # the newest records of a session, to settle an append whose outcome is unknown
        self._sql_last = (
            sql.SQL("SELECT {} FROM {} WHERE session_id = %s ORDER BY id DESC LIMIT {}")
            .format(_COLUMNS, table, sql.Literal(_SETTLE_WINDOW))
            .as_string(conn)
        )
        self._ready = True

    @property
    def _t(self) -> sql.Composed:
        if self._table is None:  # pragma: no cover - every caller prepared first
            raise StoreError(f"the audit store at {self.url} is not open yet")
        return self._table

    def check(self) -> None:
        """Connect, create the tables unless read-only, and prove this role may append.

        Raises:
            StoreError: a wrong DSN, a server that does not answer, a schema
                without the trail (read-only), a role that may not write, a
                standby; the message says which and what to do.
        """
        with self._reading("open the audit trail in") as conn:
            if self.readonly:
                return
            table = self._t.as_string(conn)
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT'), pg_is_in_recovery(), "
                "current_setting('transaction_read_only'), current_user, "
                "has_function_privilege('pg_logical_emit_message(boolean, text, text)', "
                "'EXECUTE'), current_setting('server_encoding')",
                (table,),
            ).fetchone()
        may_insert, standby, read_only, user, may_flush, encoding = row or (
            True, False, "off", "", True, "UTF8"
        )  # fmt: skip
        if encoding != "UTF8":
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: the database's encoding is "
                f"{encoding}, and records are hashed as UTF-8; create the database with "
                "ENCODING 'UTF8'"
            )
        if standby or read_only == "on":
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: the server is read-only "
                "(a standby, or default_transaction_read_only); point the DSN at the primary"
            )
        if not may_insert:
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: role {user!r} may not INSERT "
                f"into {table}; grant it (GRANT SELECT, INSERT ON {table} TO {user}) or use a "
                "role that may"
            )
        if not may_flush:
            raise StoreError(
                f"cannot append to the audit trail in {self.url}: role {user!r} may not execute "
                "pg_logical_emit_message, which Aegis uses to wait until records are on disk; "
                "GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO "
                f"{user}"
            )

    # -- writing ---------------------------------------------------------------

    def append(self, drafts: Sequence[RecordDraft]) -> list[AuditRecord]:
        """Link ``drafts`` after the head in one transaction; return them once durable.

        "Durable" as :attr:`durability` says: at ``"result"`` an append that
        holds a final record returns once it is on the server's disk.

        Raises:
            StoreError: the records were not written, or (the connection was
                lost and cannot be had again) whether they were is unknown;
                the message names the DSN and what to do.
        """
        if self.readonly:
            raise StoreError(f"the audit store at {self.url} was opened read-only")
        if self._closed:
            raise StoreError(f"the audit store at {self.url} is closed; open a new one")
        if not drafts:
            return []
        stored, pieces = _stored_pieces(drafts)
        if not self._queue and self._write_lock.acquire(blocking=False):
            # Speed (the common case: one thread appending, nobody queued):
            # no Waiting to hand over. A thread that queues meanwhile waits
            # for the lock and writes its own batch after this one.
            try:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                if not batch:
                    return self._append_locked(stored, pieces)
                mine = Waiting(stored, pieces)
                return self._append_batch([*batch, mine], mine)
            finally:
                self._write_lock.release()
        mine = Waiting(stored, pieces)
        with self._queue_lock:
            self._queue.append(mine)
        with self._write_lock:
            if mine.done:  # another thread's append carried these records
                return mine.outcome()
            with self._queue_lock:
                batch, self._queue = self._queue, []
            return self._append_batch(batch, mine)

    def guards(self, database: object) -> bool:
        """Whether :meth:`append_guarded` may write the flow events of a store on ``database``.

        ``database`` is the usage store's
        :class:`~aegis.stores.postgres.connection.Database`: this store's own
        (:func:`aegis.stores.open_stores` shares it), or one of the same DSN
        and the same ``schema`` option. Equal DSNs are not enough: one naming
        several hosts (``host=a,b``) may take each connection to another
        server, and the events written here would be missed by the usage
        store's reads there. So each connection is asked which server and
        database it reaches (:func:`~aegis.stores.postgres.connection.server_identity`,
        once per connection): the usage store's as it connects (here, if it
        has not yet), the writing connection's here. Unless both servers say,
        and say the same, the answer is no, for good: the events are noted
        the ordinary way, and no action pays an append that is refused (a
        server whose role may not run ``pg_control_system()`` never says).
        :meth:`append_guarded` compares them again (a server restarted, a
        connection made anew), and refuses an event when they differ, or a
        server did not say. The
        guard carries the schema the usage store resolved, and an append
        whose schema differs is refused. Never for a writer that may not
        migrate (``create=False``): its trail may be older than the flow append.
        """
        if self.readonly or not self._create or self._closed:
            return False
        if not isinstance(database, Database):
            return False
        if database is not self.db and (
            database.location.target != self.db.location.target
            or database.schema_option != self.db.schema_option
        ):
            return False
        connect = database.flow_connect
        if database.flow_server is None and connect is not None:
            try:
                connect()  # the usage store's connection says where its events are read
            except AegisError:  # cannot be reached: nothing is confirmed
                return False
        if database.flow_server is None:  # unknown, or its server does not say: no
            return False
        self._beside = database
        with self._write_lock:
            try:
                return self._serves(database, self._writer())
            except StoreError:  # cannot be reached: nothing is confirmed
                return False

    def _serves(self, database: Database, conn: AnsweringConnection) -> bool:
        """Whether ``conn`` reaches the server and database of ``database``'s usage store."""
        theirs = database.flow_server
        if theirs is None:
            return False
        known = self._writer_server
        if known[0] is not conn:  # a new writing connection: ask its server, once
            known = self._writer_server = (conn, server_identity(conn))
        return known[1] is not None and known[1] == theirs

    def append_guarded(self, draft: RecordDraft, guard: Sequence[str]) -> AuditRecord:
        """Append the start record ``draft`` and its action's flow event in one transaction.

        ``guard`` is what :meth:`~aegis.stores.postgres.usage.PostgresUsageStore.guard`
        gave: the usage store's schema, then the event's session, type,
        target, params and time as text. One round trip, one statement (the
        usual start costs two: the record, then the event in the usage
        store's own synchronous commit): the start and the event commit
        together or not at all, and wait for the disk at every level, as the
        usage store's own commit of an event does: a flow condition of
        another process reads the event before this process could write it
        again after a server crash.

        Raises:
            StoreError: nothing was written (the runtime then writes the
                start and the event the ordinary way, which refuses an event
                holding a NUL: libpq would cut it short); an append whose
                outcome the connection took with it is settled first, and
                returned if it committed.
        """
        if self.readonly:
            raise StoreError(f"the audit store at {self.url} was opened read-only")
        if self._closed:
            raise StoreError(f"the audit store at {self.url} is closed; open a new one")
        event = guard[1:]
        if "\x00" in event[0] or "\x00" in event[1] or "\x00" in event[2]:
            # libpq reads a text parameter up to its first NUL: the event would
            # be kept cut short (another session's, another target), and a flow
            # rule would judge what did not run. The ordinary way refuses it.
            raise StoreError(
                "a flow event's session, type or target holds a NUL (0x00), which "
                "PostgreSQL's text cannot keep"
            )
        stored, pieces = _stored_pieces((draft,))
        with self._write_lock:
            conn = self._writer()
            beside = self._beside
            if (
                guard[0] != self.schema
                or not self._sql_flow_call
                or beside is None
                or not self._serves(beside, conn)
            ):
                raise StoreError(
                    f"the flow events of schema {guard[0]!r} are not beside the audit trail in "
                    f"{self.url} (schema {self.schema!r}); noted the ordinary way"
                )
            if self._suspect:
                self._recover_starts(conn)
            # The event is on disk before the action runs, at every level: a
            # start lost with a crashed server is recorded again only at this
            # process's next append, after the next action's flow check read
            # the session (a mail let through after a secret it never saw).
            durable = True
            try:
                records = self._call(conn, stored, pieces, durable, event)
            except psycopg.Error as exc:
                # committed or not? Settled (the lost session ended first),
                # never appended again here: if not, the runtime writes both
                # the ordinary way, so nothing is written twice
                records = self._settle_failed(conn, stored, pieces, durable, exc, retry=False)
            except BaseException:
                if conn.closed:
                    self._drop_writer_conn()
                raise
            self._appended(records, durable)
        return records[0]

    def _append_batch(self, batch: list[Waiting], mine: Waiting) -> list[AuditRecord]:
        """Append every queued thread's records in one round trip; hold the write lock."""
        try:
            records = self._append_locked(
                [d for w in batch for d in w.drafts], [p for w in batch for p in w.extra]
            )
        except Exception as exc:
            for waiting in batch:
                waiting.failed(exc)
            raise
        except BaseException:
            for waiting in batch:
                waiting.failed(self._interrupted())
            raise
        start = 0
        for waiting in batch:
            waiting.wrote(records[start : start + len(waiting.drafts)])
            start += len(waiting.drafts)
        return mine.outcome()

    def _interrupted(self) -> StoreError:
        return StoreError(
            f"an append to the audit trail in {self.url} was interrupted; "
            "whether its records were written is not known: verify the trail"
        )

    def _append_locked(
        self, stored: list[RecordDraft], pieces: list[tuple[str, str]]
    ) -> list[AuditRecord]:
        """Append ``stored`` (one or more threads' records) in one round trip; hold the lock."""
        durable = must_flush(self.durability, stored)
        conn = self._writer()
        if self._suspect:
            self._recover_starts(conn)
        remapped = self._remapped(stored)
        if remapped is not stored:
            pieces = [
                pair if new is old else hash_pieces(new)
                for new, old, pair in zip(remapped, stored, pieces, strict=True)
            ]
            stored = remapped
        try:
            if self._sql_call:
                records = self._call(conn, stored, pieces, durable)
            else:
                records = self._append_once(conn, stored, _arguments(stored, pieces), durable)
        except psycopg.Error as exc:
            # Which part of the message failed is not known: the append
            # may have committed before its flush failed. Settle it.
            records = self._settle_failed(conn, stored, pieces, durable, exc, retry=True)
        except BaseException:
            # interrupted mid-round-trip (KeyboardInterrupt): the connection
            # was closed; the next append settles on a new one
            if conn.closed:
                self._drop_writer_conn()
            raise
        self._appended(records, durable)
        return records

    def _appended(self, records: list[AuditRecord], durable: bool) -> None:
        """Keep account of the start records a server crash could still take away.

        A start committed without a flush is lost if the server crashes
        before anything flushes past it; its final record, appended later,
        would then name a start that is not there. Such starts are kept
        until a flush (or their final record) makes them safe.
        """
        if self._moved or self._reused:
            self._finished_moved(records)
        if durable:
            self._unflushed.clear()  # the flush covered every record before it
            return
        for record in records:
            if record.kind == RecordKind.START:
                self._unflushed[record.id] = record
            elif record.start_id is not None:
                # committed after its start: a crash cannot keep it and lose the start
                self._unflushed.pop(record.start_id, None)

    def _remapped(self, drafts: list[RecordDraft]) -> list[RecordDraft]:
        """``drafts``, a final record of a start lost in a server crash naming it recorded again.

        A final names its start by the id the runtime holds, the start's
        first. The crash freed the lost start's id, and the server gives it
        out again, to this writer's own next start too: then the runtime
        holds that id for two actions (:meth:`_renamed` tells them apart).
        Nothing is changed here: a start stays moved until the final record
        naming it has committed (:meth:`_finished_moved`).
        """
        if not self._moved and not self._reused:
            return drafts
        return [self._renamed(draft) for draft in drafts]

    def _renamed(self, draft: RecordDraft) -> RecordDraft:
        """``draft``, naming its start as recorded now.

        The id it names may be a lost start's (moved) and also a later
        start's of this store (reused). A final is the lost action's only if
        it is of the same action (what :func:`~aegis.core.chain.verify_chain`
        checks of a final and its start); when the later start is of the
        same action too, only if it is more like the lost action's decision
        than the later one's (:func:`_likeness`: its time and policy, then
        its risk, rule and reason).
        """
        token = draft.start_id
        if token is None:
            return draft
        moved = self._moved.get(token)
        holder = self._reused.get(token)
        if (
            moved is not None
            and _same_action(draft, moved)
            and (holder is None or _likeness(draft, moved) > _likeness(draft, holder))
        ):
            return draft._replace(start_id=moved.id)
        if holder is not None and holder.id != token:
            return draft._replace(start_id=holder.id)
        return draft

    @staticmethod
    def _moved_on(
        drafts: list[RecordDraft], moves: list[tuple[AuditRecord, AuditRecord]]
    ) -> list[RecordDraft]:
        """``drafts``, already naming their starts as recorded, naming anew those just moved.

        ``moves`` were recorded again in the caller's transaction, not yet
        committed; each lost start is named by the id it was recorded at.
        """
        if not moves:
            return drafts
        now = {old.id: new.id for old, new in moves}
        return [
            draft if draft.start_id not in now else draft._replace(start_id=now[draft.start_id])
            for draft in drafts
        ]

    def _finished_moved(self, records: list[AuditRecord]) -> None:
        """Note this store's starts given a moved start's id; forget the moved ones now finished.

        ``records`` are committed. A start recorded again is forgotten once
        a final record names it; so is a later start given its first id.
        """
        for record in records:
            if record.kind == RecordKind.START and record.id in self._moved:
                self._reused[record.id] = record
        ended = {r.start_id for r in records if r.start_id is not None}
        for table in (self._moved, self._reused):
            for token, start in list(table.items()):
                if start.id in ended:
                    del table[token]

    def _recover_starts(self, conn: Connection) -> None:
        """After a lost connection: record again every unflushed start the server lost.

        A server that crashed loses the commits it had not flushed. Every
        start record this store committed without a flush is looked up; one
        that is gone is appended again (same fields, a new id, after the
        records written since), and the final record of its action will name
        the new id. The action's evidence stays whole: its start, then its
        outcome.
        """
        if not self._unflushed:
            self._suspect = False
            return
        try:
            with conn.transaction():
                conn.execute(self._sql_lock)
                moves = self._record_lost_starts(conn)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._drop_writer_conn()
            raise self.db.error("append to the audit trail in", exc) from exc
        self._starts_moved(moves)
        self._suspect = False

    def _record_lost_starts(self, conn: Connection) -> list[tuple[AuditRecord, AuditRecord]]:
        """Append again the unflushed starts not in the chain; the caller holds the lock.

        Returns each lost start with the start recorded again. The store's
        own account of them is left as it is: the caller's transaction may
        yet fail to commit, and then nothing was recorded again; once it has
        committed, the caller hands them to :meth:`_starts_moved`. A start
        still there stays unflushed: the connection may have been lost with
        the server running (a timeout, a terminated backend), and a crash
        may take the start yet.
        """
        kept = dict(self._unflushed)
        rows = conn.execute(
            sql.SQL("SELECT id, hash FROM {} WHERE id = ANY(%s)").format(self._t), (list(kept),)
        ).fetchall()
        there = {int(i) for i, digest in rows if kept[int(i)].hash == digest}
        lost = [record for record_id, record in sorted(kept.items()) if record_id not in there]
        if not lost:
            return []
        drafts = [RecordDraft._make(record[1:-2]) for record in lost]
        cursor = conn.execute(self._sql_append, _arguments(drafts))
        again = self._sealed(drafts, cursor.fetchall())
        self.commits += 1
        return list(zip(lost, again, strict=True))

    def _starts_moved(self, moves: list[tuple[AuditRecord, AuditRecord]]) -> None:
        """Keep account of starts recorded again, once their transaction has committed.

        A start moved before (or a later start given a moved start's id) is
        kept under the id the runtime holds for it, not the id it had.
        """
        for old, new in moves:
            self._unflushed.pop(old.id, None)
            self._unflushed[new.id] = new
            for table in (self._moved, self._reused):
                token = next(
                    (t for t, s in table.items() if s.id == old.id and s.hash == old.hash), None
                )
                if token is not None:
                    table[token] = new
                    break
            else:
                (self._reused if old.id in self._moved else self._moved)[old.id] = new

    def _writer(self) -> AnsweringConnection:
        """The writing connection of this process, opened (and the schema readied) on first use."""
        conn = self._writer_conn
        if conn is not None and self._writer_pid != os.getpid():
            # A forked child must not talk on its parent's socket (nor close
            # it, which would end the parent's session): keep it, open ours.
            self._abandoned.append(conn)
            conn = None
        if conn is None:
            conn = self._writer_conn = self.db.connect("append to the audit trail in")
            self._writer_pid = os.getpid()
            # psycopg's own prepared statements stay off on this connection:
            # after a rollback it would deallocate every statement, the
            # append's prepared CALL among them
            conn.prepare_threshold = None
            try:
                self._prepare(conn)
                if self._sql_call:
                    self._prepare_call(conn)
                if _not_read_committed(conn):
                    # An append reads the head after the chain's lock, in a
                    # statement of its own: under REPEATABLE READ its snapshot
                    # predates the lock, the head is stale and the append fails.
                    conn.execute("SET default_transaction_isolation = 'read committed'")
                row = conn.execute(_BACKEND).fetchone()
                # The session is this connection's alone only if it is the
                # one the server named at connect (the pid of its cancel
                # key). A pooler names one of its own, and runs each
                # transaction on whichever server session is free: the one
                # that answered here may serve another client later, and
                # settling must never end it (see _settle).
                owned = row is not None and int(row[0]) == conn.info.backend_pid
                self._writer_backend = (int(row[0]), row[1]) if owned and row else None
            except psycopg.Error as exc:
                self._drop_writer_conn()
                raise self.db.error("append to the audit trail in", exc) from exc
            except BaseException:
                self._drop_writer_conn()
                raise
        return conn

    def _prepare_call(self, conn: Connection) -> None:
        """Prepare the two appends on ``conn`` (once per connection; again if deallocated)."""
        self._encoding = conn.info.encoding  # the parameters' (UTF8 unless the DSN says)
        # A prepared CALL is a utility statement: with parameters, the plan
        # cache's default mode builds it a new plan at every execution
        # (copying its parse tree, 29 arguments), about 30k instructions of
        # the server per durable append; a generic plan is built once. The
        # other statements of this connection (the appends' SELECTs, the rare
        # settling queries by id or session) get the same plans either way.
        conn.execute(_GENERIC_PLANS)
        pgconn = conn.pgconn
        for name, statement in (
            (_PREPARED_DURABLE, self._sql_call),
            (_PREPARED_QUICK, self._sql_quick),
            (_PREPARED_ONE_DURABLE, self._sql_one_call),
            (_PREPARED_ONE_QUICK, self._sql_one_quick),
            (_PREPARED_FLOW_DURABLE, self._sql_flow_call),
            (_PREPARED_FLOW_QUICK, self._sql_flow_quick),
        ):
            if not statement:
                continue
            with conn.lock:
                pgconn.send_prepare(name, statement)
                results = conn.wait(execute(pgconn))
            for result in results:
                if result.status != ExecStatus.COMMAND_OK:
                    error = error_from_result(result, encoding=self._encoding)
                    if error.sqlstate != "42P05":  # still there: only the other was dropped
                        raise error

    def _call(
        self,
        conn: AnsweringConnection,
        drafts: list[RecordDraft],
        pieces: list[tuple[str, str]],
        durable: bool,
        event: Sequence[str] = (),
    ) -> list[AuditRecord]:
        """One round trip, one statement: append (linked by the server), and flush if ``durable``.

        The prepared statement goes to libpq directly, parameters already in
        the text format: psycopg's adaptation of every argument cost more
        client CPU than the round trip. A durable append is a CALL of the
        procedure (append, commit, flush); any other a SELECT of the
        function. The wait is the connection's, bounded by
        ``response_timeout`` like every other. ``event``: the five fields of
        a flow event (as text) to insert with the one record of ``drafts``
        (see :meth:`append_guarded`).
        """
        encoding = self._encoding
        one = len(drafts) == 1 and bool(self._sql_one_call)
        if event:
            parameters = _one_parameters(drafts[0], pieces[0], encoding)
            parameters.extend(_encoded(event, encoding))
            name = _PREPARED_FLOW_DURABLE if durable else _PREPARED_FLOW_QUICK
            one = True
        elif one:
            parameters = _one_parameters(drafts[0], pieces[0], encoding)
            name = _PREPARED_ONE_DURABLE if durable else _PREPARED_ONE_QUICK
        else:
            parameters = _call_parameters(drafts, pieces, encoding)
            name = _PREPARED_DURABLE if durable else _PREPARED_QUICK
        pgconn = conn.pgconn
        for attempt in (1, 2):
            with conn.lock:
                pgconn.send_query_prepared(name, parameters)
                results = conn.answer(execute(pgconn))
            result = results[-1]
            if result.status == ExecStatus.TUPLES_OK:
                break
            error = error_from_result(result, encoding=encoding)
            if attempt == 1 and error.sqlstate == "26000":
                # the statement was deallocated (DISCARD ALL, a pooler): nothing
                # ran, so prepare it again and send the append once more
                self._prepare_call(conn)
                continue
            raise error
        # a CALL answers one row (first id, its predecessor, last hash); the
        # SELECT of a batch one row per record (id, predecessor, hash); the
        # SELECT of one record one row holding those three as a composite
        rows = result.ntuples
        if rows != (1 if durable or one else len(drafts)):
            raise StoreError(
                f"the audit trail in {self.url} returned {rows} rows for an append of "
                f"{len(drafts)}; its {APPEND_FUNCTION} functions or {APPEND_PROCEDURE} "
                "procedures were changed, restore them"
            )
        if one and not durable:
            first_id, first_prev, last_hash = _composite(result.get_value(0, 0))
        else:
            first_id, first_prev, last_hash = (
                result.get_value(0, 0),
                result.get_value(0, 1),
                result.get_value(rows - 1, 2),
            )
        if first_id is None or first_prev is None or last_hash is None:
            raise StoreError(
                f"the audit trail in {self.url} returned no record for an append of "
                f"{len(drafts)}; its {APPEND_PROCEDURE} procedure was changed, restore it"
            )
        record_id, prev = int(first_id), first_prev.decode()
        records = []
        for draft, pair in zip(drafts, pieces, strict=True):
            record = seal_pieces(draft, pair, record_id, prev)
            records.append(record)
            record_id, prev = record_id + 1, record.hash
        if prev != last_hash.decode():
            raise StoreError(
                f"the audit trail in {self.url} hashed records {int(first_id)}-{record_id - 1} "
                "otherwise than Aegis does, so the chain no longer verifies; the database "
                f"must use the UTF8 encoding and its {APPEND_FUNCTION} function must be "
                "Aegis' own"
            )
        self.commits += 1
        return records

    def _append_once(
        self,
        conn: Connection,
        drafts: list[RecordDraft],
        arguments: tuple[list[Any], list[str], list[str]],
        durable: bool,
    ) -> list[AuditRecord]:
        """One round trip: append (linked by the server), and when ``durable`` commit and flush.

        The three statements of a durable append go in one pipeline: the
        explicit ``COMMIT`` ends the append's transaction (and releases the
        chain's lock) before the flush's own transaction begins.
        """
        if durable:
            with conn.pipeline():
                cursor = conn.execute(self._sql_append, arguments)
                conn.execute("COMMIT")
                conn.execute(_FLUSH)
        else:
            cursor = conn.execute(self._sql_append, arguments)
        records = self._sealed(drafts, cursor.fetchall())
        self.commits += 1
        return records

    def _sealed(self, drafts: list[RecordDraft], rows: list[tuple[Any, ...]]) -> list[AuditRecord]:
        """The records as the server linked them; refuse a server that hashed one otherwise."""
        if len(rows) != len(drafts):
            raise StoreError(
                f"the audit trail in {self.url} returned {len(rows)} records for an append of "
                f"{len(drafts)}; its {APPEND_FUNCTION} function was changed, restore it"
            )
        records = []
        for draft, (record_id, prev, digest) in zip(drafts, rows, strict=True):
            record = seal(draft, int(record_id), str(prev))
            if record.hash != digest:
                raise StoreError(
                    f"the audit trail in {self.url} hashed record {record_id} otherwise than "
                    "Aegis does, so the chain no longer verifies; the database must use the "
                    f"UTF8 encoding and its {APPEND_FUNCTION} function must be Aegis' own"
                )
            records.append(record)
        return records

    def _settle_failed(
        self,
        conn: Connection,
        stored: list[RecordDraft],
        pieces: list[tuple[str, str]],
        durable: bool,
        exc: psycopg.Error,
        *,
        retry: bool,
    ) -> list[AuditRecord]:
        """:meth:`_settle` an append that failed on ``conn``, dropping it if it was lost.

        ``retry``: append again when the connection was lost and nothing
        landed (else the caller writes the records another way).
        """
        lost = conn.broken or conn.closed
        backend = self._writer_backend
        if lost:
            self._drop_writer_conn()
        return self._settle(
            stored,
            _arguments(stored, pieces),
            durable,
            exc,
            again=retry and lost,
            lost=lost,
            backend=backend,
        )

    def _settle(
        self,
        drafts: list[RecordDraft],
        arguments: tuple[list[Any], list[str], list[str]],
        durable: bool,
        failure: psycopg.Error,
        *,
        again: bool,
        lost: bool = False,
        backend: tuple[int, Any] | None = None,
    ) -> list[AuditRecord]:
        """Find out whether a failed append committed; append it ``again`` if not and if lost.

        Only this writer appends to its sessions: the append committed if its
        last record is among its session's newest. When the connection was
        ``lost``, that answer holds only once the append can no longer run: a
        client that gave up waiting (its response timeout) left the server's
        session of the lost connection (``backend``) behind, and the append
        may yet reach it, late, or wait there for the chain's lock. Under the
        lock, that session is ended first; once it is gone, what it did not
        commit never will be, and the records are appended again only if they
        are not there. A lost connection whose session is not known to be its
        own (``backend`` None: a pooler in between, which may have run the
        append on any of its server sessions, or hold it still) cannot be
        stopped: records not there are reported as of unknown outcome
        (:class:`~aegis.errors.AuditOutcomeUnknown`), never appended again.
        """
        doing = "append to the audit trail in"
        try:
            conn = self._writer()
            with conn.transaction():
                conn.execute(self._sql_lock)
                if lost and backend is not None:
                    self._end_backend(conn, backend)
                landed = self._landed(conn, drafts)
                if landed is None and lost and backend is None:
                    raise AuditOutcomeUnknown(
                        f"an append to the audit trail in {self.url} lost its connection, and "
                        "its records are not in the trail yet; the server's session that ran "
                        "it is not known (a connection pooler between Aegis and the server "
                        "hands each transaction to any of its sessions), so it cannot be "
                        "stopped and they may still be written: they were not written again. "
                        "The append counts as failed; verify the trail. Connect the audit "
                        "store to the server directly to have such appends settled"
                    ) from failure
                moves: list[tuple[AuditRecord, AuditRecord]] = []
                if landed is None and again:
                    if self._unflushed:
                        moves = self._record_lost_starts(conn)
                        drafts = self._moved_on(drafts, moves)
                        arguments = _arguments(drafts)
                    cursor = conn.execute(self._sql_append, arguments)
                    landed = self._sealed(drafts, cursor.fetchall())
                    self.commits += 1
            self._starts_moved(moves)
            self._suspect = False
            if landed is None:
                raise self.db.error(doing, failure) from failure
            if durable:
                conn.execute(_FLUSH)
            return landed
        except psycopg.Error as exc:
            if self._writer_conn is not None and self._writer_conn.broken:
                self._drop_writer_conn()
            raise self.db.error(doing, exc) from exc

    def _end_backend(self, conn: Connection, backend: tuple[int, Any]) -> None:
        """End the server session of a lost writing connection; wait until it is gone.

        A session of the same role may be ended by it (``pg_terminate_backend``);
        one that is already gone (a restarted server, a cut connection the
        server noticed) is not found. One that does not end in time leaves the
        append's outcome unknown: the caller must not append it again.
        """
        if conn.execute(_END_BACKEND, backend).fetchone() is None:
            return
        # as long as any answer of the server is waited for, at most 10 s
        answer = self.db.response_timeout
        seconds = _END_BACKEND_SECONDS if answer is None else min(answer, _END_BACKEND_SECONDS)
        deadline = time.monotonic() + seconds
        while True:
            conn.execute(_BACKEND_LEFT)
            if conn.execute(_BACKEND_THERE, backend).fetchone() is None:
                return
            if time.monotonic() > deadline:
                raise AuditOutcomeUnknown(
                    f"an append to the audit trail in {self.url} got no answer in time, and the "
                    f"server's session that received it (pid {backend[0]}) did not end within "
                    f"{seconds:g}s of being told to; it may still write the records, so they "
                    "were not written again. The append counts as failed; verify the trail"
                )
            time.sleep(0.01)

    def _landed(self, conn: Connection, drafts: list[RecordDraft]) -> list[AuditRecord] | None:
        """The records of an append of ``drafts`` if it committed, else ``None``."""
        last = tuple(drafts[-1])
        newest = conn.execute(self._sql_last, (drafts[-1].session_id,)).fetchall()
        for row in newest:
            if tuple(row[1:-2]) == last:
                end = int(row[0])
                rows = conn.execute(
                    sql.SQL("SELECT {} FROM {} WHERE id > %s AND id <= %s ORDER BY id").format(
                        _COLUMNS, self._t
                    ),
                    (end - len(drafts), end),
                ).fetchall()
                found = [AuditRecord(*r) for r in rows]
                if [tuple(r[1:-2]) for r in found] != [tuple(d) for d in drafts]:
                    raise StoreError(
                        f"an append to the audit trail in {self.url} was interrupted and only "
                        f"part of it is found (records up to {end}); verify the trail"
                    )
                return found
        return None

    def _drop_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        # a lost connection may mean a crashed server: check unflushed starts first
        self._suspect = True
        if conn is not None and self._writer_pid == os.getpid():
            with suppress(psycopg.Error):  # closing a broken connection may complain
                conn.close()

    # -- reading ---------------------------------------------------------------

    @contextmanager
    def _reading(self, doing: str = "read the audit trail in") -> Iterator[Connection]:
        if self._closed:
            raise StoreError(f"the audit store at {self.url} is closed; open a new one")
        with self.db.connection(doing) as conn:
            self._prepare(conn)
            yield conn

    def _where(self, filters: Filters, after_id: int | None) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = [
            sql.SQL("{} {} %s").format(sql.Identifier(name), sql.SQL(op))
            for name, op, _ in filters.items
        ]
        args: list[Any] = [value for _, _, value in filters.items]
        if after_id is not None:
            clauses.append(sql.SQL("id > %s"))
            args.append(after_id)
        if filters.view == "actions":
            clauses.append(sql.SQL("NOT ({})").format(_FINISHED.format(self._t, self._t)))
        if not clauses:
            return sql.SQL(""), args
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), args

    def records(
        self,
        filters: Filters = NO_FILTERS,
        *,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        """Yield the matching records in id order, a page per query, in constant memory.

        Each page is its own short query, so a slow reader (a pager) holds
        no transaction open on the server.
        """
        if limit is not None and limit <= 0:
            return
        left = limit
        while True:
            size = _PAGE if left is None else min(_PAGE, left)
            with self._reading() as conn:
                where, args = self._where(filters, after_id)
                query = sql.SQL("SELECT {} FROM {}{} ORDER BY id LIMIT %s").format(
                    _COLUMNS, self._t, where
                )
                rows = conn.execute(query, (*args, size)).fetchall()
            for row in rows:
                yield AuditRecord(*row)
            if len(rows) < size:
                return
            after_id = rows[-1][0]
            if left is not None:
                left -= len(rows)
                if left <= 0:
                    return

    def count(self, filters: Filters = NO_FILTERS) -> int:
        """How many records match ``filters``, counted by the server."""
        with self._reading() as conn:
            where, args = self._where(filters, None)
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}{}").format(self._t, where), args
            ).fetchone()
        return 0 if row is None else int(row[0])

    def stats(self, filters: Filters = NO_FILTERS) -> dict[str, dict[str, int]]:
        """Counts by status, risk, rule and action type; unfinished actions as ``"started"``."""
        out: dict[str, dict[str, int]] = {}
        with self._reading() as conn:
            where, args = self._where(filters, None)
            for name in STATS_FIELDS:
                column: sql.Composable = sql.Identifier(name)
                if name == "result_status":
                    column = sql.SQL(
                        "CASE WHEN kind = 'start' THEN {} ELSE result_status END"
                    ).format(sql.Literal(STARTED))
                query = sql.SQL("SELECT {}, count(*) FROM {}{} GROUP BY 1").format(
                    column, self._t, where
                )
                rows = conn.execute(query, args).fetchall()
                counts = {("none" if key is None else str(key)): int(n) for key, n in rows}
                out[name] = dict(sorted(counts.items()))
        return out

    def unfinished(self, filters: Filters = NO_FILTERS) -> list[AuditRecord]:
        """The start records that have no final record, oldest first."""
        with self._reading() as conn:
            where, args = self._where(replace(filters, view="actions"), None)
            query = sql.SQL("SELECT {} FROM {}{} AND kind = 'start' ORDER BY id").format(
                _COLUMNS, self._t, where
            )
            return [AuditRecord(*row) for row in conn.execute(query, args).fetchall()]

    def head(self) -> Head:
        """The head of the chain, read from its last record."""
        with self._reading() as conn:
            row = conn.execute(
                sql.SQL("SELECT id, hash FROM {} ORDER BY id DESC LIMIT 1").format(self._t)
            ).fetchone()
        return EMPTY_HEAD if row is None else Head(int(row[0]), str(row[1]))

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint``; one already kept for its count stays (two writers may sign)."""
        if self.readonly:
            raise StoreError(f"the audit store at {self.url} was opened read-only")
        with self._reading("write a checkpoint to") as conn:
            if self._checkpoints is None:  # pragma: no cover - a writer migrated to the newest
                raise StoreError(f"the audit trail in {self.url} keeps no checkpoints")
            conn.execute(
                sql.SQL(
                    f"INSERT INTO {{}} ({CHECKPOINT_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (count) DO NOTHING"
                ).format(self._checkpoints),
                checkpoint.row(),
            )

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, by count (none in a trail older than checkpoints)."""
        with self._reading() as conn:
            if self._checkpoints is None:
                return []
            rows = conn.execute(
                sql.SQL(f"SELECT {CHECKPOINT_COLUMNS} FROM {{}} ORDER BY count").format(
                    self._checkpoints
                )
            ).fetchall()
        return [Checkpoint.from_row(row) for row in rows]

    def _stream(self) -> Iterator[AuditRecord]:
        """Every record in id order through a server-side cursor, in one snapshot."""
        with self._reading() as conn, conn.transaction():
            # One snapshot for the whole walk: appends made meanwhile are not
            # half-seen. The walk may pause while its consumer works.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            with conn.cursor(name="aegis_verify") as cursor:
                cursor.itersize = _PAGE
                cursor.execute(sql.SQL("SELECT {} FROM {} ORDER BY id").format(_COLUMNS, self._t))
                for row in cursor:
                    yield AuditRecord(*row)

    def verify(
        self,
        expected_head: Head | str | None = None,
        *,
        check_signature: SignatureCheck | None = None,
    ) -> VerifyReport:
        """Check the whole chain with :func:`~aegis.core.chain.verify_chain`, streaming."""
        if expected_head is not None:
            Head.parse(expected_head)  # a bad head is the caller's error, before any I/O
        # Signed checkpoints are checked once this store keeps them (CheckpointStore).
        kept = getattr(self, "checkpoints", None)
        try:
            return verify_chain(
                self._stream(),
                expected_head,
                checkpoints=kept() if check_signature is not None and kept else (),
                check_signature=check_signature,
            )
        except psycopg.Error as exc:
            raise self.db.error("verify the audit trail in", exc) from exc

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close the connections; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._drop_writer_conn()
        self.db.close()
