"""Other local users can read nothing: owner-only store and key files, no secret on argv."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import httpx
from serve_support import Server, aegis, create_token

from aegis.stores.approvals import open_approval_store


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def test_store_files_are_created_owner_only(tmp_path: Path) -> None:
    """The database `aegis token create` and `aegis serve` create, and its WAL, are 0600."""
    old = os.umask(0o022)  # the usual umask: files would be world-readable by default
    try:
        db = tmp_path / "aegis.db"
        create_token(db, "alice", "reviewer")
        assert mode(db) == 0o600
        served = tmp_path / "served.db"
        with Server(served):  # the service creates its store in its own process
            pass
        assert mode(served) == 0o600
        for side in (tmp_path / "aegis.db-wal", tmp_path / "aegis.db-shm"):
            if side.exists():
                assert mode(side) == 0o600, side
        approvals = tmp_path / "approvals-only.db"
        open_approval_store(str(approvals)).close()
        assert mode(approvals) == 0o600
    finally:
        os.umask(old)


def test_audit_key_files_are_owner_only_even_when_overwritten(tmp_path: Path) -> None:
    """`aegis audit keygen --force` over a world-readable file leaves the private key 0600."""
    key = tmp_path / "audit.key"
    key.write_text("old")
    key.chmod(0o644)
    aegis("audit", "keygen", str(key), "--force")
    assert mode(key) == 0o600


def test_secrets_on_argv_are_refused(tmp_path: Path) -> None:
    """--session-key, --webhook-secret and the tokens on argv are a usage error that says why."""
    db = str(tmp_path / "aegis.db")
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: "1"\n', encoding="utf-8")
    proxy = [
        "mcp-proxy",
        "--policy",
        str(policy),
        "--db",
        db,
        "--approval-url",
        "http://127.0.0.1:9",
    ]
    for args in (
        ["serve", "--db", db, "--session-key", "s3cret"],
        ["serve", "--db", db, "--webhook", "http://127.0.0.1:9/x", "--webhook-secret", "s3cret"],
        ["approvals", "list", "--token", "aegis_s3cret"],
        [*proxy, "--approval-token", "aegis_s3cret", "--", "true"],
    ):
        done = aegis(*args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert "process list" in done.stderr
        assert "-file" in done.stderr


def test_the_session_key_comes_from_a_file(tmp_path: Path) -> None:
    """Two services given one --session-key-file accept each other's sign-ins; no key on argv."""
    db = tmp_path / "aegis.db"
    token = create_token(db, "alice", "reviewer")
    key = tmp_path / "session.key"
    key.write_text("k" * 40 + "\n")
    key.chmod(0o600)
    with (
        Server(db, "--session-key-file", str(key)) as first,
        Server(db, "--session-key-file", str(key)) as second,
        httpx.Client(base_url=first.url) as browser,
    ):
        assert first.process is not None
        cmdline = Path(f"/proc/{first.process.pid}/cmdline").read_bytes()
        assert b"kkkk" not in cmdline
        nonce = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
        assert nonce is not None
        browser.post("/signin", data={"token": token, "csrf": nonce.group(1)})
        cookie = browser.cookies.get("aegis_session")
        assert cookie
        with httpx.Client(base_url=second.url, cookies={"aegis_session": cookie}) as other:
            assert other.get("/").status_code == 200


def test_a_secret_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    """A --token-file readable by other users still works, with a warning to chmod it."""
    key = tmp_path / "token"
    key.write_text("aegis_x\n")
    key.chmod(0o644)
    done = aegis(
        "approvals", "list", "--token-file", str(key), "--url", "http://127.0.0.1:9", check=False
    )
    assert "other local users" in done.stderr
    assert f"chmod 600 {key}" in done.stderr
