"""Tokens and ids of the approval tables: random, prefixed, and the hash a store keeps of a token.

Kept apart from :mod:`aegis.stores.approvals` (which opens the engines' stores) so
that the engines' shared SQL can use them without importing its own opener.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "new_grant_id", "new_request_id", "new_token"]

#: prefix of every token Aegis issues, so that leaked ones are easy to find
TOKEN_PREFIX = "aegis_"


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex of ``token``: what the store keeps instead of the token.

    A fast hash is enough here: the token is 256 random bits, not a password.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_request_id() -> str:
    """A fresh approval request id, ``apr_`` and 24 hex digits."""
    return "apr_" + secrets.token_hex(12)


def new_grant_id() -> str:
    """A fresh grant id, ``grt_`` and 24 hex digits."""
    return "grt_" + secrets.token_hex(12)
