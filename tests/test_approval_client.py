"""One client of the approval API: the handler, the suspended runs and the CLI share it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "aegis"

#: the three ways to reach the approval API
USERS = ("runtime/approval_remote.py", "adapters/_remote.py", "cli/_approvals.py")


@pytest.mark.parametrize("module", USERS)
def test_each_user_goes_through_approval_client(module: str) -> None:
    """No user of the API builds its own HTTP client or names a private name of another."""
    text = (ROOT / module).read_text()
    assert not re.search(r"httpx\.(Async)?Client\(", text), module
    assert "from aegis.client import" in text or "handler.client" in text, module
    # the adapters once drove seven private names of the handler
    assert not re.search(r"handler\._[a-z]", text), module


def test_the_client_is_the_only_http_client_of_the_api() -> None:
    """aegis/client.py is where the API's HTTP client is built."""
    text = (ROOT / "client.py").read_text()
    assert "httpx.AsyncClient(" in text
