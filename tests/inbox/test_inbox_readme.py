"""The README's inbox section as written: its three lines start an inbox, its check works."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from typing import Any

import httpx
from serve_support import Server, aegis

from aegis.server.notify import sign_payload

ROOT = Path(__file__).resolve().parent.parent.parent
SECTION = (
    (ROOT / "README.md")
    .read_text(encoding="utf-8")
    .split("## The approval inbox", 1)[1]
    .split("\n## ")[0]
)


def test_the_screenshot_is_in_the_repository() -> None:
    """The section shows docs/inbox.png and the request page, each a PNG image."""
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", SECTION)
    assert images == ["docs/inbox.png", "docs/inbox-request.png"]
    for image in images:
        assert (ROOT / image).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_three_lines_start_an_inbox(tmp_path: Path) -> None:
    """`aegis serve`, `aegis token create` and the address: the sign-in page, then Pending."""
    shell = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.S)[0]
    lines = [line.split("#")[0].strip() for line in shell.splitlines() if line.strip()]
    assert len(lines) == 3
    serve, create, browse = (shlex.split(line) for line in lines)
    assert serve[:2] == ["aegis", "serve"]
    assert create[:3] == ["aegis", "token", "create"]
    db = tmp_path / "aegis_audit.db"
    token = aegis(*[str(db) if arg == "aegis_audit.db" else arg for arg in create[1:]]).stdout
    with Server(db, *serve[4:]) as server:
        url = browse[-1].replace("http://127.0.0.1:8700", server.url)
        with httpx.Client(follow_redirects=True) as browser:
            page = browser.get(url)
            assert page.url.path == "/signin"
            nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert nonce
            signed_in = browser.post(
                f"{server.url}/signin", data={"token": token.strip(), "csrf": nonce.group(1)}
            )
    assert signed_in.url.path == "/"
    assert "Nothing is waiting for a decision." in signed_in.text


def test_the_receiver_check_accepts_only_fresh_signed_bodies() -> None:
    """The README's verify() accepts a delivery signed by Aegis and refuses forged or old ones."""
    code = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)[0]
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    verify = scope["verify"]
    body = b'{"type":"approval.requested"}'
    header = sign_payload(b"s3cret", body, "evt_1")
    assert verify(body, header, "evt_1", b"s3cret")
    assert not verify(body + b" ", header, "evt_1", b"s3cret")
    assert not verify(body, header, "evt_2", b"s3cret")
    assert not verify(body, header, "evt_1", b"other")
    old = sign_payload(b"s3cret", body, "evt_1", timestamp=int(time.time()) - 400)
    assert not verify(body, old, "evt_1", b"s3cret")
    assert not verify(body, "garbage", "evt_1", b"s3cret")
    assert not verify(body, header, "évt", b"s3cret")
