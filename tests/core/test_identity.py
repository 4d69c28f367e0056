"""Reviewer identities: what is compared, what is shown, and the stored key."""

from __future__ import annotations

import pytest

from aegis.core.identity import Identity

ISSUER = "https://id.example.com"


def test_name_is_not_compared() -> None:
    """Issuer and subject make the identity; the display name does not."""
    assert Identity(ISSUER, "1", "Alice") == Identity(ISSUER, "1", "A. Example")
    assert Identity(ISSUER, "1") != Identity("https://other.example.com", "1")
    assert Identity(ISSUER, "1") != Identity(ISSUER, "2")


@pytest.mark.parametrize(
    ("identity", "key", "shown"),
    [
        (Identity.of_token("alice"), "alice", "alice"),
        (
            Identity(ISSUER, "248", "Alice Example"),
            f"{ISSUER}#248",
            f"Alice Example <{ISSUER}#248>",
        ),
        (Identity(ISSUER, "248"), f"{ISSUER}#248", f"248 <{ISSUER}#248>"),
    ],
)
def test_key_and_text(identity: Identity, key: str, shown: str) -> None:
    """A token's key is its name; a provider's person is issuer#subject, shown with the name."""
    assert identity.key == key
    assert str(identity) == shown
    assert Identity.from_key(key, identity.name) == identity


def test_subject_may_hold_the_separator() -> None:
    """A subject with '#' in it reads back whole: the issuer never holds one."""
    odd = Identity(ISSUER, "a#b", "Odd")
    assert Identity.from_key(odd.key) == odd
