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


@pytest.mark.parametrize(
    "spelling",
    [
        "https://id.example.com",
        "https://id.example.com/",
        "https://id.example.com//",
        "HTTPS://ID.Example.COM",
        "https://id.example.com:443/",
    ],
)
def test_one_issuer_spelt_differently_is_one_person(spelling: str) -> None:
    """Trailing slashes, letter case of scheme and host, a default port: the same identity."""
    person = Identity(spelling, "248289761001", "Alice")
    assert person == Identity("https://id.example.com", "248289761001")
    assert person.key == "https://id.example.com#248289761001"
    assert Identity.from_key(f"{spelling}#248289761001") == person


@pytest.mark.parametrize(
    ("issuer", "other"),
    [
        ("https://id.example.com/tenant", "https://id.example.com/Tenant"),
        ("https://id.example.com", "https://id.example.com:8443"),
        ("https://id.example.com", "http://id.example.com"),
        ("https://id.example.com/a", "https://id.example.com"),
    ],
)
def test_different_issuers_stay_different(issuer: str, other: str) -> None:
    """A path's case, another port, another scheme or another path are other providers."""
    assert Identity(issuer, "1") != Identity(other, "1")


def test_a_token_identity_is_untouched() -> None:
    """A token's identity (no issuer) keeps its name as subject, whatever it looks like."""
    assert Identity.of_token("https://x/").key == "https://x/"
