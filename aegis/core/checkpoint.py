"""Signed checkpoints of the audit chain: heads signed with a key the chain does not have. Pure.

A hash chain alone proves that records fit together, not that the chain is
the one that was written: someone who can write the database can rewrite
it consistently, or cut records off the end. A :class:`Checkpoint` is a head
(count and hash) signed by the runtime's Ed25519 key at intervals and when
the trail closes. Checked with the public key alone, checkpoints pin the
chain: a record changed before a checkpoint, or a chain ending before the
last checkpoint, is reported by :func:`aegis.core.chain.verify_chain`.
Records appended after the last checkpoint are covered by the next one.

What is signed is :meth:`Checkpoint.message`, UTF-8 text that names its own
format::

    aegis-audit-checkpoint/1 <count> <hash> <created_at>

The signature and the key's id (the first 16 hex digits of the SHA-256 of
the raw public key) are stored beside it. Signing and checking need the
``signing`` extra (see :mod:`aegis.runtime.signing`); this module only
describes the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CHECKPOINT_COLUMNS", "CHECKPOINT_FORMAT", "Checkpoint"]

#: the first word of every signed message, with the format's version
CHECKPOINT_FORMAT: Final = "aegis-audit-checkpoint/1"
#: the columns of a stored checkpoint, in :meth:`Checkpoint.row` order
CHECKPOINT_COLUMNS: Final = "count, hash, created_at, key_id, signature"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed head of the chain.

    ``count`` and ``hash`` name the last record covered; ``created_at`` is
    when it was signed (ISO 8601 UTC); ``key_id`` names the public key that
    checks ``signature`` (hex of the Ed25519 signature of :meth:`message`).
    """

    count: int
    hash: str
    created_at: str
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The bytes the signature covers."""
        return f"{CHECKPOINT_FORMAT} {self.count} {self.hash} {self.created_at}".encode()

    def row(self) -> tuple[int, str, str, str, str]:
        """The values of a stored checkpoint, in the column order of :data:`CHECKPOINT_COLUMNS`."""
        return (self.count, self.hash, self.created_at, self.key_id, self.signature)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Checkpoint:
        """The checkpoint of a stored row (:meth:`row`'s order); a hand-edited value is its text."""
        count, digest, created_at, key_id, signature = row
        return cls(int(count), str(digest), str(created_at), str(key_id), str(signature))
