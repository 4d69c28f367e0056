"""Ed25519 keys for signed audit checkpoints (the ``signing`` extra: ``cryptography``).

``aegis audit keygen`` writes a private key (PEM, PKCS#8, readable by its
owner only) and its public key beside it (``.pub``). The runtime signs with
the private key (:class:`Signer`; the path in ``AuditLogger(signing_key=...)``
or ``$AEGIS_AUDIT_KEY``); an auditor checks with the public key alone
(:func:`load_public_key`), so checking never gives the power to sign.

Example::

    private, public = generate_key_files("audit.key")
    logger = AuditLogger("audit.db", signing_key=private)
    ...
    report = AuditLogger("audit.db", readonly=True).verify(public_key=public)
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.core.checkpoint import Checkpoint
from aegis.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "KEY_ENV",
    "Signer",
    "Verifier",
    "generate_key_files",
    "load_public_key",
]

#: the environment variable naming the private key's file
KEY_ENV = "AEGIS_AUDIT_KEY"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  # the extra
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415  # the extra
    except ImportError as exc:
        raise ConfigurationError(
            'signed audit checkpoints need the signing extra: pip install "aegis-runtime[signing]"'
        ) from exc
    return serialization, ed25519


def _raw_public(key: Ed25519PublicKey) -> bytes:
    serialization, _ = _crypto()
    raw: bytes = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def key_id(key: Ed25519PublicKey) -> str:
    """The id of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}; "
            "create one with `aegis audit keygen`"
        ) from exc


def generate_key_files(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new private key to ``path`` (mode 0600) and its public key to ``path.pub``.

    Raises:
        ConfigurationError: a file is in the way (unless ``overwrite``) or
            cannot be written.
    """
    serialization, ed25519 = _crypto()
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for target in (private_path, public_path):
        if target.exists() and not overwrite:
            raise ConfigurationError(
                f"{target} exists; choose another path or remove it first "
                "(a lost key cannot sign again, and its checkpoints stay checkable)"
            )
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(private_path, flags, 0o600)
        os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_TRUNC
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the key to {str(private_path)!r}: {exc.strerror or exc}"
        ) from exc
    return private_path, public_path


def load_public_key(path: str | Path) -> Verifier:
    """The checker of checkpoints signed by the private key of the public key at ``path``.

    A private key file works too (its public half is used).
    """
    serialization, ed25519 = _crypto()
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{str(path)!r} is not a PEM Ed25519 key; "
                "use the .pub file `aegis audit keygen` wrote"
            ) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigurationError(f"{str(path)!r} is not an Ed25519 key")
    return Verifier(key)


class Verifier:
    """Checks checkpoint signatures with a public key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.key_id = key_id(key)

    def __call__(self, checkpoint: Checkpoint) -> bool:
        """Whether ``checkpoint`` was signed by this key's private half."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415  # the extra

        try:
            self.key.verify(bytes.fromhex(checkpoint.signature), checkpoint.message())
        except (InvalidSignature, ValueError):
            return False
        return True


class Signer:
    """Signs heads of the chain with an Ed25519 private key read from a PEM file."""

    def __init__(self, path: str | Path) -> None:
        serialization, ed25519 = _crypto()
        data = _read(path, "signing key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{str(path)!r} is not an unencrypted PEM Ed25519 private key; "
                "create one with `aegis audit keygen`"
            ) from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigurationError(f"{str(path)!r} is not an Ed25519 private key")
        self._key: Ed25519PrivateKey = key
        self.key_id = key_id(key.public_key())

    def sign(self, count: int, digest: str) -> Checkpoint:
        """A checkpoint of the head ``count``/``digest``, signed now."""
        created = datetime.now(UTC).isoformat(timespec="microseconds")
        unsigned = Checkpoint(count, digest, created, self.key_id, "")
        signature = self._key.sign(unsigned.message()).hex()
        return Checkpoint(count, digest, created, self.key_id, signature)
