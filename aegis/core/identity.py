"""Who a reviewer is, as decisions and the audit trail record it.

A person signed in through an OpenID provider is the pair of the
provider's ``issuer`` and the ``subject`` it gives them: both are stable,
and together they name one person wherever and however often they sign in.
The display name rides beside for people to read; it is never compared
(people rename themselves, providers reformat names).

A reviewer token that is not tied to a provider's subject is its own
identity: no issuer, the token's name as subject. Tying a token to a
subject (``aegis token create NAME --role reviewer --oidc-subject SUB``)
makes it that person: its decisions count as theirs.

:attr:`Identity.key` is the one text form stores keep and compare: the
token's name for a token, ``issuer#subject`` for a provider's person (an
issuer is a URL without a fragment, and token names may not hold ``#``,
so the two never meet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["KEY_SEPARATOR", "Identity", "canonical_issuer"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

#: separates issuer and subject in :attr:`Identity.key`
KEY_SEPARATOR: Final = "#"


@dataclass(frozen=True, slots=True)
class Identity:
    """A reviewer's identity: ``issuer`` and ``subject``; ``name`` is for display only.

    Example::

        alice = Identity("https://id.example.com", "248289761001", "Alice Example")
        alice == Identity("https://id.example.com", "248289761001", "A. Example")  # True
        alice.key  # 'https://id.example.com#248289761001'
    """

    issuer: str
    subject: str
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # One person, one identity: however the issuer was spelt where it came from.
        object.__setattr__(self, "issuer", canonical_issuer(self.issuer))

    @classmethod
    def of_token(cls, name: str) -> Identity:
        """The identity of a reviewer token tied to no provider: its name."""
        return cls("", name, name)

    @classmethod
    def from_key(cls, key: str, name: str = "") -> Identity:
        """The identity a stored :attr:`key` names (with ``name`` beside, if known)."""
        issuer, sep, subject = key.partition(KEY_SEPARATOR)
        if not sep:
            return cls("", key, name or key)
        return cls(issuer, subject, name)

    @property
    def key(self) -> str:
        """The stored, compared form: the token's name, or ``issuer#subject``."""
        if not self.issuer:
            return self.subject
        return f"{self.issuer}{KEY_SEPARATOR}{self.subject}"

    @property
    def display(self) -> str:
        """The name to show people (the subject when the provider gave no name)."""
        return self.name or self.subject

    def __str__(self) -> str:
        """``Alice Example <https://id.example.com#248289761001>``; a token's bare name."""
        if not self.issuer:
            return self.subject
        return f"{self.display} <{self.key}>"

    def to_json(self) -> dict[str, Any]:
        """Issuer, subject and name, as the API and the audit trail show them."""
        return {"issuer": self.issuer or None, "subject": self.subject, "name": self.display}


def canonical_issuer(issuer: str) -> str:
    """The one spelling of an issuer URL that identities keep and compare.

    ``http://id.example.com/``, ``HTTPS://ID.example.com:443`` and
    ``https://id.example.com`` name one provider: the scheme and host are
    read in lower case, a default port is dropped and so are trailing
    slashes of the path (so ``https://id.example.com/tenant/`` is
    ``https://id.example.com/tenant``). The path keeps its case. The ID
    token's ``iss`` is still checked against the configured issuer exactly;
    this only keeps one person from counting as two. Text that is not an
    http(s) URL is returned as it is.

    Example::

        canonical_issuer("https://ID.example.com:443/")  # 'https://id.example.com'
    """
    if not issuer:
        return issuer
    try:
        parts = urlsplit(issuer)
        port = parts.port
    except ValueError:
        return issuer
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return issuer
    host = parts.hostname  # lower case, without brackets
    if ":" in host:
        host = f"[{host}]"
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{host}" if user else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, parts.fragment))
