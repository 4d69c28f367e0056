"""`aegis token create --oidc-subject`: a reviewer token tied to a person of the provider."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import Invoke


def test_tied_token_is_listed_with_its_person(invoke: Invoke, tmp_path: Path) -> None:
    """The subject (and issuer, when given) is kept and shown by `token list`."""
    db = str(tmp_path / "aegis.db")
    made = invoke(
        "token", "create", "alice-cli", "--role", "reviewer", "--group", "security",
        "--oidc-subject", "248289761001", "--oidc-issuer", "https://id.example.com", "--db", db,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "decides as OpenID subject '248289761001'" in made.stderr
    (entry,) = json.loads(invoke("token", "list", "--db", db, "--format", "json").stdout)
    assert entry["oidc_subject"] == "248289761001"
    assert entry["oidc_issuer"] == "https://id.example.com"
    table = invoke("token", "list", "--db", db)
    assert "248289761001" in table.stdout


def test_tie_is_refused_where_it_makes_no_sense(invoke: Invoke, tmp_path: Path) -> None:
    """An agent token, a subject or an issuer alone, a non-URL issuer, '#' in a name: exit 2."""
    db = str(tmp_path / "aegis.db")
    assert invoke("token", "create", "keep", "--role", "reviewer", "--db", db).exit_code == 0
    refused = [
        ("bot", "--role", "agent", "--oidc-subject", "x"),
        ("a", "--role", "reviewer", "--oidc-subject", "x"),
        ("a", "--role", "reviewer", "--oidc-issuer", "https://id.example.com"),
        ("a", "--role", "reviewer", "--oidc-subject", "x", "--oidc-issuer", "id.example.com"),
        ("https://id.example.com#x", "--role", "reviewer"),
    ]
    for args in refused:
        result = invoke("token", "create", *args, "--db", db)
        assert result.exit_code == 2, (args, result.output)
    listed = json.loads(invoke("token", "list", "--db", db, "--format", "json").stdout)
    assert [t["name"] for t in listed] == ["keep"]
