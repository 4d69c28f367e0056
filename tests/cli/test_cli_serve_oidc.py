"""`aegis serve`'s OpenID options refuse what cannot work, before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import Invoke

ISSUER = ["--oidc-issuer", "https://id.example.com"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([*ISSUER, "--oidc-client-id", "a", "--oidc-client-secret", "s"], "process list"),
        (["--no-token-signin"], "no way to sign in"),
        (ISSUER, "both --oidc-issuer and --oidc-client-id"),
        (["--oidc-issuer", "http://id.example.com", "--oidc-client-id", "a"], "https"),
        (["--oidc-issuer", "https://id.example.com/?x=1", "--oidc-client-id", "a"], "query"),
    ],
)
def test_bad_openid_options_are_usage_errors(
    invoke: Invoke, tmp_path: Path, args: list[str], said: str
) -> None:
    """A secret on argv, token sign-in off without a provider, half or unsafe settings: exit 2."""
    result = invoke("serve", "--db", str(tmp_path / "a.db"), "--port", "0", *args)
    assert result.exit_code == 2, result.output
    assert said in result.stderr
