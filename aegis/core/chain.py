"""The hash chain over audit records, and its verification. Pure.

Each record stores the hash of the record before it (``prev_hash``) and its
own ``hash``, a SHA-256 over every other field. Editing, deleting, inserting
or reordering records therefore breaks the chain, and :func:`verify_chain`
names the first record that does not fit. Every store seals records with
:func:`seal` and verifies them with :func:`verify_chain`, streaming, in
id order, so the rules below are written once.

What the hash covers (:func:`record_hash`): the SHA-256 of one compact JSON
array holding, in order, the values of :data:`HASHED_SCALARS`, then the
length in code points of the canonical ``action_params`` text, that text,
the canonical ``result_data`` text, and last an object of the
:data:`EXTENSION_FIELDS` that are not null (left out when all are, which
keeps records of the first schema verifying). The length pins where the
params end, so no text can move between the two JSON values unnoticed.

A :class:`Head` (``"<count>:<hash>"``) names the last record of a chain.
Kept somewhere else, it also catches records cut off the end and a chain
rewritten consistently since; without one (or a signed checkpoint), a
truncated tail is the one change a chain alone cannot reveal.

Beyond the hashes, :func:`verify_chain` checks what the records claim of
each other: a final record's ``start_id`` must name an earlier start record
of the same action that no other final record finished. Start records left
without a final record are reported in :attr:`VerifyReport.unfinished`:
actions that were interrupted, or are still running.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aegis.core.checkpoint import Checkpoint
from aegis.core.record import AuditRecord, RecordDraft, RecordKind, safe_repr
from aegis.errors import ConfigurationError

__all__ = [
    "EMPTY_HEAD",
    "EXTENSION_FIELDS",
    "GENESIS_HASH",
    "HASHED_SCALARS",
    "Head",
    "VerifyReport",
    "hash_pieces",
    "record_hash",
    "row_hash",
    "seal",
    "seal_pieces",
    "verify_chain",
]

#: ``prev_hash`` of the first record of a chain
GENESIS_HASH: Final = "0" * 64

#: the scalar fields at the start of the hashed array, in order
HASHED_SCALARS: Final[tuple[str, ...]] = (
    "id",
    "session_id",
    "timestamp",
    "action_type",
    "action_target",
    "action_desc",
    "risk_level",
    "approval",
    "matched_rule",
    "reason",
    "human_decision",
    "result_status",
    "result_error",
    "started_at",
    "completed_at",
    "prev_hash",
)

#: fields added after the first schema: hashed as one trailing object of the
#: non-null ones, keys sorted
EXTENSION_FIELDS: Final[tuple[str, ...]] = (
    "context",
    "decided_at",
    "kind",
    "policy_digest",
    "start_id",
)


def _foreign(value: object) -> list[str]:
    # A value of a type no store writes (a hand-edited BLOB) is hashed as a
    # list of its repr: never as a string, which the text of that repr is.
    return [safe_repr(value)]


_encode: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_foreign
).encode

# The C encoder behind _encode, built once: for a flat list of scalars (no
# container, so no cycle to detect) it gives the same text without the
# per-call setup of JSONEncoder.encode. None where CPython has no C speedups.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_scalars = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _foreign, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
)


def _encode_scalars(values: list[Any]) -> str:
    if _c_scalars is None:
        return _encode(values)
    return "".join(_c_scalars(values, 0))


_KINDS: Final = (None, RecordKind.START.value, RecordKind.FINAL.value)
_KIND_TEXT: Final = {kind.value: f'"{kind.value}"' for kind in RecordKind}
_new_tuple: Final = tuple.__new__


@dataclass(frozen=True, slots=True)
class Head:
    """The last record of a chain: how many records it has and the last hash.

    ``str(head)`` is ``"<count>:<hash>"``, the form to keep elsewhere and to
    pass back as ``expected_head``; :meth:`parse` reads it.
    """

    count: int
    hash: str

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"

    @classmethod
    def parse(cls, text: Head | str) -> Head:
        """Read a head from its text form.

        Raises:
            ConfigurationError: ``text`` is no head; the message names the mistake.
        """
        if isinstance(text, Head):
            return text
        if not isinstance(text, str):
            raise ConfigurationError(f"a head is a string like '42:<64 hex digits>', not {text!r}")
        count, sep, digest = text.strip().partition(":")
        if (
            not sep
            or not count.isascii()
            or not count.isdigit()
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise ConfigurationError(
                f"expected_head={text!r} is not a head of an audit log; "
                "pass the head verify or head() printed, like '42:<64 hex digits>'"
            )
        return cls(int(count), digest)


#: the head of an empty chain
EMPTY_HEAD: Final = Head(0, GENESIS_HASH)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of verifying a chain.

    ``checked`` counts the records that fit; ``first_bad_id`` is the id of
    the first record that is missing or does not fit (``None`` when ``ok``);
    ``head`` is the head as read, to keep for the next check; ``unfinished``
    lists the ids of start records without a final record; ``checkpoints``
    counts the signed checkpoints whose signature and head were checked.

    When signatures were checked, ``unsigned`` counts the records after the
    last signed checkpoint, which no signature covers yet (written since the
    last checkpoint, or without the key), and ``bad_signature`` says that the
    check failed on the signatures rather than on the chain: a checkpoint
    not signed by the given key, or no checkpoint of that key at all.
    """

    ok: bool
    checked: int
    first_bad_id: int | None
    reason: str
    head: Head
    unfinished: tuple[int, ...] = field(default=())
    checkpoints: int = 0
    unsigned: int = 0
    bad_signature: bool = False

    def __bool__(self) -> bool:
        return self.ok


def _json_text(value: object) -> str:
    # A stored JSON field is canonical text already; anything else (a hand
    # edit) is hashed as its type and repr, which is no JSON: no text stored
    # as JSON (a result that is the string "b'x'") hashes the same.
    return value if isinstance(value, str) else f"<{type(value).__name__}>{safe_repr(value)}"


# the bytes JSON writes as they are between quotes: printable ASCII but " and \\
_VERBATIM: Final = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _plain(value: object) -> str:
    # JSON of a value: printable ASCII text without quote or backslash is
    # written as it is (what the encoder would write), the rest encoded.
    if type(value) is str and value.isascii() and value.isprintable():
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
    elif type(value) is int:
        return str(value)
    return _encode(value)


def _extension(
    context: object, decided_at: object, kind: object, digest: object, start_id: object
) -> str:
    if (
        (context is None or type(context) is str)
        and type(decided_at) is str
        and type(digest) is str
        and type(kind) is str
        and kind in _KIND_TEXT
        and (both := decided_at + digest).isascii()
        # JSON writes both as they are: every byte is one of _VERBATIM. Speed
        # (benchmarks/calls.py --instructions, every kind): deleting those
        # bytes costs less than str.isprintable's look-up of each character.
        and not both.encode().translate(None, _VERBATIM)
    ):
        # What the runtime writes: a time, a hex digest, a kind, maybe an
        # id; every character one the encoder writes as it is. A context is
        # stored as JSON text already, written as it is (see _json_text).
        head = (
            f',{{"decided_at":"{decided_at}","kind":{_KIND_TEXT[kind]},"policy_digest":"{digest}"'
            if context is None
            else f',{{"context":{context},"decided_at":"{decided_at}","kind":{_KIND_TEXT[kind]},'
            f'"policy_digest":"{digest}"'
        )
        if start_id is None:
            return head + "}"
        if type(start_id) is int:
            return f'{head},"start_id":{start_id}}}'
    parts = []
    if context is not None:
        parts.append(f'"context":{_json_text(context)}')
    if decided_at is not None:
        parts.append(f'"decided_at":{_plain(decided_at)}')
    if kind is not None:
        parts.append(f'"kind":{_plain(kind)}')
    if digest is not None:
        parts.append(f'"policy_digest":{_plain(digest)}')
    if start_id is not None:
        parts.append(f'"start_id":{_plain(start_id)}')
    return f",{{{','.join(parts)}}}" if parts else ""


def _verbatim_row(record: Sequence[Any]) -> str | None:
    """:func:`row_hash`'s text when every text field is one JSON writes as it is; else ``None``.

    Speed (benchmarks/calls.py --instructions, every kind: two seals per
    action): what the runtime writes (printable ASCII without quote or
    backslash, a stamp, no context) is joined around its quotes directly;
    the JSON encoder spends about 1,000 instructions per field of the list.
    """
    record_id, kind, start_id = record[0], record[1], record[21]
    human, status, error, started, completed = (
        record[12], record[13], record[15], record[16], record[17]
    )  # fmt: skip
    params, data, decided_at, digest = record[6], record[14], record[19], record[20]
    if (
        type(record_id) is not int
        or type(params) is not str
        or type(data) is not str
        or record[18] is not None  # a context: the general path
        or type(decided_at) is not str
        or type(digest) is not str
        or type(kind) is not str
        or kind not in _KIND_TEXT
        or (start_id is not None and type(start_id) is not int)
    ):
        return None
    try:
        # join takes str only: any other type (a hand edit) raises TypeError
        texts = "".join(
            (
                record[2], record[3], record[4], record[5], record[7], record[8], record[9],
                record[10], record[11], record[22], decided_at, digest,
                "" if human is None else human, "" if status is None else status,
                "" if error is None else error, "" if started is None else started,
                "" if completed is None else completed,
            )
        )  # fmt: skip
        if texts.encode().translate(None, _VERBATIM):  # not ASCII, or a byte JSON escapes
            return None
    except (TypeError, UnicodeEncodeError):
        return None
    h = "null" if human is None else f'"{human}"'
    s = "null" if status is None else f'"{status}"'
    e = "null" if error is None else f'"{error}"'
    b = "null" if started is None else f'"{started}"'
    c = "null" if completed is None else f'"{completed}"'
    end = "}]" if start_id is None else f',"start_id":{start_id}}}]'
    return (
        f'[{record_id},"{record[2]}","{record[3]}","{record[4]}","{record[5]}","{record[7]}",'
        f'"{record[8]}","{record[9]}","{record[10]}","{record[11]}",{h},{s},{e},{b},{c},'
        f'"{record[22]}",{len(params)},{params},{data},{{"decided_at":"{decided_at}",'
        f'"kind":{_KIND_TEXT[kind]},"policy_digest":"{digest}"{end}'
    )


def row_hash(record: Sequence[Any]) -> str:
    """The hash of a record given as a row (fields in RECORD_FIELDS order, up to prev_hash).

    The JSON fields are canonical text and nest verbatim, so this gives the
    bytes of :func:`record_hash` without decoding them (a property test
    holds the two equal). It runs for every write and every verified record.
    """
    text = _verbatim_row(record)
    if text is not None:
        return hashlib.sha256(text.encode()).hexdigest()
    try:
        values = [
            record[0], record[2], record[3], record[4], record[5], record[7], record[8],
            record[9], record[10], record[11], record[12], record[13], record[15],
            record[16], record[17], record[22],
        ]  # fmt: skip
        # Speed (benchmarks/calls.py: two seals per action, and verify): the
        # encoder and the JSON fields' text without a call each when they are
        # what every store writes (text); _encode_scalars and _json_text else.
        scalars = _encode_scalars(values) if _c_scalars is None else "".join(_c_scalars(values, 0))
        params = record[6]
        if type(params) is not str:
            params = _json_text(params)
        data = record[14]
        if type(data) is not str:
            data = _json_text(data)
        extension = _extension(record[18], record[19], record[1], record[20], record[21])
        text = f"{scalars[:-1]},{len(params)},{params},{data}{extension}]"
    except ValueError:  # a hand-written NaN in a scalar field: it cannot match
        text = safe_repr(tuple(record))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def hash_pieces(draft: RecordDraft) -> tuple[str, str]:
    """The text a record's hash covers, less its id and ``prev_hash``: ``(middle, tail)``.

    For a store that links records where the chain's head is (a database
    function under the chain's lock): the hash of ``draft`` sealed as record
    ``n`` after ``prev`` (hex, as every hash is) is the SHA-256 of the UTF-8 of
    ``f'[{n},{middle},"{prev}"{tail}'``, which is :func:`row_hash`'s text.

    Raises:
        ValueError: a field holds what JSON cannot (a NaN); seal it instead.
    """
    text = _encode_scalars(
        [
            0, draft[1], draft[2], draft[3], draft[4], draft[6], draft[7], draft[8],
            draft[9], draft[10], draft[11], draft[12], draft[14], draft[15], draft[16], "",
        ]
    )  # fmt: skip
    params = _json_text(draft[5])
    extension = _extension(draft[17], draft[18], draft[0], draft[19], draft[20])
    return text[3:-4], f",{len(params)},{params},{_json_text(draft[13])}{extension}]"


def record_hash(record: Mapping[str, Any]) -> str:
    """The chain hash of a record in its public form (a dict, an exported line).

    A missing field counts as ``null``. Verifying an export::

        rec = json.loads(line)
        assert record_hash(rec) == rec["hash"]
    """
    params = _encode(record.get("action_params"))
    scalars = _encode([record.get(name) for name in HASHED_SCALARS])
    extension = {name: record[name] for name in EXTENSION_FIELDS if record.get(name) is not None}
    tail = f",{_encode(extension)}" if extension else ""
    text = f"{scalars[:-1]},{len(params)},{params},{_encode(record.get('result_data'))}{tail}]"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def seal(draft: RecordDraft, record_id: int, prev_hash: str) -> AuditRecord:
    """Join ``draft`` to a chain as record ``record_id`` after the hash ``prev_hash``."""
    unsealed = (record_id, *draft, prev_hash)
    # tuple.__new__ skips the named tuple's Python-level __new__ (24 arguments)
    return _new_tuple(AuditRecord, (*unsealed, row_hash(unsealed)))


def seal_pieces(
    draft: RecordDraft, pieces: tuple[str, str], record_id: int, prev_hash: str
) -> AuditRecord:
    """:func:`seal` for a draft whose :func:`hash_pieces` are at hand: nothing is encoded twice."""
    middle, tail = pieces
    text = f'[{record_id},{middle},"{prev_hash}"{tail}'
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return _new_tuple(AuditRecord, (record_id, *draft, prev_hash, digest))


#: the types of the stored fields: text, an id, or nothing
_STORED_TYPES: Final = frozenset({str, int, type(None)})


def _modified(record: AuditRecord) -> str:
    """Why ``record`` does not match its hash, naming a field of a type no store writes."""
    reason = f"record {record.id} was modified: its content does not match its hash"
    for name, value in zip(record._fields, record, strict=True):
        if type(value) not in _STORED_TYPES:
            what = "a BLOB" if isinstance(value, bytes) else f"a {type(value).__name__}"
            return f"{reason} ({name} holds {what}, which Aegis never writes)"
    return reason


def _split_json(data: object, context: object) -> str:
    """Why ``data`` or ``context`` is not one whole JSON value (an object), or ``""``.

    The hashed text joins the result, then the context and the other
    extension fields as stored: text moved across a join (a final's kind
    and start id into its result, a start's time into its context) hashes
    the same. Without a context and with a time, ``,{"decided_at":`` follows
    the result, which no other split of the text gives: no look needed.
    """
    if type(data) is str and not _one_json(data, object):
        return "its result_data is not one JSON value (text moved between fields?)"
    if context is not None and not (type(context) is str and _one_json(context, dict)):
        return "its context is not one JSON object (text moved between fields?)"
    return ""


def _one_json(text: str, kind: type) -> bool:
    try:
        return isinstance(json.loads(text), kind)
    except (ValueError, RecursionError):  # deeper than any field Aegis writes
        return False


def verify_chain(
    records: Iterable[AuditRecord],
    expected_head: Head | str | None = None,
    *,
    checkpoints: Iterable[Checkpoint] = (),
    check_signature: Callable[[Checkpoint], bool] | None = None,
) -> VerifyReport:
    """Check ``records`` (every record of a chain, in id order); report the first misfit.

    Streams: memory grows only with the number of unfinished actions.
    Catches edited, deleted, inserted and reordered records, and final
    records that do not match the start they claim. With ``expected_head``
    (an earlier head) it also catches records removed from the end and a
    chain rewritten since that head.

    With ``check_signature`` (see :mod:`aegis.runtime.signing`), every one of
    ``checkpoints`` must carry a valid signature and name a head of this
    chain, which catches a rewrite or a truncation before the last one.
    Without it, checkpoints are not trusted and not read.

    Raises:
        ConfigurationError: ``expected_head`` is not a head.
    """
    expected = None if expected_head is None else Head.parse(expected_head)
    signed: dict[int, Checkpoint] = {}
    if check_signature is not None:
        for checkpoint in sorted(checkpoints, key=lambda c: c.count):
            if not check_signature(checkpoint):
                return VerifyReport(
                    False,
                    0,
                    checkpoint.count or None,
                    f"the checkpoint of record {checkpoint.count} is not signed by the given "
                    f"key (key id {checkpoint.key_id}): checkpoints were forged or the key is "
                    "not the one that signed",
                    EMPTY_HEAD,
                    bad_signature=True,
                )
            signed[checkpoint.count] = checkpoint
    checked = 0
    prev_hash = GENESIS_HASH
    hash_at_expected: str | None = None
    # start id -> what its final record must repeat
    open_starts: dict[int, tuple[object, ...]] = {}

    def fail(bad_id: int | None, reason: str) -> VerifyReport:
        return VerifyReport(False, checked, bad_id, reason, Head(checked, prev_hash))

    for record in records:
        record_id = record.id
        if type(record_id) is not int or record_id != checked + 1:
            missing = checked + 1
            return fail(
                missing,
                f"record {missing} is missing: ids jump from {checked} to {record_id!r} "
                "(records were deleted or renumbered)",
            )
        if record.prev_hash != prev_hash:
            return fail(
                record_id,
                f"record {record_id} does not link to record {checked}: its prev_hash "
                "differs (records were inserted, deleted or reordered)",
            )
        if row_hash(record) != record.hash:
            return fail(record_id, _modified(record))
        context = record.context
        if context is not None or record.decided_at is None:
            split = _split_json(record.result_data, context)
            if split:
                return fail(record_id, f"record {record_id} was modified: {split}")
        kind = record.kind
        if kind not in _KINDS:
            return fail(record_id, f"record {record_id} has an unknown kind {kind!r}")
        claim = (record.session_id, record.action_type, record.action_target, record.action_params)
        if kind == RecordKind.START:
            if record.start_id is not None:
                # Aegis never writes one; appended, it would hide the start
                # it names from every view of actions, as if finished
                return fail(
                    record_id,
                    f"record {record_id} is a start record naming start record "
                    f"{record.start_id!r}: only a final record finishes an action",
                )
            open_starts[record_id] = claim
        elif record.start_id is not None:
            started = open_starts.pop(record.start_id, None)
            if started is None:
                return fail(
                    record_id,
                    f"record {record_id} finishes start record {record.start_id!r}, which is "
                    "not an unfinished start record before it",
                )
            if started != claim:
                return fail(
                    record_id,
                    f"record {record_id} does not match its start record {record.start_id}: "
                    "another action was recorded as finished",
                )
        checked = record_id
        prev_hash = record.hash
        if expected is not None and record_id == expected.count:
            hash_at_expected = prev_hash
        if signed and record_id in signed and signed[record_id].hash != prev_hash:
            return fail(
                record_id,
                f"record {record_id} differs from its signed checkpoint: the log was rewritten",
            )
    head = Head(checked, prev_hash)
    last_signed = max(signed, default=0)
    if last_signed > checked:
        return VerifyReport(
            False,
            checked,
            checked + 1,
            f"the log ends at record {checked} but a signed checkpoint covers record "
            f"{last_signed}: records were removed from the end",
            head,
        )
    if expected is not None:
        if checked < expected.count:
            return VerifyReport(
                False,
                checked,
                checked + 1,
                f"the log ends at record {checked} but the kept head names record "
                f"{expected.count}: records were removed from the end",
                head,
            )
        if (expected.count and hash_at_expected != expected.hash) or (
            not expected.count and expected.hash != GENESIS_HASH
        ):
            return VerifyReport(
                False,
                checked,
                expected.count or None,
                f"record {expected.count} differs from the kept head: the log was rewritten",
                head,
            )
    if check_signature is not None and checked and not signed:
        # Asked to check signatures, a trail that none covers proves nothing:
        # whoever rewrote it without the key would pass.
        return VerifyReport(
            False,
            checked,
            None,
            f"none of the {checked} records is covered by a checkpoint signed with the given "
            "key: the trail was written without it, or rewritten",
            head,
            tuple(open_starts),
            unsigned=checked,
            bad_signature=True,
        )
    unsigned = checked - last_signed if check_signature is not None else 0
    return VerifyReport(
        True, checked, None, "", head, tuple(open_starts), len(signed), unsigned=unsigned
    )
