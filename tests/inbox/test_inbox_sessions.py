"""Inbox sessions live on the server: sign-out ends them, and nobody can mint one from the store."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
from itsdangerous import URLSafeTimedSerializer
from serve_support import Server, create_token

KEY = "a-session-key-that-is-long-enough-for-tests"


def csrf_of(html: str) -> str:
    """The value of the first hidden csrf input of a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no csrf field on the page"
    return found.group(1)


def sign_in(client: httpx.Client, token: str) -> str:
    """Sign in through the form; return the session's CSRF token."""
    nonce = csrf_of(client.get("/signin").text)
    done = client.post("/signin", data={"token": token, "csrf": nonce})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/"
    return csrf_of(client.get("/").text)


def test_sign_out_ends_the_session_for_a_copied_cookie_too(tmp_path: Path) -> None:
    """After sign-out, a copy of the session cookie taken before is refused by the server."""
    db = tmp_path / "aegis.db"
    token = create_token(db, "alice", "reviewer")
    with Server(db) as server, httpx.Client(base_url=server.url) as browser:
        csrf = sign_in(browser, token)
        copied = browser.cookies.get("aegis_session")
        assert copied
        with httpx.Client(base_url=server.url, cookies={"aegis_session": copied}) as thief:
            assert thief.get("/").status_code == 200  # the copy works while the session lives
            out = browser.post("/signout", data={"csrf": csrf})
            assert out.status_code == 303
            page = thief.get("/")
            assert page.status_code == 303
            assert page.headers["location"].startswith("/signin")


def test_a_session_cannot_be_made_from_the_token_hash_and_the_key(tmp_path: Path) -> None:
    """Knowing the session key and a token's hash (from the store) does not make a session."""
    db = tmp_path / "aegis.db"
    create_token(db, "alice", "reviewer")
    with sqlite3.connect(db) as conn:
        (token_hash,) = conn.execute("SELECT token_hash FROM aegis_tokens").fetchone()
    with Server(db, env={"AEGIS_SESSION_KEY": KEY}) as server:
        forged = {}
        for salt in ("aegis.inbox.session", "aegis.inbox.session.v2"):
            signer = URLSafeTimedSerializer(KEY, salt=salt)
            forged[salt] = [signer.dumps({"h": token_hash, "c": "x"}), signer.dumps(token_hash)]
        for cookies in forged.values():
            for cookie in cookies:
                with httpx.Client(base_url=server.url, cookies={"aegis_session": cookie}) as c:
                    page = c.get("/")
                    assert page.status_code == 303, "a forged cookie opened the inbox"
                    assert page.headers["location"].startswith("/signin")
